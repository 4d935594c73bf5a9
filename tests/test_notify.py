"""Notifications: a real local HTTP receiver gets the payload; a dead or failing webhook never fails anything."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from pathlib import Path

import pytest

from quantmill.errors import RecipeError
from quantmill.notify import notify_error, notify_run
from quantmill.record import RunRecord
from quantmill.runstore import Run
from quantmill.trust.operator import get_operator
from tests.support.webhook import DRIP_BYTES, webhook_receiver

pytestmark = pytest.mark.fast

V1_FIXTURE = Path(__file__).parent / "data" / "results-v1.json"


@pytest.fixture
def operator(monkeypatch):
    """Set operator settings through their environment variables for one test."""

    def configure(**settings):
        for key, value in settings.items():
            monkeypatch.setenv(f"QUANTMILL_{key.upper()}", value if isinstance(value, str) else json.dumps(value))
        get_operator.cache_clear()

    yield configure
    monkeypatch.undo()
    get_operator.cache_clear()


@pytest.fixture
def receiver():
    with webhook_receiver() as running:
        yield running


def stored_record(tmp_path: Path) -> tuple[RunRecord, Path]:
    """The version-1 fixture as a run folder: one variant published, one failed to publish, one failed, a regression."""
    run = tmp_path / "runs" / "demo" / "20261127T083000Z-1a2b3c"
    run.mkdir(parents=True)
    shutil.copy(V1_FIXTURE, run / "results.json")
    return Run(run).read_record(), run


def passing_only(record: RunRecord) -> RunRecord:
    """Only the variant that passed and published, no regressions."""
    copy = record.model_copy(deep=True)
    copy.variants = {"rtn-w4-g128": copy.variants["rtn-w4-g128"]}
    copy.regressions = []
    return copy


def test_a_failed_run_is_announced_with_its_numbers_and_report_link(tmp_path, operator, receiver):
    operator(notify_urls=[receiver.url + "/hooks/T000/B000/secret"])
    record, run = stored_record(tmp_path)
    assert notify_run(record, run) == ["failure", "regression", "publish"]
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert got["path"] == "/hooks/T000/B000/secret" and got["content_type"].startswith("application/json")
    text, data = got["json"]["text"], got["json"]["quantmill"]
    report = (run / "report.html").resolve().as_uri()
    assert text.splitlines()[0] == (
        "*quantmill demo* run 20261127T083000Z-1a2b3c: publish failed — 1 passing variant(s) failed to publish: "
        "rtn-w8-g128"
    )
    assert text.splitlines()[1] == "1 pending, 2 passed, 1 failed · baseline tiny_world_mc/acc 0.925"
    assert "• rtn-w4-g128 passed: tiny_world_mc/acc 0.9 (recovery 0.973), 1.2 MB" in text
    assert "regressions: rtn-w4-g128 tiny_world_mc/acc 0.95 → 0.9" in text
    assert "published rtn-w4-g128: file:///zoo/org/tiny-llama-rtn-w4-g128" in text
    assert text.endswith(f"report: {report}")
    assert data["outcome"] == "publish failed" and data["exit_code"] == 4
    assert data["events"] == ["failure", "regression", "publish"]
    assert data["report_url"] == report
    assert data["published"] == {"rtn-w4-g128": "file:///zoo/org/tiny-llama-rtn-w4-g128"}
    numbers = {v["variant"]: v for v in data["variants"]}
    assert numbers["rtn-w4-g128"]["recovery"] == pytest.approx(0.9 / 0.925)
    assert numbers["bnb-int8"] == {
        "variant": "bnb-int8",
        "status": "failed",
        "quality": None,
        "recovery": None,
        "ppl": None,
        "size_mb": None,
        "reason": "QuantizationError: bnb-int8: worker killed by signal 9 (out of memory?)",
    }
    assert "• rtn-w8-g128 passed: tiny_world_mc/acc 0.92 (recovery 0.995) — publish failed: PublishError" in text


def test_the_report_link_follows_the_operators_report_url_base(tmp_path, operator, receiver):
    operator(notify_urls=[receiver.url], report_url_base="https://ci.example/runs/")
    record, run = stored_record(tmp_path)
    notify_run(record, run)
    link = "https://ci.example/runs/demo/20261127T083000Z-1a2b3c/report.html"
    assert receiver.received[0]["json"]["quantmill"]["report_url"] == link
    assert receiver.received[0]["json"]["text"].endswith(f"report: {link}")


def test_only_the_chosen_events_are_announced(tmp_path, operator, receiver):
    record, run = stored_record(tmp_path)
    clean = passing_only(record)
    clean.variants["rtn-w4-g128"].publish = None
    operator(notify_urls=[receiver.url])
    assert notify_run(clean, run) == []  # passed, nothing published, no regression: nothing to say
    operator(notify_on=["regression"])
    assert notify_run(passing_only(record), run) == []  # a publish, but only regressions are wanted
    assert receiver.received == []
    published = passing_only(record)
    operator(notify_on=["publish"])
    assert notify_run(published, run) == ["publish"]
    assert receiver.received[0]["json"]["quantmill"]["outcome"] == "passed"


def test_a_dead_failing_or_slow_webhook_never_raises_and_is_logged_without_its_token(
    tmp_path, operator, receiver, caplog
):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/hooks/dead-token"
    operator(notify_urls=[dead, receiver.url + "/hooks/error-token"], notify_timeout=0.5)
    receiver.status = 500
    record, run = stored_record(tmp_path)
    with caplog.at_level(logging.WARNING, logger="quantmill.notify"):
        assert notify_run(record, run) == ["failure", "regression", "publish"]
    assert len(receiver.received) == 1  # the dead one did not stop the next
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("notification to http://127.0.0.1:" in w for w in warnings)
    assert "HTTP Error 500" in warnings[1]
    assert not any("token" in w for w in warnings)

    receiver.status, receiver.delay = 200, 2.0
    operator(notify_urls=[receiver.url])
    started = time.monotonic()
    notify_run(record, run)
    assert time.monotonic() - started < 1.5  # given up after notify_timeout, not after the receiver's 2 s
    assert "timed out" in caplog.records[-1].getMessage()


def test_a_webhook_that_answers_one_byte_at_a_time_gets_notify_timeout_in_all(tmp_path, operator, receiver, caplog):
    # each byte arrives well within the socket timeout, so only a bound on the whole exchange stops it
    receiver.drip = 0.1
    operator(notify_urls=[receiver.url], notify_timeout=0.8)
    record, run = stored_record(tmp_path)
    with caplog.at_level(logging.WARNING, logger="quantmill.notify"):
        assert notify_run(record, run) == ["failure", "regression", "publish"]
    sent_when_given_up = receiver.dripped
    assert 0 < sent_when_given_up < DRIP_BYTES / 2  # the receiver was still answering when the run moved on
    assert caplog.records[-1].getMessage().endswith("timed out: no complete answer within 0.8 s")


def test_secrets_are_masked_in_the_payload(tmp_path, operator, receiver, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_notarealtokenvalue123")
    operator(notify_urls=[receiver.url])
    record, run = stored_record(tmp_path)
    record.variants["bnb-int8"].error = "QuantizationError: 401 for token hf_notarealtokenvalue123"
    notify_run(record, run)
    notify_error("demo.yaml", "Failed: could not log in with hf_notarealtokenvalue123")
    body = json.dumps(receiver.received)
    assert "hf_notarealtokenvalue123" not in body
    assert "• bnb-int8 failed — QuantizationError: 401 for token ***" in receiver.received[0]["json"]["text"]
    assert receiver.received[1]["json"]["quantmill"]["outcome"] == "errored"
    assert (
        receiver.received[1]["json"]["text"] == "*quantmill demo.yaml* run errored: Failed: could not log in with ***"
    )


def test_a_recipe_cannot_set_where_notifications_go(write_recipe):
    from quantmill.recipe import load_recipe
    from quantmill.testing.recipes import fast_recipe

    for key in ("notify_urls", "notify"):
        recipe = write_recipe(fast_recipe("    - {method: rtn, bits: 4}\n") + f"{key}: [http://attacker.example]\n")
        with pytest.raises(RecipeError, match=key):
            load_recipe(recipe)


def test_a_run_that_errored_is_announced_once(operator, receiver):
    """The flow's failure hook announces an exception; a run that ended Failed by its outcome was announced already."""
    from types import SimpleNamespace

    from prefect.states import Failed

    from quantmill.flows.recipe import _notify_errored

    operator(notify_urls=[receiver.url])
    flow_run = SimpleNamespace(parameters={"recipe_path": "/recipes/demo.yaml"})
    _notify_errored(None, flow_run, Failed(data={"run_id": "x"}, message="1 variant(s) did not pass: a (failed)"))
    assert receiver.received == []
    _notify_errored(None, flow_run, Failed(data=ValueError("boom"), message="Flow run encountered an exception: boom"))
    [message] = [r["json"] for r in receiver.received]
    assert message["text"] == "*quantmill demo.yaml* run errored: Failed: Flow run encountered an exception: boom"
    assert message["quantmill"]["events"] == ["failure"] and message["quantmill"]["outcome"] == "errored"


def test_text_from_recipes_cannot_ping_a_channel_or_disguise_a_link(tmp_path, operator, receiver):
    operator(notify_urls=[receiver.url])
    record, run = stored_record(tmp_path)
    record.variants["bnb-int8"].error = "QuantizationError: <!channel> see <https://evil.example|the logs> & retry"
    notify_run(record, run)
    text = receiver.received[0]["json"]["text"]
    assert "&lt;!channel&gt; see &lt;https://evil.example|the logs&gt; &amp; retry" in text
    assert "<!channel>" not in text and "<https://" not in text
