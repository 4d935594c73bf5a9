"""Helpers shared by quantmill's tests and its benchmarks (``bench/``), as ``prefect.testing`` is Prefect's.

Shipped with the package so that ``bench/`` never imports ``tests/``:

- :mod:`quantmill.testing.recipes`: a fast demo recipe for flow runs;
- :mod:`quantmill.testing.fuzzing`: recipe mutations for the fuzzer;
- :mod:`quantmill.testing.prefect_server`: a real ``prefect server start`` on a free port
  (a subprocess: nothing here imports Prefect).

Test-only helpers (the local Hub server, call counters) live in ``tests/support/``.
"""
