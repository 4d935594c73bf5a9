"""The recipe flow through a real Prefect server: caching, resume, failure isolation, limits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from quantmill.testing.recipes import fast_recipe
from tests.support.cli import QUANTMILL, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

THREE = "    - {method: rtn, bits: [4, 8], group_size: 128}\n    - {method: bnb, type: int8}\n"


def run_flow(recipe, runs, **kwargs):
    from quantmill.flows.recipe import run_recipe

    return run_recipe(str(recipe), runs_dir=str(runs), **kwargs)


def test_baseline_once_then_a_rerun_does_nothing(tmp_path, write_recipe, calls):
    recipe = write_recipe(fast_recipe(THREE))
    first = run_flow(recipe, tmp_path / "runs")
    assert calls.count("evaluate_baseline") == 1
    assert calls.variants("quantize_one") == ["bnb-int8", "rtn-w4-g128", "rtn-w8-g128"]
    assert calls.count("evaluate_variant") == 3
    assert {v["status"] for v in first["variants"].values()} == {"passed"}

    calls.log.clear()
    second = run_flow(recipe, tmp_path / "runs")
    assert calls.log == []  # no quantize or evaluate body ran
    assert second["baseline"]["cached"] is True
    assert all(
        v["cached"] == {"quantize": True, "evaluate": True, "servable": True} for v in second["variants"].values()
    )
    assert second["variants"]["rtn-w4-g128"]["evaluation"] == first["variants"]["rtn-w4-g128"]["evaluation"]
    assert second["run_id"] != first["run_id"]


def test_adding_a_variant_runs_only_that_branch(tmp_path, write_recipe, calls):
    run_flow(write_recipe(fast_recipe(THREE)), tmp_path / "runs")
    calls.log.clear()
    grown = write_recipe(fast_recipe(THREE + "    - {method: rtn, bits: 4, group_size: 64}\n"))
    run_flow(grown, tmp_path / "runs")
    assert calls.variants("quantize_one") == ["rtn-w4-g64"]
    assert calls.variants("evaluate_variant") == ["rtn-w4-g64"]
    assert calls.count("evaluate_baseline") == 0


def test_a_failing_variant_does_not_stop_the_others(tmp_path, write_recipe, monkeypatch):
    from quantmill import stages

    original = stages.quantize_one

    def fail_awq(loaded, variant, *args, **kwargs):
        if variant.method == "rtn" and variant.params.bits == 8:
            raise RuntimeError("simulated out-of-memory")
        return original(loaded, variant, *args, **kwargs)

    monkeypatch.setattr(stages, "quantize_one", fail_awq)
    publish = f"publish: {{target: local, path: {tmp_path / 'zoo'}, namespace: org, license: mit}}\n"
    results = run_flow(write_recipe(fast_recipe(THREE, publish=publish)), tmp_path / "runs")
    failed = results["variants"]["rtn-w8-g128"]
    assert failed["status"] == "failed" and "simulated out-of-memory" in failed["error"]
    assert failed["verdict"]["status"] == "failed"
    assert results["variants"]["rtn-w4-g128"]["status"] == "passed"
    assert results["variants"]["bnb-int8"]["status"] == "passed"
    saved = json.loads((tmp_path / "runs" / "flowtest" / results["run_id"] / "results.json").read_text())
    assert saved["variants"]["rtn-w8-g128"]["status"] == "failed"
    published = sorted(p.name for p in (tmp_path / "zoo" / "org").iterdir())
    assert published == ["tiny-llama-bnb-int8", "tiny-llama-rtn-w4-g128"]  # the others were published


def flow_run_of(recipe):
    """The final state of the recipe flow run that ran this recipe file, read from the test's Prefect server."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.parameters.get("recipe_path") == str(recipe)]
    assert len(runs) == 1, runs
    return runs[0].state


