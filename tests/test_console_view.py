"""What a person sees during and after a run: the live table, plain lines without a terminal, the results table."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from rich.console import Console

from quantmill import cli
from quantmill.console_view import (
    EVERY_TRANSITION,
    RunFollower,
    RunView,
    follow_new_run,
    results_table,
)
from quantmill.errors import GateFailedError, PublishError, RegressionError, RunStoreError
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.gates import RuleOutcome, Verdict
from quantmill.progress import StageEvent, emit
from quantmill.record import (
    BaselineRecord,
    CachedSteps,
    PublishOutcome,
    PublishStatus,
    RunRecord,
    VariantRecord,
    VariantStatus,
)
from quantmill.runstore import RunStore

pytestmark = pytest.mark.fast

T0 = 1_000.0  # when the view started


def evaluation(acc: float, ppl: float, size_mb: float, bits: float = 4.125) -> EvaluationResult:
    return EvaluationResult(
        {
            "t/acc": MetricValue(acc, 0.02),
            "ppl": MetricValue(ppl),
            "size_mb": MetricValue(size_mb),
            "bits_per_weight": MetricValue(bits),
        }
    )


def finished(status: str, acc: float, *, cached: bool = False, publish: PublishOutcome | None = None):
    unmet = (RuleOutcome("t/acc", "min_recovery", 0.97, "required", acc, 0.8, acc / 0.8, False),)
    return VariantRecord(
        method="gptq",
        status=VariantStatus(status),
        evaluation=evaluation(acc, 2.5, 1.2),
        verdict=Verdict("v", status, unmet if status == "failed" else ()),  # type: ignore[arg-type]
        cached=CachedSteps(quantize=cached, evaluate=cached, servable=cached),
        publish=publish,
    )


def record(
    baseline: bool = True, run_id: str = "20261201T120000.000000Z-abcdef", **variants: VariantRecord
) -> RunRecord:
    return RunRecord(
        recipe="demo",
        recipe_path="/recipes/demo.yaml",  # type: ignore[arg-type]
        recipe_sha256="abc",
        run_id=run_id,
        quantmill_version="1.0",
        baseline=BaselineRecord(evaluation=evaluation(0.8, 2.4, 3.0, 16)) if baseline else None,
        variants=variants,
    )


def rendered(table) -> str:
    out = io.StringIO()
    Console(file=out, width=160).print(table)
    return out.getvalue()


def row_of(text: str, name: str) -> list[str]:
    """The cells of the table row that starts with ``name``."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name} in:\n{text}")


def test_live_view_rows_follow_stage_events_and_numbers_land_from_the_record():
    view = RunView(started=T0)
    view.update(
        record(baseline=False, **{"gptq-w4-g128": VariantRecord(method="gptq"), "rtn-w2": VariantRecord(method="rtn")})
    )
    for name in ("baseline", "gptq-w4-g128", "rtn-w2"):
        view.apply(StageEvent(name, "queued", T0))
    text = rendered(view.table(now=T0 + 1))
    assert row_of(text, "baseline") == ["baseline", "queued", "", "", "", "", ""]
    assert row_of(text, "rtn-w2")[1] == "queued"

    view.apply(StageEvent("baseline", "evaluating", T0 + 1))
    view.apply(StageEvent("gptq-w4-g128", "quantizing", T0 + 2))
    view.apply(StageEvent("gptq-w4-g128", "evaluating", T0 + 4))  # elapsed counts from the first stage
    text = rendered(view.table(now=T0 + 5))
    assert row_of(text, "baseline")[:3] == ["baseline", "evaluating", "4.0s"]
    assert row_of(text, "gptq-w4-g128")[:3] == ["gptq-w4-g128", "evaluating", "3.0s"]
    assert row_of(text, "rtn-w2")[:3] == ["rtn-w2", "queued", ""]

    view.apply(StageEvent("baseline", "done", T0 + 6, {"status": "passed", "cached": False}))
    view.apply(StageEvent("gptq-w4-g128", "done", T0 + 9, {"status": "passed", "cached": False}))
    view.update(record(**{"gptq-w4-g128": finished("passed", 0.8), "rtn-w2": VariantRecord(method="rtn")}))
    text = rendered(view.table(now=T0 + 70))
    assert "t/acc (recovery)" in text  # the quality metric is named in its column's header
    assert row_of(text, "baseline") == ["baseline", "done", "5.0s", "0.8 ± 0.02", "2.4", "3", "reference"]
    # a finished row's time stops at its done event; its numbers are the record's
    assert row_of(text, "gptq-w4-g128") == [
        "gptq-w4-g128",
        "done",
        "7.0s",
        "0.8 ± 0.02 (1.000)",
        "2.5",
        "1.2",
        "passed",
    ]
    assert row_of(text, "rtn-w2")[1:3] == ["queued", ""]


