"""Deployments against a real `prefect server start`, and variants in two Dask worker processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from quantmill.testing.prefect_server import start_prefect_server
from quantmill.testing.recipes import fast_recipe
from tests.conftest import REPO
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def real_server(tmp_path):
    try:
        server, env = start_prefect_server(tmp_path / "prefect")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield env
    server.terminate()
    server.wait(timeout=30)


def test_deploy_registers_the_nightly_zoo_and_recipe_schedules(real_server):
    result = run_cli("deploy", str(REPO / "recipes"), env=real_server, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    code = (
        "from prefect import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    for d in c.read_deployments():\n"
        "        policy = (d.job_variables or {}).get('env', {}).get('QUANTMILL_POLICY')\n"
        "        print(d.name, d.work_pool_name, [s.schedule.cron for s in d.schedules], sorted(d.parameters), policy)\n"
    )
    listing = subprocess.run(
        [sys.executable, "-c", code], env=real_server, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    lines = {line.split()[0]: line for line in listing.splitlines()}
    assert "['0 2 * * *']" in lines["nightly-zoo"] and "quantmill-local" in lines["nightly-zoo"]
    assert "['0 3 * * *']" in lines["recipe-demo"] and "recipe_path" in lines["recipe-demo"]
    assert "['0 2 * * *']" in lines["recipe-llama-3-1-8b-instruct-nightly"]
    assert all(line.endswith(" untrusted") for line in lines.values()), listing  # recipes are untrusted input there


PROBE_METHOD = """
import dataclasses, os, time
from pathlib import Path

from quantmill.methods.rtn import SPEC as RTN


def quantize(params, ctx):
    # Wait inside the heavy step until a second process has entered one too.
    trace = Path(os.environ["QUANTMILL_PROBE_TRACE"])
    with trace.open("a") as f:
        f.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 120
    while len(set(trace.read_text().split())) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("no second process quantized at the same time")
        time.sleep(0.1)
    return RTN.quantize(params, ctx)


SPEC = dataclasses.replace(RTN, name="probe", quantize=quantize, variant_id=lambda p: f"probe-w{p.bits}")
"""


def test_processes_run_heavy_steps_in_parallel_and_plugins_load_from_entry_points(tmp_path, write_recipe):
    """`quantmill run --processes 2` with Prefect's ephemeral server: two worker processes quantize at once.

    The probe method is a plugin found through the ``quantmill.methods`` entry point;
    each call waits inside its heavy step until another process has entered one, so
    the run fails unless two heavy steps really overlap in two processes.
    """
    plugin = tmp_path / "plugin"
    (plugin / "quantmill_probe-0.1.dist-info").mkdir(parents=True)
    (plugin / "quantmill_probe.py").write_text(PROBE_METHOD)
    (plugin / "quantmill_probe-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: quantmill-probe\nVersion: 0.1\n"
    )
    (plugin / "quantmill_probe-0.1.dist-info" / "entry_points.txt").write_text(
        "[quantmill.methods]\nprobe = quantmill_probe:SPEC\n"
    )
    recipe = write_recipe(fast_recipe("    - {method: probe, bits: [4, 8], group_size: 128}\n"))
    trace = tmp_path / "trace"
    env = {
        **os.environ,
        "PYTHONPATH": f"{plugin}{os.pathsep}{REPO}",
        "QUANTMILL_PROBE_TRACE": str(trace),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "QUANTMILL_RUNS_DIR": str(tmp_path / "runs"),
    }
    env.pop("PREFECT_API_URL", None)
    result = run_cli("run", str(recipe), "--processes", "2", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "probe-w4" in result.stdout and "probe-w8" in result.stdout
    pids = trace.read_text().split()
    assert len(pids) == 2 and len(set(pids)) == 2 and str(os.getpid()) not in pids
