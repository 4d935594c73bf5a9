"""``quantmill server``: the long-lived local Prefect server that makes CLI reruns cheap."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest

from quantmill import server
from quantmill.cli import main
from quantmill.runstore import Run
from quantmill.settings import get_settings
from quantmill.testing.prefect_server import free_port
from quantmill.testing.recipes import fast_recipe


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "cache"
    get_settings.cache_clear()


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


@pytest.mark.fast
def test_a_stale_record_is_reported_and_cleared(cache_dir, capsys):
    record = server.server_dir() / "server.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"pid": _dead_pid(), "port": free_port(), "started": 0}))

    assert server.server_status().state == "stale"
    assert server.running_api_url() is None  # runs fall back to the ephemeral server
    assert main(["server", "status"]) == 1
    assert "stale record" in capsys.readouterr().out
    assert main(["server", "stop"]) == 0
    assert "process was gone" in capsys.readouterr().out
    assert not record.exists() and server.server_status().state == "stopped"


@pytest.mark.fast
def test_a_pid_recycled_by_another_program_is_stale_and_never_signalled(cache_dir):
    record = server.server_dir() / "server.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"pid": os.getpid(), "port": free_port(), "started": 0}))  # pytest, not prefect
    assert server.server_status().state == "stale"
    server.stop_server()  # would kill this test run if it signalled the pid
    assert not record.exists()


@pytest.mark.fast
def test_an_unreadable_record_is_stale(cache_dir):
    record = server.server_dir() / "server.json"
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    assert server.server_status().state == "stale"


@pytest.mark.fast
def test_a_port_in_use_is_one_clear_error(cache_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["server", "start", "--port", str(port), "--no-ui"]) == 1
    err = capsys.readouterr().err
    assert f"port {port} is in use" in err and "Traceback" not in err
    assert server.server_status().state == "stopped"  # nothing was started or recorded


@pytest.mark.slow
def test_server_lifecycle_and_a_cached_cli_rerun_on_it(cache_dir, tmp_path):
    """Start the server; two CLI runs use it on their own; the unchanged rerun through the flow
    (``--no-replay``: a replayed one creates no flow run) imports no torch, transformers or
    llm-compressor; stop."""
    port = free_port()
    info = server.start_server(port, ui=False)
    try:
        assert server.server_status().state == "running"
        assert server.running_api_url() == f"http://127.0.0.1:{port}/api"
        assert server.start_server(port, ui=False).pid == info.pid  # a running server is reused

        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(fast_recipe("    - {method: rtn, bits: 4, group_size: 128}\n"))
        env = {**os.environ, "QUANTMILL_RUNS_DIR": str(tmp_path / "runs")}
        command = [sys.executable, "-X", "importtime", "-m", "quantmill.cli", "run", str(recipe), "--no-publish"]
        runs = [
            subprocess.run(command + extra, capture_output=True, text=True, env=env, timeout=600)
            for extra in ([], ["--no-replay"])
        ]
        for done in runs:
            assert done.returncode == 0, done.stderr[-3000:]
        first, rerun = (_imported(done.stderr) for done in runs)
        assert "torch" in first  # the first run computed
        heavy = {"torch", "transformers", "llmcompressor"} & rerun
        assert not heavy, f"the cached rerun imported {heavy}"
        latest = sorted((tmp_path / "runs" / "flowtest").glob("2*"))[-1]
        assert Run(latest).read_record().variants["rtn-w4-g128"].fully_cached

        count = httpx.post(f"{server.running_api_url()}/flow_runs/count", json={}, timeout=10).json()
        assert count == 2  # both runs reported to the long-lived server, not to ephemeral ones
    finally:
        server.stop_server()
    assert server.server_status().state == "stopped"
    with pytest.raises(OSError):
        os.kill(info.pid, 0)


def _imported(importtime_stderr: str) -> set[str]:
    """The top-level packages ``python -X importtime`` reports imported."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