def test_elapsed_time_of_a_long_step_reads_in_minutes():
    view = RunView(started=T0)
    view.apply(StageEvent("gptq-w4-g128", "quantizing", T0))
    assert row_of(rendered(view.table(now=T0 + 125)), "gptq-w4-g128")[2] == "2m05s"


def test_a_line_per_event_and_the_done_line_carries_the_numbers():
    view = RunView(started=T0)
    view.update(record(**{"gptq-w4-g128": finished("passed", 0.76, cached=True), "rtn-w2": finished("failed", 0.4)}))
    assert view.line(StageEvent("gptq-w4-g128", "evaluating", T0 + 12.34)) == "[   12.3s] gptq-w4-g128  evaluating"
    assert view.line(StageEvent("gptq-w4-g128", "done", T0 + 40.1, {"status": "passed", "cached": True})) == (
        "[   40.1s] gptq-w4-g128  done passed (cached)  t/acc 0.76 ± 0.02 (recovery 0.950)  ppl 2.5  1.2 MB"
    )
    assert view.line(StageEvent("rtn-w2", "done", T0 + 41, {"status": "failed"})).endswith(
        "rtn-w2        done failed  t/acc 0.4 ± 0.02 (recovery 0.500)  ppl 2.5  1.2 MB  — t/acc min_recovery 0.97"
    )
    assert view.line(StageEvent("baseline", "done", T0 + 3, {"status": "passed"})) == (
        "[    3.0s] baseline      done reference  t/acc 0.8 ± 0.02  ppl 2.4  3 MB"
    )


def test_a_done_line_of_a_row_not_in_the_record_says_its_status():
    view = RunView(started=T0)
    view.update(record(**{"gptq-w4-g128": finished("passed", 0.76)}))
    view.apply(StageEvent("gguf-q8_0", "queued", T0))
    done = StageEvent("gguf-q8_0", "done", T0 + 7, {"status": "larger than the winner"})
    assert view.line(done) == "[    7.0s] gguf-q8_0     done larger than the winner"


def test_results_table_columns_and_values():
    failed_publish = PublishOutcome(status=PublishStatus.FAILED, error="hub said 503")
    text = rendered(
        results_table(
            record(
                **{
                    "gptq-w4-g128": finished("passed", 0.8, cached=True),
                    "gptq-w8-g128": finished("passed", 0.8, publish=failed_publish),
                    "rtn-w2": finished("failed", 0.4),
                }
            )
        )
    )
    header = next(line for line in text.splitlines() if "variant" in line)
    assert [c.strip() for c in re.split(r"[│┃]", header)[1:-1]] == [
        "variant",
        "status",
        "t/acc (recovery)",
        "ppl",
        "size MB",
        "bits/w",
        "reason",
    ]
    assert row_of(text, "baseline") == ["baseline", "reference", "0.8 ± 0.02", "2.4", "3", "16", ""]
    assert row_of(text, "gptq-w4-g128") == [
        "gptq-w4-g128",
        "passed (cached)",
        "0.8 ± 0.02 (1.000)",
        "2.5",
        "1.2",
        "4.125",
        "",
    ]
    assert row_of(text, "gptq-w8-g128")[-1] == "publish failed: hub said 503"
    assert row_of(text, "rtn-w2")[1:3] == ["failed", "0.4 ± 0.02 (0.500)"]
    assert row_of(text, "rtn-w2")[-1] == "t/acc min_recovery 0.97"


