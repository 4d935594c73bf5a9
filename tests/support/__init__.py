"""Helpers shared by the tests: the local Hub server, call counters, the sequential pipeline's outcomes.

Helpers the benchmarks need too (fast recipes, the recipe fuzzer, a Prefect
server) are in ``quantmill.testing``, so ``bench/`` never imports ``tests/``.
"""
