"""A fast recipe for flow tests, and a counter of the library calls that tasks make."""

from __future__ import annotations

import pytest

from tests.conftest import DEMO_DATA, DEMO_MODEL, DEMO_TASKS


def fast_recipe(
    rows: str,
    *,
    gates: str = "  - {metric: tiny_world_mc/acc, min_recovery: 0.9}\n",
    publish: str = "publish: {target: none}\n",
) -> str:
    """A recipe that evaluates on 40 questions: enough to gate, quick to run."""
    return f"""\
name: flowtest
model: {{id: {DEMO_MODEL}, dtype: float32}}
device: cpu
calibration: {{dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}, num_samples: 32, seq_len: 64}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  limit: 40
  metrics: [size]
variants:
  methods:
{rows}gates:
{gates}{publish}"""


class Calls:
    """Counts (and timestamps) calls of the library functions that tasks wrap."""

    def __init__(self, monkeypatch):
        import time

        from quantmill import stages

        self.log: list[tuple[str, str, float, float]] = []
        for name in ("quantize_one", "evaluate_variant", "evaluate_baseline"):
            original = getattr(stages, name)

            def counted(*args, _original=original, _name=name, **kwargs):
                start = time.monotonic()
                try:
                    return _original(*args, **kwargs)
                finally:
                    variant = next((a.id for a in args if hasattr(a, "spec")), "baseline")
                    self.log.append((_name, variant, start, time.monotonic()))

            monkeypatch.setattr(stages, name, counted)

    def count(self, name: str) -> int:
        return sum(1 for entry in self.log if entry[0] == name)

    def variants(self, name: str) -> list[str]:
        return sorted(entry[1] for entry in self.log if entry[0] == name)


@pytest.fixture
def calls(monkeypatch):
    return Calls(monkeypatch)
