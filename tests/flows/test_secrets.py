"""A full run with a sentinel token: it never appears in anything written, printed or logged."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from quantmill.redact import RedactingFilter, redact
from quantmill.testing.recipes import fast_recipe
from tests.support.hubserver import HubServer

SENTINEL = "hf_SENTINEL_9f8e7d6c5b4a_do_not_leak"
pytestmark = pytest.mark.slow


def scan(root: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and SENTINEL.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def test_redaction_masks_token_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    assert redact(f"Authorization: Bearer {SENTINEL} failed") == "Authorization: Bearer *** failed"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s", (SENTINEL,), None)
    RedactingFilter().filter(record)
    assert SENTINEL not in record.getMessage()


def test_full_run_never_writes_the_token(tmp_path, write_recipe, monkeypatch, capfd, caplog, prefect_server):
    import huggingface_hub.constants

    from quantmill.flows.recipe import run_recipe

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    caplog.set_level(logging.DEBUG)
    with HubServer(token=SENTINEL) as hub:
        publish = f"publish: {{target: hub, endpoint: '{hub.endpoint}', namespace: org, license: mit}}\n"
        recipe = write_recipe(
            fast_recipe(
                "    - {method: bnb, type: int8}\n    - {method: rtn, bits: 2, group_size: 128}\n",
                gates="  - {metric: tiny_world_mc/acc, min_recovery: 0.99}\n",
                publish=publish,
            )
        )
        hub.state.fail_next("POST", r"/commit/", 500)  # an error on the way, retried
        results = run_recipe(str(recipe), runs_dir=str(tmp_path / "runs"))
        assert results["variants"]["bnb-int8"]["publish"]["status"] == "published"
        assert results["variants"]["rtn-w2-g128"]["status"] == "failed"
        assert [c["summary"] for c in hub.state.commits()] and all(
            "rtn-w2" not in c["summary"] for c in hub.state.commits()
        )  # the failing variant never reached the hub
        stored = b"".join(b"".join(repo.files.values()) for repo in hub.state.repos.values())
    assert SENTINEL.encode() not in stored
    assert scan(tmp_path) == []
    assert scan(Path(os.environ["PREFECT_HOME"])) == []  # Prefect's database: logs, artifacts, states
    out, err = capfd.readouterr()
    assert SENTINEL not in out + err
    assert all(SENTINEL not in r.getMessage() for r in caplog.records)


def test_a_hub_that_stops_answering_fails_only_that_publish_and_a_republish_heals(
    tmp_path, write_recipe, monkeypatch, prefect_server
):
    """Timeouts: every commit of one variant hangs; the other publishes, the run completes, the report says so."""
    import json

    import huggingface_hub.constants

    from quantmill.flows.recipe import run_recipe
    from quantmill.publish import targets
    from quantmill.publish.publish_run import publish_run
    from quantmill.settings import get_settings
    from tests.support.hubserver import HANG

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("QUANTMILL_HUB_TIMEOUT", "1")
    get_settings.cache_clear()
    try:
        with HubServer(token=SENTINEL) as hub:
            hub.state.hang_seconds = 2.0
            publish = f"publish: {{target: hub, endpoint: '{hub.endpoint}', namespace: org, license: mit}}\n"
            recipe = write_recipe(
                fast_recipe(
                    "    - {method: bnb, type: int8}\n    - {method: rtn, bits: 8, group_size: 128}\n", publish=publish
                )
            )
            hub.state.fail_next("POST", r"rtn-w8-g128/commit/", *[HANG] * 30)
            results = run_recipe(str(recipe), runs_dir=str(tmp_path / "runs"))
            hung = results["variants"]["rtn-w8-g128"]
            assert hung["status"] == "passed" and hung["publish"]["status"] == "failed"
            assert "timed out" in hung["publish"]["error"].lower() or "timeout" in hung["publish"]["error"].lower()
            assert results["variants"]["bnb-int8"]["publish"]["status"] == "published"
            assert results["status"] == "completed"
            run_path = Path(results["run_path"])
            json.loads((run_path / "results.json").read_text())
            assert "publish failed" in (run_path / "report.md").read_text()
            assert [c["summary"] for c in hub.state.commits() if "rtn" in c["summary"]] == []  # nothing partial

            hub.state.failures.clear()  # the Hub answers again: publishing the run heals it
            healed = {r.variant: r.status for r in publish_run(run_path, force=[])}
            assert healed == {"bnb-int8": "unchanged", "rtn-w8-g128": "published"}
            assert len([c for c in hub.state.commits() if "rtn-w8" in c["summary"]]) == 1
    finally:
        get_settings.cache_clear()
        targets.bound_hub_requests(get_settings().hub_timeout)
