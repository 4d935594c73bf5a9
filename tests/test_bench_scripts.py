"""The benchmark scripts run (tiny sizes here; the real runs are `make bench` and bench/gpu.py on a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_script_smoke_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu.py"),
            "--tiny",
            "--device",
            "cpu",
            "--methods",
            "gptq,gguf",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures) >= {"baseline", "gptq-w4-g128", "gguf-q4_k_m", "parameters", "total_seconds"}
    for variant in ("gptq-w4-g128", "gguf-q4_k_m"):
        assert figures[variant]["quantize_seconds"] > 0 and figures[variant]["ppl"] > 1
        assert figures[variant]["size_mb"] < figures["baseline"]["size_mb"]
        assert figures[f"{variant}/evaluate"]["seconds"] > 0  # every step's absolute time
    # on the CPU the GPU-only sections say why they did not run
    assert figures["gpus"] == 0
    assert figures["slot_mapping"] == {"skipped": "needs 2 GPUs; this run is on cpu"}
    assert figures["gpus_per_variant_2"] == {"skipped": "needs 2 GPUs; this run is on cpu"}
    assert "CUDA" in figures["vllm"]["skipped"]
    assert "slot_mapping: skipped: needs 2 GPUs" in result.stdout


@pytest.mark.slow
def test_seeded_kill_points_all_survive(tmp_path):
    """A few of `make reliability`'s kill -9 points: each rerun completes and redoes nothing finished.

    The runs report to one Prefect server (``--server``), as after ``quantmill server start``, rather than each
    starting Prefect's ephemeral server: ~13 s less a run (`make reliability` kills runs on the ephemeral one).
    """
    result = subprocess.run(
        [
            *(sys.executable, str(REPO / "bench" / "reliability.py")),
            *("--cases", "0", "--kill-points", "2", "--seed", "11", "--server"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    crash = lines[-1]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert crash["kill_points"] == 2 and crash["survived"] == 2 and crash["leaks"] == 0, crash
    points = [line for line in lines if "point" in line]
    assert len(points) == 2 and len({p["killed_at_seconds"] for p in points}) == 2