def test_cli_exit_code_is_non_zero_when_a_variant_fails(tmp_path, write_recipe):
    """A required gate fails and a quantization raises: exit 3, the flow run ends Failed naming the variants, the
    webhook hears of it, and the console shows quantmill's lines, not Prefect's task tracebacks."""
    from prefect.settings import PREFECT_API_URL

    from tests.support.webhook import webhook_receiver

    recipe = write_recipe(
        fast_recipe(
            "    - {method: rtn, bits: 2, group_size: 128}\n    - {method: gguf, types: [q8_0]}\n",
            gates="  - {metric: tiny_world_mc/acc, min_recovery: 0.99}\n",
        )
    )
    with webhook_receiver() as receiver:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_DIR", "QUANTMILL_LLAMA_CPP_DIR")},
            "QUANTMILL_RUNS_DIR": str(tmp_path / "runs"),
            "QUANTMILL_CACHE_DIR": str(tmp_path / "cache"),  # no llama.cpp tools there: the GGUF step raises
            "PREFECT_API_URL": PREFECT_API_URL.value(),  # the test's server, where the flow run's state is read
            "QUANTMILL_NOTIFY_URLS": json.dumps([receiver.url + "/hook"]),
        }
        result = run_cli("run", str(recipe), env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "2 variant(s) did not pass: gguf-q8_0 (failed), rtn-w2-g128 (failed)" in result.stderr
    assert "GGUF needs llama.cpp" in result.stdout  # the reason, in the results table
    assert "Traceback" not in output and "Task run" not in output, output  # in the step log and the Prefect UI
    state = flow_run_of(recipe)
    assert state.type.name == "FAILED"
    assert state.message == "2 variant(s) did not pass: gguf-q8_0 (failed), rtn-w2-g128 (failed)"
    [message] = [r["json"] for r in receiver.received]
    run_path = next((tmp_path / "runs" / "flowtest").glob("2*"))
    assert message["quantmill"]["events"] == ["failure"] and message["quantmill"]["exit_code"] == 3
    assert message["quantmill"]["report_url"] == (run_path / "report.html").as_uri()
    assert "• rtn-w2-g128 failed: tiny_world_mc/acc" in message["text"]  # with its numbers


def test_killed_run_resumes_without_redoing_finished_variants(tmp_path, write_recipe, calls):
    """SIGKILL lands while a quantization is half written; the rerun redoes that one and nothing finished."""
    from prefect.settings import PREFECT_API_URL

    from quantmill.tasks.limits import MACHINE_LIMITS_ENV

    recipe = write_recipe(fast_recipe(THREE))
    runs = tmp_path / "runs"
    artifacts = runs / "flowtest" / "artifacts"
    env = {
        **os.environ,
        "QUANTMILL_RUNS_DIR": str(runs),
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the test's server, not one started by the run
        MACHINE_LIMITS_ENV: "1",  # its heavy slot is a file lock, freed by the kill as on a laptop
    }
    output = (tmp_path / "killed-run.log").open("w")
    process = subprocess.Popen(
        [*QUANTMILL, "run", str(recipe)],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def variant_of(folder) -> str:  # artifact folders are named <variant>-<12 hex of the key>
        return folder.name.lstrip(".").removesuffix(".partial").rsplit("-", 1)[0]

    def finished_folders() -> list:
        return [m.parent for m in artifacts.glob("[!.]*/COMPLETE")]  # staging folders start with "."

    done_at: dict[str, float] = {}
    in_progress: list = []
    deadline = time.monotonic() + 600
    try:
        # Kill once one quantization is being written while another has been finished for a
        # while (its cached result is surely recorded): the kill interrupts real work.
        while True:
            assert process.poll() is None, "the run ended before the kill: " + (tmp_path / "killed-run.log").read_text()
            assert time.monotonic() < deadline, "never saw a quantization in progress after another finished"
            now = time.monotonic()
            for folder in finished_folders():
                done_at.setdefault(variant_of(folder), now)
            finished = {v for v, at in done_at.items() if now - at > 0.5}
            in_progress = list(artifacts.glob(".*.partial"))
            if finished and in_progress:
                break
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        output.close()
    assert all(folder.is_dir() for folder in in_progress), "the quantization finished before the kill landed"
    interrupted = {variant_of(folder) for folder in in_progress}

    results = run_flow(recipe, runs)
    redone = set(calls.variants("quantize_one"))
    assert interrupted <= redone, (interrupted, redone)  # the half-written variant is made again
    assert not redone & finished, (redone, finished)  # and no finished one is
    assert {v["status"] for v in results["variants"].values()} == {"passed"}
    assert not list(artifacts.glob(".*.partial"))
    made = sorted(variant_of(folder) for folder in finished_folders())
    assert made == ["bnb-int8", "rtn-w4-g128", "rtn-w8-g128"]  # one finished folder each


# Runs a recipe like `quantmill run`, appending a span line "<pid> <start> <end>" per heavy step to a file.
TIMED_RUN = """
import os, sys, time
from quantmill import stages
from quantmill.flows.recipe import run_recipe
recipe, spans = sys.argv[1:]
for name in ("evaluate_baseline", "quantize_one", "evaluate_variant"):
    def timed(*args, _original=getattr(stages, name), **kwargs):
        start = time.monotonic()  # one clock for every process on the machine
        try:
            return _original(*args, **kwargs)
        finally:
            with open(spans, "a") as out:
                out.write(f"{os.getpid()} {start} {time.monotonic()}\\n")
    setattr(stages, name, timed)
run_recipe(recipe, heavy_slots=1)
"""


def test_heavy_limit_serialises_heavy_tasks(tmp_path, write_recipe):
    """Two runs in two processes, each free to compute at once, share one heavy slot: their steps never overlap."""
    from prefect.settings import PREFECT_API_URL

    recipe = write_recipe(fast_recipe("    - {method: rtn, bits: 4, group_size: 128}\n"))
    spans = tmp_path / "spans.txt"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the test server holds the limit
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TIMED_RUN, str(recipe), str(spans)],
            env={**env, "QUANTMILL_RUNS_DIR": str(tmp_path / f"runs-{i}")},  # nothing cached or shared
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    steps = sorted(
        (float(start), float(end), int(pid)) for pid, start, end in map(str.split, spans.read_text().splitlines())
    )
    assert len(steps) == 6 and len({pid for *_, pid in steps}) == 2  # baseline, quantize, evaluate in each
    for (_, end, pid), (next_start, _, next_pid) in zip(steps, steps[1:], strict=False):
        assert next_start >= end, f"a heavy step of process {next_pid} started while one of {pid} ran"


def test_heavy_tasks_take_turns_in_one_process_even_with_more_slots(tmp_path, write_recipe, calls):
    """Threads of one process share transformers' and torch's global state: heavy steps must not overlap there."""
    from quantmill.devices import CPU_LIMIT
    from quantmill.tasks.limits import ensure_limit

    try:
        results = run_flow(write_recipe(fast_recipe(THREE)), tmp_path / "runs", workers=4, heavy_slots=3)
        assert ensure_limit(CPU_LIMIT) == 3  # the explicit size was applied to the existing limit
    finally:
        ensure_limit(CPU_LIMIT, 1)
    spans = sorted((start, end) for name, _, start, end in calls.log)
    assert len(spans) == 7
    for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert next_start >= end, "two heavy tasks overlapped in one process"
    assert {v["status"] for v in results["variants"].values()} == {"passed"}
    assert results["baseline"]["evaluation"]["metrics"]["tiny_world_mc/acc"]["value"] > 0.8


def test_a_local_run_holds_one_heavy_slot_while_it_computes_and_none_when_cached(tmp_path, write_recipe, monkeypatch):
    from prefect import get_client

    from quantmill import stages
    from quantmill.devices import CPU_LIMIT

    def active_slots() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(CPU_LIMIT).active_slots

    seen, original = [], stages.quantize_one

    def watching(*args, **kwargs):
        seen.append(active_slots())
        return original(*args, **kwargs)

    monkeypatch.setattr(stages, "quantize_one", watching)
    recipe = write_recipe(
        fast_recipe("    - {method: rtn, bits: 4, group_size: 128}\n    - {method: bnb, type: int8}\n")
    )
    run_flow(recipe, tmp_path / "runs")
    assert seen == [1, 1]  # the run's one slot, not one per task and not none
    assert active_slots() == 0  # given back at the end
    held = []
    monkeypatch.setattr(
        "quantmill.tasks.limits.concurrency", lambda *a, **k: held.append(a) or contextlib.nullcontext()
    )
    again = run_flow(recipe, tmp_path / "runs")
    assert held == [] and all(
        v["cached"] == {"quantize": True, "evaluate": True, "servable": True} for v in again["variants"].values()
    )


def test_heavy_calls_run_one_at_a_time_on_one_thread():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from quantmill.pipeline import StepSlot
    from quantmill.tasks.steps import run_heavy

    inside, most, threads = [0], [0], set()

    def work():
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        threads.add(threading.get_ident())
        time.sleep(0.01)
        inside[0] -= 1
        return threading.get_ident()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: run_heavy(StepSlot(None), lambda device: work()), range(40)))
    assert most[0] == 1 and len(threads) == 1 and threading.get_ident() not in threads

    with pytest.raises(ZeroDivisionError):  # a failing step's exception reaches the task
        run_heavy(StepSlot(None), lambda device: 1 / 0)