def test_when_perplexity_is_the_quality_it_is_shown_once_as_a_multiple_of_the_baseline():
    def ppl_only(ppl: float) -> EvaluationResult:
        return EvaluationResult({"ppl": MetricValue(ppl), "size_mb": MetricValue(1.2)})

    run = record(**{"rtn-w2": VariantRecord(method="rtn", status=VariantStatus.PASSED, evaluation=ppl_only(60.3))})
    run = run.model_copy(update={"baseline": BaselineRecord(evaluation=ppl_only(57.8))})
    view = RunView(started=T0)
    view.update(run)
    assert view.line(StageEvent("rtn-w2", "done", T0 + 5, {"status": "passed"})) == (
        "[    5.0s] rtn-w2    done passed  ppl 60.3 (x baseline 1.043)  1.2 MB"
    )
    text = rendered(results_table(run))
    header = next(line for line in text.splitlines() if "variant" in line)
    assert [c.strip() for c in re.split(r"[│┃]", header)[1:-1]][2:4] == ["ppl (x baseline)", "size MB"]
    assert row_of(text, "rtn-w2")[2:4] == ["60.3 (1.043)", "1.2"]
    live = rendered(view.table(now=T0 + 6))
    assert "ppl (x baseline)" in live and " ppl " not in live.replace("ppl (x baseline)", "")


def test_follower_prints_a_done_line_once_the_record_holds_the_numbers(tmp_path):
    run = RunStore(tmp_path).create_run("demo", "name: demo\n", {})
    out = io.StringIO()
    follower = RunFollower(Console(file=out, width=160), live=False)
    follower.attach(run)
    run.write_record(record(baseline=False, run_id=run.run_id, **{"gptq-w4-g128": VariantRecord(method="gptq")}))
    emit(run.path, "gptq-w4-g128", "queued")
    emit(run.path, "gptq-w4-g128", "quantizing")
    emit(run.path, "gptq-w4-g128", "done", status="passed", cached=False)
    follower.poll()
    lines = out.getvalue().splitlines()
    assert lines == [f"run {run.run_id}: baseline and 1 variant; step logs in {run.path / 'logs'}"]

    run.write_record(record(**{"gptq-w4-g128": finished("passed", 0.8)}))
    follower.poll()
    lines = out.getvalue().splitlines()[1:]
    assert len(lines) == 1 and re.fullmatch(r"\[ +\d+\.\ds\] gptq-w4-g128  done passed  t/acc 0\.8 .*", lines[0])


def test_a_published_variant_done_again_after_publishing_prints_one_line_and_keeps_its_time(tmp_path):
    run = RunStore(tmp_path).create_run("demo", "name: demo\n", {})
    out = io.StringIO()
    follower = RunFollower(Console(file=out, width=160), live=False)
    follower.attach(run)
    run.write_record(record(**{"gptq-w4-g128": finished("passed", 0.8)}))
    emit(run.path, "gptq-w4-g128", "quantizing")
    emit(run.path, "gptq-w4-g128", "done", status="passed", cached=False)
    follower.poll()
    ended = follower.view.rows["gptq-w4-g128"].ended
    emit(run.path, "gptq-w4-g128", "publishing")
    emit(run.path, "gptq-w4-g128", "done", status="passed", cached=False, publish="published")
    follower.poll(final=True)
    assert len([line for line in out.getvalue().splitlines() if "gptq-w4-g128  done" in line]) == 1
    assert follower.view.rows["gptq-w4-g128"].ended == ended  # elapsed: its own work, not the others' publishing


def test_follower_in_verbose_mode_prints_every_transition_and_a_held_line_at_the_end(tmp_path):
    run = RunStore(tmp_path).create_run("demo", "name: demo\n", {})
    out = io.StringIO()
    follower = RunFollower(Console(file=out, width=160), live=False, line_stages=EVERY_TRANSITION)
    follower.attach(run)
    run.write_record(record(baseline=False, **{"gptq-w4-g128": VariantRecord(method="gptq")}))
    for stage in ("queued", "quantizing", "evaluating", "checking"):
        emit(run.path, "gptq-w4-g128", stage)
    emit(run.path, "gptq-w4-g128", "done", status="failed")
    follower.stop()  # the record never got the outcome: the line is printed all the same
    stages = [line.split("gptq-w4-g128  ")[1] for line in out.getvalue().splitlines()[1:]]
    assert stages == ["quantizing", "evaluating", "checking", "done failed"]  # the event's verdict, without numbers


