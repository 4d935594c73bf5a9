"""Shared test fixtures: the repo's paths, recipe writing, a Prefect test server (helpers are in tests/support/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantmill.testing.recipes import DEMO_DATA, DEMO_MODEL, DEMO_TASKS

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "models" / "stories260K"


@pytest.fixture
def stories_hf() -> Path:
    """The shared pretrained stories260K model (HF form); skips when absent."""
    path = STORIES / "hf"
    if not (path / "config.json").is_file():
        pytest.skip(f"shared model not present at {path}")
    return path


BASE_RECIPE = f"""\
name: base
model:
  id: {DEMO_MODEL}
calibration:
  dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  perplexity:
    dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}
variants:
  methods:
    - {{method: gptq, bits: [4, 8], group_size: 128}}
    - {{method: gguf, types: [q4_k_m]}}
gates:
  - {{metric: tiny_world_mc/acc, min_recovery: 0.97}}
"""


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
