"""A recipe on the bundled demo model that runs in seconds: for flow tests and kill-point benchmarks."""

from __future__ import annotations

from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "demo"
DEMO_MODEL = DEMO / "tiny-llama"
DEMO_TASKS = DEMO / "lm_eval_tasks"
DEMO_DATA = DEMO_TASKS / "tiny_world" / "data"


def fast_recipe(
    rows: str,
    *,
    gates: str = "  - {metric: tiny_world_mc/acc, min_recovery: 0.9}\n",
    publish: str = "publish: {target: none}\n",
) -> str:
    """A recipe named ``flowtest`` with these variant rows, evaluated on 40 questions: enough to gate, quick to run."""
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