def test_cli_run_renders_a_table_and_a_regression_exits_5(tmp_path, write_recipe):
    """Every gate holds, but the variant is larger than in the previous run: exit 5, flow run Completed 'Regressed'."""
    from prefect.settings import PREFECT_API_URL

    from quantmill.evaluation.results import EvaluationResult, MetricValue
    from quantmill.record import RunRecord, RunStatus, VariantRecord, VariantStatus
    from quantmill.runstore import Run

    recipe = write_recipe(fast_recipe("    - {method: bnb, type: int8}\n"))
    previous = RunRecord(  # an earlier completed run in which bnb-int8 was 1 kB
        recipe="flowtest",
        recipe_path=recipe,
        recipe_sha256="0",
        run_id="20000101T000000Z-000000",
        quantmill_version="0",
        status=RunStatus.COMPLETED,
        variants={
            "bnb-int8": VariantRecord(
                method="bnb", status=VariantStatus.PASSED, evaluation=EvaluationResult({"size_mb": MetricValue(0.001)})
            )
        },
    )
    Run(tmp_path / "runs" / "flowtest" / previous.run_id).write_record(previous)
    env = {
        **os.environ,
        "QUANTMILL_RUNS_DIR": str(tmp_path / "runs"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "COLUMNS": "250",  # the error line unwrapped
    }
    result = run_cli("run", str(recipe), env=env)
    assert result.returncode == 5, result.stdout[-2000:] + result.stderr[-2000:]
    assert "bnb-int8" in result.stdout and "passed" in result.stdout
    assert "1 regression(s) since the previous run: bnb-int8 size_mb 0.001 →" in result.stderr
    assert "QUANTMILL_DEBUG" not in result.stderr  # an outcome, not a fault: no traceback hint
    state = flow_run_of(recipe)
    assert (state.type.name, state.name) == ("COMPLETED", "Regressed")
    assert state.message.startswith("1 regression(s) since the previous run: bnb-int8 size_mb 0.001 →")


def test_plan_shows_cached_and_stale_variants(tmp_path, write_recipe):
    from quantmill.pipeline import cache_status
    from quantmill.recipe import load_recipe

    rows = "    - {method: rtn, bits: 4, group_size: 128}\n    - {method: bnb, type: int8}\n"
    recipe = write_recipe(fast_recipe(rows))
    cache = tmp_path / "runs" / "flowtest" / ".cache"
    assert cache_status(load_recipe(recipe), cache, "cpu") == {"rtn-w4-g128": "not run", "bnb-int8": "not run"}
    run_flow(recipe, tmp_path / "runs")
    assert cache_status(load_recipe(recipe), cache, "cpu") == {"rtn-w4-g128": "cached", "bnb-int8": "cached"}
    changed = write_recipe(fast_recipe(rows.replace("type: int8}", "type: int8, compute_dtype: bfloat16}")))
    assert cache_status(load_recipe(changed), cache, "cpu") == {"rtn-w4-g128": "cached", "bnb-int8": "stale"}


def test_a_corrupt_cached_result_heals_on_rerun(tmp_path, write_recipe, calls):
    recipe = write_recipe(fast_recipe("    - {method: rtn, bits: 4, group_size: 128}\n"))
    run_flow(recipe, tmp_path / "runs")
    results = tmp_path / "runs" / "flowtest" / ".cache" / "results"
    for file in results.iterdir():
        file.write_text(file.read_text()[:20])  # a write cut short by a crash or a full disk
    calls.log.clear()
    healed = run_flow(recipe, tmp_path / "runs")
    assert healed["variants"]["rtn-w4-g128"]["status"] == "passed"
    assert calls.variants("quantize_one") == ["rtn-w4-g128"] and calls.count("evaluate_baseline") == 1
    calls.log.clear()
    run_flow(recipe, tmp_path / "runs")
    assert calls.log == []  # and the healed entries are cached again


def test_two_concurrent_runs_of_one_recipe(tmp_path, write_recipe):
    from prefect.settings import PREFECT_API_URL

    recipe = write_recipe(fast_recipe("    - {method: rtn, bits: [4, 8], group_size: 128}\n"))
    env = {
        **os.environ,
        "QUANTMILL_RUNS_DIR": str(tmp_path / "runs"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the test's server: neither run starts an ephemeral one
    }
    processes = [
        subprocess.Popen(
            [*QUANTMILL, "run", str(recipe)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    runs = sorted((tmp_path / "runs" / "flowtest").glob("2*"))
    assert len(runs) == 2  # separate run ids, never one folder shared
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        assert {v["status"] for v in results["variants"].values()} == {"passed"}
    artifacts = [p for p in (tmp_path / "runs" / "flowtest" / "artifacts").iterdir() if not p.name.startswith(".")]
    assert len(artifacts) == 2 and all((a / "COMPLETE").is_file() for a in artifacts)


def test_a_recipe_mixing_ptq_and_qat_is_gated_and_published(tmp_path, write_recipe):
    rows = (
        "    - {method: rtn, bits: 4, group_size: 128}\n"
        "    - {method: qat, bits: 4, group_size: 32, training: {steps: 20, batch_size: 4, seq_len: 64, learning_rate: 0.0002}}\n"
    )
    publish = f"publish: {{target: local, path: {tmp_path / 'zoo'}, namespace: org, license: mit}}\n"
    results = run_flow(write_recipe(fast_recipe(rows, publish=publish)), tmp_path / "runs")
    qat = results["variants"]["qat-w4-g32"]
    assert qat["setting"] == (
        "w4 · QAT 20 steps, 5,120 tokens, validated every 10 steps (patience 3; no improvement: keep start)"
    )
    assert qat["verdict"]["outcomes"][0]["metric"] == "tiny_world_mc/acc"
    assert qat["status"] == "passed" and qat["publish"]["status"] == "published"
    card = (tmp_path / "zoo" / "org" / "tiny-llama-qat-w4-g32" / "README.md").read_text()
    assert "QAT training: 20 steps, 5120 tokens" in card


# llama.cpp's converter as the OOM killer leaves it: part of the output written, then SIGKILL.
CONVERTER_KILLED_MID_WRITE = """
import os, signal, sys
out = sys.argv[sys.argv.index("--outfile") + 1]
with open(out, "wb") as partial:
    partial.write(b"GGUF" + bytes(4096))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_variant_killed_by_the_oom_killer_fails_alone(tmp_path, write_recipe, monkeypatch):
    """The GGUF converter killed by SIGKILL (what the OOM killer sends) fails its variant only, and leaves
    nothing half-written that a later run could take for finished."""
    from quantmill.settings import get_settings

    llama_cpp = tmp_path / "llama.cpp"
    llama_cpp.mkdir()
    (llama_cpp / "convert_hf_to_gguf.py").write_text(CONVERTER_KILLED_MID_WRITE)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(llama_cpp))
    get_settings.cache_clear()
    try:
        rows = "    - {method: rtn, bits: 4, group_size: 128}\n    - {method: gguf, type: q4_k_m}\n"
        results = run_flow(write_recipe(fast_recipe(rows)), tmp_path / "runs")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    killed = results["variants"]["gguf-q4_k_m"]
    assert killed["status"] == "failed"
    assert "convert_hf_to_gguf.py failed (killed by SIGKILL (out of memory?))" in killed["error"]
    assert results["variants"]["rtn-w4-g128"]["status"] == "passed"
    report = (tmp_path / "runs" / "flowtest" / results["run_id"] / "report.md").read_text()
    assert "killed by SIGKILL" in report  # the report says what happened
    artifacts = tmp_path / "runs" / "flowtest" / "artifacts"
    assert [f.name for f in artifacts.glob("gguf-q4_k_m-*")] == []  # no variant folder, finished or staged
    assert list(artifacts.glob(".gguf-q4_k_m-*.partial")) == []
    assert list((artifacts / ".shared").glob("*.gguf")) == []  # the cut-short conversion is not taken as done


def test_same_named_recipes_in_two_run_stores_keep_their_own_result_folders(tmp_path):
    """One Prefect server, two stores: each store's cached results are written to and read from its own folder."""
    from prefect.filesystems import LocalFileSystem

    from quantmill.tasks.steps import steps_cached_in

    first = steps_cached_in(tmp_path / "a" / ".cache", "flowtest")
    second = steps_cached_in(tmp_path / "b" / ".cache", "flowtest")
    folders = []
    for steps in (first, second):
        storage = steps.quantize.result_storage
        block = LocalFileSystem.load(storage.split("/", 1)[1]) if isinstance(storage, str) else storage
        folders.append(block.basepath)
    assert folders == [str(tmp_path / "a" / ".cache" / "results"), str(tmp_path / "b" / ".cache" / "results")]
