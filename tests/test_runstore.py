"""The run store's layout and atomic writes."""

from __future__ import annotations

import errno
import json
import os

import pytest

from quantmill.cli import main
from quantmill.errors import RunStoreError
from quantmill.pipeline import start_run
from quantmill.recipe import load_recipe
from quantmill.record import SCHEMA_VERSION, RunStatus, VariantStatus
from quantmill.runstore import RunStore, atomic_write_json, new_run_id
from tests.conftest import REPO


@pytest.mark.fast
def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {("tuple", "key"): 1})  # JSON keys must be strings
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


@pytest.mark.fast
def test_atomic_write_reports_a_path_that_cannot_be_a_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunStoreError, match="could not write"):
        atomic_write_json(blocker / "results.json", {})


@pytest.mark.fast
def test_disk_full_during_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"ok": 1})

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RunStoreError, match="No space left on device"):
        atomic_write_json(target, {"ok": 2})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.fast
def test_run_ids_sort_by_time_and_do_not_collide():
    ids = [new_run_id() for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == 200


@pytest.mark.fast
def test_start_run_lays_out_the_run_folder(tmp_path):
    store = RunStore(tmp_path / "runs")
    run = start_run(load_recipe(REPO / "recipes" / "demo.yaml"), only=["bnb-int8", "gguf-q8_0"], store=store).run
    assert run.path.parent == tmp_path / "runs" / "demo"
    assert (run.path / "recipe.yaml").read_text() == (REPO / "recipes" / "demo.yaml").read_text()
    assert json.loads((run.path / "plan.json").read_text())["recipe"] == "demo"
    assert json.loads(run.results_path.read_text())["schema_version"] == SCHEMA_VERSION
    record = run.read_record()
    assert record.status is RunStatus.PLANNED
    assert list(record.variants) == ["bnb-int8", "gguf-q8_0"]
    assert {v.status for v in record.variants.values()} == {VariantStatus.PENDING}
    assert (run.path / "variants").is_dir() and (run.path / "logs").is_dir()
    assert store.latest("demo") == run
    # the recipe's folder also holds artifacts/ (named after no run) and runs of earlier versions
    (run.path.parent / "artifacts" / "rtn-w4-0123456789ab").mkdir(parents=True)
    assert store.latest("demo") == run
    older = run.path.parent / "20250101T000000Z-abc123"
    older.mkdir()
    assert [r.path for r in store.runs("demo")] == [older, run.path]
    assert not run.is_complete("bnb-int8")
    run.mark_complete("bnb-int8", {"seconds": 1})
    assert run.is_complete("bnb-int8")


def test_run_with_unknown_only_variant_is_a_recipe_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUANTMILL_RUNS_DIR", str(tmp_path))
    from quantmill.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["run", str(REPO / "recipes" / "demo.yaml"), "--only", "bnb-nf5"]) == 2
        assert "did you mean 'bnb-nf4'?" in capsys.readouterr().err
        assert not any(tmp_path.iterdir())  # nothing half-written
    finally:
        get_settings.cache_clear()


@pytest.mark.fast
def test_one_of_locks_counts_slots_and_a_killed_holder_frees_its_slot(tmp_path):
    """Heavy slots on one machine: N lock files; the kernel frees a slot when its holder dies."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    from quantmill.runstore import one_of_locks

    slots = [tmp_path / "locks" / f"cpu-heavy.{i}.lock" for i in range(2)]
    slots[0].parent.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys, time\n"
                f"h = open({str(slots[0])!r}, 'w'); fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    got, third = [], []
    with one_of_locks(slots) as second:
        got.append(second)

        def wait_for_a_slot():
            with one_of_locks(slots) as path:
                third.append(path)

        waiter = threading.Thread(target=wait_for_a_slot)
        waiter.start()
        time.sleep(0.5)
        assert third == []  # both slots taken: it waits
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        waiter.join(timeout=10)
    assert got == [slots[1]] and third == [slots[0]]  # the dead holder's slot went to the waiter
