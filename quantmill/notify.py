"""Tell people how a run went: a Slack-compatible webhook message on failure, regression and publish.

Where messages go (``notify_urls``) and which events are announced (``notify_on``)
are operator settings (:mod:`quantmill.trust.operator`); a recipe cannot set them.
One message per finished run carries every event that applies:

- ``failure``: a variant did not pass or a passing variant failed to publish
  (the run's outcome, :func:`quantmill.outcome.run_outcome`), or the run errored;
- ``regression``: the run got worse than the recipe's previous completed run;
- ``publish``: variants were published (with their repository URLs).

The payload is an incoming-webhook message (``text``, Slack markdown, which Slack,
Mattermost, Rocket.Chat and Discord's ``/slack`` endpoints accept) plus the same facts
as data under ``quantmill`` for other receivers: the outcome, the headline numbers and a
link to the report (its ``file://`` URL, or under ``report_url_base`` when the operator
serves the run store). Known secrets are masked in it. Each webhook gets at most
``notify_timeout`` seconds in all; a notification that fails is logged, never raised: it never fails the run.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from quantmill.outcome import Headline, Outcome, RunOutcome, describe_regression, headline, run_outcome
from quantmill.record import PublishStatus, RunRecord
from quantmill.redact import redact
from quantmill.trust.operator import NotifyEvent, get_operator

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter

#: variant lines in one message; the data part always has them all
MAX_VARIANT_LINES = 25


def report_url(record: RunRecord, run_path: Path) -> str:
    """The link to the run's report.html: under the operator's ``report_url_base``, else a ``file://`` URL."""
    base = get_operator().report_url_base
    if base:
        return f"{base.rstrip('/')}/{quote(record.recipe)}/{quote(record.run_id)}/report.html"
    return (Path(run_path) / "report.html").resolve().as_uri()


def published(record: RunRecord) -> dict[str, str]:
    """Variant → repository URL, for the variants this run committed (an unchanged republish is not news)."""
    return {
        variant: entry.publish.url or entry.publish.repo_id or ""
        for variant, entry in record.variants.items()
        if entry.publish and entry.publish.status == PublishStatus.PUBLISHED
    }


def run_events(record: RunRecord, outcome: RunOutcome) -> list[NotifyEvent]:
    """The events a finished run announces, in ``failure``, ``regression``, ``publish`` order."""
    events: list[NotifyEvent] = []
    if outcome.failed:
        events.append("failure")
    if record.regressions:
        events.append("regression")
    if published(record):
        events.append("publish")
    return events


def run_message(record: RunRecord, run_path: Path, events: list[NotifyEvent]) -> dict[str, Any]:
    """The webhook payload for a finished run."""
    outcome = run_outcome(record)
    numbers = headline(record)
    link = report_url(record, run_path)
    repos = published(record)
    lines = [f"*quantmill {record.recipe}* run {record.run_id}: {outcome.kind.value} — {outcome.summary}"]
    lines.append(_counts_line(numbers))
    lines += [f"• {v.describe(numbers.quality_metric)}" for v in numbers.variants[:MAX_VARIANT_LINES]]
    if len(numbers.variants) > MAX_VARIANT_LINES:
        lines.append(f"• … and {len(numbers.variants) - MAX_VARIANT_LINES} more in the report")
    if record.regressions and outcome.kind != Outcome.REGRESSED:  # else the first line lists them
        lines.append("regressions: " + ", ".join(describe_regression(r) for r in record.regressions))
    lines += [f"published {variant}: {url}" for variant, url in repos.items()]
    lines.append(f"report: {link}")
    data = {
        "events": events,
        "recipe": record.recipe,
        "run_id": record.run_id,
        "outcome": outcome.kind.value,
        "exit_code": outcome.exit_code,
        "summary": outcome.summary,
        "counts": numbers.counts,
        "quality_metric": numbers.quality_metric,
        "baseline_quality": numbers.baseline_quality,
        "variants": [
            {
                "variant": v.variant,
                "status": v.status.value,
                "quality": v.quality,
                "recovery": v.recovery,
                "ppl": v.ppl,
                "size_mb": v.size_mb,
                "reason": v.reason,
            }
            for v in numbers.variants
        ],
        "regressions": [r.model_dump(mode="json") for r in record.regressions],
        "published": repos,
        "report_url": link,
    }
    return {"text": slack_escaped("\n".join(lines)), "quantmill": data}


