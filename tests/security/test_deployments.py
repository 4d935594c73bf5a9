"""Scheduled deployments run recipes under the untrusted policy (their job environment sets it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantmill.testing.recipes import fast_recipe

pytestmark = pytest.mark.fast

PREFECT_YAML = Path(__file__).resolve().parents[2] / "infra" / "prefect.yaml"


def test_prefect_yaml_runs_every_scheduled_deployment_untrusted():
    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    scheduled = [d for d in deployments if d.get("schedules")]
    assert {d["name"] for d in scheduled} >= {"nightly-zoo", "nightly-zoo-gpu"}
    for deployment in scheduled:
        env = deployment["work_pool"].get("job_variables", {}).get("env", {})
        assert env.get("QUANTMILL_POLICY") == "untrusted", deployment["name"]


def test_quantmill_deploy_registers_every_deployment_untrusted(tmp_path, monkeypatch):
    from prefect.flows import Flow

    from quantmill.flows import deploy as deploy_module

    registered: dict[str, dict] = {}
    monkeypatch.setattr(deploy_module, "ensure_process_pool", lambda name: None)
    monkeypatch.setattr(Flow, "from_source", staticmethod(lambda source, entrypoint: Flow(fn=lambda: None)))
    monkeypatch.setattr(Flow, "deploy", lambda self, name, **kwargs: registered.setdefault(name, kwargs))
    (tmp_path / "nightly.yaml").write_text(fast_recipe("    - {method: rtn, bits: 8}\n") + 'schedule: "0 3 * * *"\n')

    deploy_module.deploy(tmp_path, work_pool="pool", zoo_cron="0 2 * * *")

    assert set(registered) == {"nightly-zoo", "recipe-flowtest"}
    for name, kwargs in registered.items():
        assert kwargs["job_variables"]["env"]["QUANTMILL_POLICY"] == "untrusted", name