def test_follow_new_run_follows_the_folder_the_block_creates(tmp_path):
    store = RunStore(tmp_path)
    old = store.create_run("demo", "name: demo\n", {})
    emit(old.path, "old-variant", "done", status="passed")
    out = io.StringIO()
    with follow_new_run(store, "demo", Console(file=out, width=160), live=False, interval=0.01):
        run = store.create_run("demo", "name: demo\n", {})
        run.write_record(record(run_id=run.run_id, **{"gptq-w4-g128": finished("failed", 0.4)}))
        emit(run.path, "gptq-w4-g128", "done", status="failed")
    text = out.getvalue()
    assert run.run_id in text and "gptq-w4-g128  done failed" in text
    assert "old-variant" not in text


def test_follow_new_run_follows_this_process_run_not_one_another_process_starts_meanwhile(tmp_path):
    store = RunStore(tmp_path)
    make_other_run = "from quantmill.runstore import RunStore; import sys; RunStore(sys.argv[1]).create_run('demo', 'name: demo', {})"
    out = io.StringIO()
    with follow_new_run(store, "demo", Console(file=out, width=160), live=False, interval=0.01):
        subprocess.run([sys.executable, "-c", make_other_run, str(tmp_path)], check=True)  # sorts first
        run = store.create_run("demo", "name: demo\n", {})
        run.write_record(record(run_id=run.run_id, **{"gptq-w4-g128": finished("failed", 0.4)}))
    other = next(r for r in store.runs("demo") if r.path != run.path)
    assert other.run_id < run.run_id
    assert f"run {run.run_id}:" in out.getvalue() and other.run_id not in out.getvalue()


def test_a_broken_progress_view_does_not_fail_the_run(tmp_path, monkeypatch):
    def broken(self, *, final=False):
        raise ValueError("unreadable progress")

    monkeypatch.setattr(RunFollower, "poll", broken)
    store = RunStore(tmp_path)
    out = io.StringIO()
    with follow_new_run(store, "demo", Console(file=out, width=160), live=False, interval=0.01):
        store.create_run("demo", "name: demo\n", {})  # the view fails on it, silently until the end
    assert out.getvalue() == "(the progress view stopped: ValueError: unreadable progress)\n"


def test_live_view_on_a_terminal_leaves_only_what_is_printed_after_it(tmp_path):
    store = RunStore(tmp_path)
    out = io.StringIO()
    terminal = Console(file=out, width=160, force_terminal=True)
    with follow_new_run(store, "demo", terminal, live=True, interval=0.01):
        run = store.create_run("demo", "name: demo\n", {})
        run.write_record(record(**{"gptq-w4-g128": finished("passed", 0.8)}))
        emit(run.path, "gptq-w4-g128", "done", status="passed")
    assert "gptq-w4-g128" in out.getvalue()  # it was drawn
    assert "done passed" not in out.getvalue()  # and no plain lines were printed


@pytest.mark.parametrize(("error", "code"), [(GateFailedError, 3), (PublishError, 4), (RegressionError, 5)])
def test_a_run_outcome_ends_with_one_line_and_no_traceback_hint(monkeypatch, capsys, error, code):
    def outcome(args):
        raise error("1 variant(s) did not pass: rtn-w2-g64 (failed)")

    monkeypatch.setattr(cli, "cmd_run", outcome)
    assert cli.main(["run", "recipe.yaml"]) == code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["✗ 1 variant(s) did not pass: rtn-w2-g64 (failed)"]


def test_an_unexpected_error_keeps_the_traceback_hint(monkeypatch, capsys):
    def broken(args):
        raise RunStoreError("cannot create a run under runs/demo")

    monkeypatch.setattr(cli, "cmd_run", broken)
    assert cli.main(["run", "recipe.yaml"]) == 1
    assert "QUANTMILL_DEBUG=1" in capsys.readouterr().err
