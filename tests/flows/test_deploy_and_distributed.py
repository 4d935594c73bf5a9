"""Deployments against a real `prefect server start`, and variants on a 2-worker Dask cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO
from tests.flows.conftest import fast_recipe

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def real_server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("prefect server did not start")
    yield {**env, "PREFECT_API_URL": url}
    server.terminate()
    server.wait(timeout=30)


def test_deploy_registers_the_nightly_zoo_and_recipe_schedules(real_server):
    result = subprocess.run([sys.executable, "-m", "quantmill.cli", "deploy", str(REPO / "recipes")], env=real_server,
                            capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    code = (
        "from prefect import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    for d in c.read_deployments():\n"
        "        print(d.name, d.work_pool_name, [s.schedule.cron for s in d.schedules], sorted(d.parameters))\n"
    )
    listing = subprocess.run([sys.executable, "-c", code], env=real_server, capture_output=True, text=True,
                             timeout=120, check=True).stdout  # fmt: skip
    lines = {line.split()[0]: line for line in listing.splitlines()}
    assert "['0 2 * * *']" in lines["nightly-zoo"] and "quantmill-local" in lines["nightly-zoo"]
    assert "['0 3 * * *']" in lines["recipe-demo"] and "recipe_path" in lines["recipe-demo"]
    assert "['0 2 * * *']" in lines["recipe-llama-3-1-8b-instruct-nightly"]


def test_variants_run_on_a_two_worker_dask_cluster(tmp_path, write_recipe, prefect_server):
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    from quantmill.flows.recipe import run_recipe

    os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the worker processes talk to the same server
    recipe = write_recipe(fast_recipe("    - {method: rtn, bits: [4, 8], group_size: 128}\n"))
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    results = run_recipe(str(recipe), runs_dir=str(tmp_path / "runs"), task_runner=runner)
    assert {v: e["status"] for v, e in results["variants"].items()} == {"rtn-w4-g128": "passed", "rtn-w8-g128": "passed"}
    assert results["baseline"]["evaluation"]["metrics"]["tiny_world_mc/acc"]["value"] > 0.5