def slack_escaped(text: str) -> str:
    """``&``, ``<`` and ``>`` escaped as Slack asks: variant ids and error texts come from recipes and libraries,
    and ``<!channel>`` or ``<https://x|click>`` in them would ping everyone or disguise a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _counts_line(numbers: Headline) -> str:
    if numbers.quality_metric and numbers.baseline_quality is not None:
        return f"{numbers.counts} · baseline {numbers.quality_metric} {numbers.baseline_quality:.4g}"
    return numbers.counts


def notify_run(record: RunRecord, run_path: Path, logger: Logger = log) -> list[NotifyEvent]:
    """Announce a finished run to the operator's webhooks; returns the events its message carried (none: not sent)."""
    try:
        operator = get_operator()
        events = [e for e in run_events(record, run_outcome(record)) if e in operator.notify_on]
        if not events or not operator.notify_urls:
            return []
        send(run_message(record, run_path, events), logger)
    except Exception as exc:  # noqa: BLE001 -- a notification never fails the run
        logger.warning("could not notify about run %s: %s", record.run_id, redact(str(exc)))
        return []
    return events


def notify_error(recipe: str, message: str, logger: Logger = log) -> bool:
    """Announce a run that errored before it had an outcome (a ``failure``); returns whether anything was sent."""
    operator = get_operator()
    if "failure" not in operator.notify_on or not operator.notify_urls:
        return False
    text = slack_escaped(f"*quantmill {recipe}* run errored: {message}")
    send(
        {
            "text": text,
            "quantmill": {
                "events": ["failure"],
                "recipe": recipe,
                "outcome": "errored",
                "exit_code": 1,
                "summary": message,
            },
        },
        logger,
    )
    return True


def send(payload: dict[str, Any], logger: Logger = log) -> int:
    """POST ``payload`` (secrets masked) to every webhook; returns how many accepted it. Never raises."""
    operator = get_operator()
    body = redact(json.dumps(_finite(payload), ensure_ascii=False)).encode("utf-8")
    delivered = 0
    for secret_url in operator.notify_urls:
        url = secret_url.get_secret_value()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json; charset=utf-8"}, method="POST"
        )
        try:
            _post_within(request, operator.notify_timeout)
            delivered += 1
        except Exception as exc:  # noqa: BLE001 -- a notification never fails the run
            where = _where(url)  # a webhook URL holds its token: only scheme and host are shown
            logger.warning("notification to %s failed: %s", where, redact(str(exc).replace(url, where)))
    return delivered


def _post_within(request: urllib.request.Request, seconds: float) -> None:
    """POST ``request`` and read the answer, giving up after ``seconds`` in all.

    urllib's ``timeout`` bounds each socket operation, not the exchange: a receiver that
    answers one byte at a time could hold the run for as long as it likes. So the exchange
    runs in a daemon thread and the run waits for it at most ``seconds``; an abandoned
    exchange ends with its socket's own timeout or with the process.
    """
    failure: list[BaseException] = []

    def exchange() -> None:
        try:
            with urllib.request.urlopen(request, timeout=seconds) as response:
                response.read()
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            failure.append(exc)

    worker = threading.Thread(target=exchange, name="quantmill-notify", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"timed out: no complete answer within {seconds:g} s")
    if failure:
        raise failure[0]


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2] or '?'}"  # no user:password either


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON receivers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
