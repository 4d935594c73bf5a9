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
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--tiny", "--device", "cpu",
                             "--methods", "gptq,gguf", "--out", str(out)], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures) >= {"baseline", "gptq-w4-g128", "gguf-q4_k_m", "parameters", "total_seconds"}
    for variant in ("gptq-w4-g128", "gguf-q4_k_m"):
        assert figures[variant]["quantize_seconds"] > 0 and figures[variant]["ppl"] > 1
        assert figures[variant]["size_mb"] < figures["baseline"]["size_mb"]
