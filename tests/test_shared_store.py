"""The shared run store against a real S3-compatible server (moto's server mode): leases, push/pull, errors,
and two workers with separate local homes sharing one recipe's work through it."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from quantmill.cacheentry import PLAIN_JSON_SERIALIZER
from quantmill.errors import QuantmillError, RunStoreError
from quantmill.leases import Lease
from quantmill.pipeline import latest_completed
from quantmill.record import RunRecord, RunStatus
from quantmill.runstore import RunStore
from quantmill.settings import get_settings
from quantmill.sharedstore import SharedStore
from tests.support.cli import run_cli
from tests.support.s3server import environment, s3_server

LEASE_S = 1.0  # short leases keep the lock tests quick


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with a ``quantmill`` bucket; its client environment is set for the module."""
    with s3_server() as env, environment(env):
        yield env


@pytest.fixture
def url(s3) -> str:
    return f"s3://quantmill/{uuid.uuid4().hex[:8]}"  # each test its own prefix


def worker(url: str, home: Path, monkeypatch) -> RunStore:
    """The run store of a worker whose local home is ``home``, with ``url`` as its shared store."""
    monkeypatch.setenv("QUANTMILL_RUNS_DIR", url)
    monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("QUANTMILL_STORE_LEASE_S", str(LEASE_S))
    get_settings.cache_clear()
    store = RunStore(get_settings().runs_dir)
    assert store.shared is not None and store.shared.url == url
    return store


@pytest.fixture(autouse=True)
def _fresh_settings():
    yield
    get_settings.cache_clear()


def record_of(run, status=RunStatus.COMPLETED) -> RunRecord:
    return RunRecord(
        recipe="r",
        recipe_path=Path("/r.yaml"),
        recipe_sha256="0" * 64,
        run_id=run.run_id,
        quantmill_version="0",
        status=status,
    )


@pytest.mark.fast
def test_a_run_written_on_one_worker_is_history_on_another(url, tmp_path, monkeypatch):
    store_a = worker(url, tmp_path / "a", monkeypatch)
    run = store_a.create_run("r", "name: r\n", {"variants": []})
    run.write_record(record_of(run))

    store_b = worker(url, tmp_path / "b", monkeypatch)
    assert store_b.root != store_a.root  # separate local mirrors
    assert [r.run_id for r in store_b.runs("r")] == [run.run_id]
    previous = latest_completed(store_b, "r")  # what regressions compare against
    assert previous is not None and previous.run_id == run.run_id
    assert (store_b.recipe_dir("r") / run.run_id / "recipe.yaml").read_text() == "name: r\n"


@pytest.mark.fast
def test_a_record_rewritten_later_is_pulled_again(url, tmp_path, monkeypatch):
    store_a = worker(url, tmp_path / "a", monkeypatch)
    run = store_a.create_run("r", "name: r\n", {})
    run.write_record(record_of(run, RunStatus.RUNNING))
    store_b = worker(url, tmp_path / "b", monkeypatch)
    assert store_b.runs("r")[0].read_record().status == RunStatus.RUNNING
    time.sleep(0.05)
    run.write_record(record_of(run, RunStatus.COMPLETED))
    store_b.pull("r")
    assert store_b.runs("r")[0].read_record().status == RunStatus.COMPLETED


def cache_entry(cache: Path, key: str, result: str = '{"metrics": {}}', **record) -> None:
    """A step-cache entry as Prefect writes it: the result, and the key record naming it."""
    (cache / "results").mkdir(parents=True, exist_ok=True)
    (cache / "keys").mkdir(parents=True, exist_ok=True)
    (cache / "results" / key).write_text(result)
    record = {"storage_key": key, "expiration": None, "serializer": PLAIN_JSON_SERIALIZER} | record
    (cache / "keys" / key).write_text(json.dumps(record))


@pytest.mark.fast
def test_a_pulled_cache_entry_that_is_not_plain_json_is_not_used(url, tmp_path, monkeypatch, caplog):
    store_a = worker(url, tmp_path / "a", monkeypatch)  # or anyone else who can write the bucket
    cache_a = store_a.recipe_dir("r") / ".cache"
    payload = base64.b64encode(pickle.dumps(print)).decode()  # Prefect would unpickle it: code runs
    cache_entry(cache_a, "plain")
    cache_entry(cache_a, "pickled", json.dumps(payload), serializer={"type": "pickle", "picklelib": "pickle"})
    cache_entry(cache_a, "decoded", json.dumps({"x": {"__class__": "os.system", "data": "id"}}))
    cache_entry(cache_a, "elsewhere", storage_key="../../outside")
    cache_entry(cache_a, "expiring", expiration="2026-12-31T00:00:00Z")
    for key in ("plain", "pickled", "decoded", "elsewhere", "expiring"):
        store_a.shared.push_files([cache_a / "results" / key, cache_a / "keys" / key])  # written as they are

    store_b = worker(url, tmp_path / "b", monkeypatch)
    with caplog.at_level(logging.WARNING, logger="quantmill.sharedstore"):
        store_b.pull("r")
    keys_b = store_b.recipe_dir("r") / ".cache" / "keys"
    assert sorted(p.name for p in keys_b.iterdir()) == ["plain"]
    refused = sorted(r.getMessage().split("/.cache/")[1].split(" ")[0] for r in caplog.records)
    assert refused == ["keys/decoded", "keys/elsewhere", "keys/expiring", "keys/pickled", "results/decoded"]
    assert not (store_b.recipe_dir("r") / ".cache" / "results" / "decoded").exists()  # a local key may name it


@pytest.mark.fast
def test_a_cache_entry_is_shared_and_a_push_cut_short_never_shows_a_key_without_its_result(url, tmp_path, monkeypatch):
    store_a = worker(url, tmp_path / "a", monkeypatch)
    cache_a = store_a.recipe_dir("r") / ".cache"
    cache_entry(cache_a, "k1")
    cache_entry(cache_a, "k2")
    store_a.shared.push_cache_entry(cache_a, "k1")

    written = []
    real_put = SharedStore._put

    def dies_after_one_file(self, local, remote=None):
        if written:
            raise KeyboardInterrupt("the worker dies")
        written.append(local)
        real_put(self, local, remote)

    monkeypatch.setattr(SharedStore, "_put", dies_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        store_a.shared.push_cache_entry(cache_a, "k2")
    monkeypatch.setattr(SharedStore, "_put", real_put)

    store_b = worker(url, tmp_path / "b", monkeypatch)
    store_b.pull("r")
    cache_b = store_b.recipe_dir("r") / ".cache"
    assert (cache_b / "keys" / "k1").read_text() == (cache_a / "keys" / "k1").read_text()
    assert (cache_b / "results" / "k1").read_text() == (cache_a / "results" / "k1").read_text()
    assert not (cache_b / "keys" / "k2").exists()  # half an entry is no entry


@pytest.mark.fast
def test_a_recorded_artifact_path_is_mapped_into_this_mirror_or_refused(url, tmp_path, monkeypatch):
    store = worker(url, tmp_path / "a", monkeypatch).shared
    made_elsewhere = Path("/home/other/cache/stores/x/r/artifacts/rtn-w4-0123456789ab")
    assert store.localize(made_elsewhere) == store.mirror / "r" / "artifacts" / "rtn-w4-0123456789ab"
    for recorded in ("/srv/private-store/r/models/rtn-w4-0123456789ab", "/srv/r/artifacts/rtn-w4-0123456789ab/.."):
        with pytest.raises(RunStoreError, match="is not an artifact folder of a recipe"):
            store.localize(Path(recorded))  # another folder of this machine is never used as this recipe's


def artifact(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    provenance = {"variant": "v", "output_format": "hf", "size_bytes": 1002, "seconds": 1.0, "peak_rss_bytes": 1}
    (folder / "quantmill.json").write_text(json.dumps(provenance))
    (folder / "COMPLETE").write_text(json.dumps({"variant": "v"}))


@pytest.mark.fast
def test_an_artifact_without_its_marker_is_absent_and_a_complete_one_is_fetched_where_it_was_recorded(
    url, tmp_path, monkeypatch
):
    from quantmill.errors import QuantizationError
    from quantmill.quantize import local_artifact_path, read_artifact

    store_a = worker(url, tmp_path / "a", monkeypatch)
    made = store_a.recipe_dir("r") / "artifacts" / "v-0123456789ab"
    artifact(made)

    def killed_before_marker():
        raise KeyboardInterrupt("the worker dies")

    with pytest.raises(KeyboardInterrupt):
        store_a.shared.push_artifact(made, before_marker=killed_before_marker)
    shutil.rmtree(made)  # worker A's disk is on another machine

    store_b = worker(url, tmp_path / "b", monkeypatch)
    here = local_artifact_path(made)  # the path worker A recorded, in B's mirror
    assert here == store_b.recipe_dir("r") / "artifacts" / "v-0123456789ab"
    with pytest.raises(QuantizationError, match="not a completed variant folder"):
        read_artifact(made)  # its files are in the store, its marker is not: absent
    assert not here.exists()

    artifact(made)
    worker(url, tmp_path / "a", monkeypatch).shared.push_artifact(made)
    shutil.rmtree(made)
    worker(url, tmp_path / "b", monkeypatch)
    fetched = read_artifact(made)
    assert fetched.path == here
    assert (here / "model.safetensors").read_bytes() == b"\0" * 1000
    assert (here / "sub" / "tokenizer.json").read_text() == "{}"
    assert json.loads((here / "COMPLETE").read_text())["files"]["model.safetensors"] == 1000


@pytest.mark.fast
@pytest.mark.parametrize("listed", ["../../escaped.pth", "/tmp/escaped.pth", "sub/../../escaped.pth"])
def test_a_marker_listing_a_file_outside_its_folder_is_refused_and_nothing_is_written(
    url, tmp_path, monkeypatch, listed
):
    """Anything that can write to the bucket (another worker, code running on one) could publish a marker
    naming a path outside the folder: fetching it would write there."""
    from quantmill.quantize import read_artifact

    store_a = worker(url, tmp_path / "a", monkeypatch)
    made = store_a.recipe_dir("r") / "artifacts" / "v-0123456789ab"
    artifact(made)
    store_a.shared.push_artifact(made)
    marker = store_a.shared.remote(made) + "/COMPLETE"
    store_a.shared.fs.pipe_file(marker, json.dumps({"variant": "v", "files": {listed: 1000}}).encode())
    shutil.rmtree(made)

    store_b = worker(url, tmp_path / "b", monkeypatch)
    with pytest.raises(RunStoreError, match="which is not a file inside the folder"):
        read_artifact(made)
    assert not list(tmp_path.rglob("escaped.pth")) and not Path("/tmp/escaped.pth").exists()
    assert not (store_b.recipe_dir("r") / "artifacts" / "v-0123456789ab").exists()


@pytest.mark.fast
def test_a_holder_whose_renewals_stopped_reaching_the_store_knows_its_lock_lapsed(url, tmp_path, monkeypatch):
    """A network outage longer than the lease: another worker may have taken it over, so the holder must not
    publish (or overwrite) what the lock guarded, although no renewal was ever refused."""
    from quantmill.leases import LeaseLost

    store = worker(url, tmp_path / "a", monkeypatch).shared
    lease = store.lease(store.mirror / "r" / "artifacts" / "v-0123456789ab", "v")
    with lease:
        lease.check()

        def unreachable(*args, **kwargs):
            raise ConnectionError("the store does not answer")

        monkeypatch.setattr(lease.objects, "replace", unreachable)
        time.sleep(1.5 * LEASE_S)
        with pytest.raises(LeaseLost, match="no renewal reached the store"):
            lease.check()


@pytest.mark.fast
def test_a_record_written_here_after_its_last_push_is_not_replaced_by_the_stores_older_copy(url, tmp_path, monkeypatch):
    store = worker(url, tmp_path / "a", monkeypatch)
    run = store.create_run("r", "name: r\n", {})
    run.write_record(record_of(run, RunStatus.RUNNING))  # pushed
    time.sleep(1.1)  # S3 keeps whole seconds: the local write is later by any measure
    monkeypatch.setattr(store.shared, "push_files", lambda files: None)  # the final push fails to arrive
    run.write_record(record_of(run, RunStatus.COMPLETED))
    store.pull("r")
    assert run.read_record().status == RunStatus.COMPLETED


def holder(lease: Lease) -> str:
    data = lease.objects.read(lease.path)
    assert data is not None
    return json.loads(data[0])["holder"]


def taking(lease: Lease) -> threading.Thread:
    thread = threading.Thread(target=lease.acquire, daemon=True)
    thread.start()
    return thread


@pytest.mark.fast
def test_a_renewed_lease_blocks_another_worker_until_released(url, tmp_path, monkeypatch):
    store_a = worker(url, tmp_path / "a", monkeypatch)
    a = store_a.shared.lease(store_a.root / "r" / "artifacts" / "v-0123456789ab", "v")
    store_b = worker(url, tmp_path / "b", monkeypatch)
    b = store_b.shared.lease(store_b.root / "r" / "artifacts" / "v-0123456789ab", "v")
    assert a.path == b.path  # one lock object in the store for both workers
    with a:
        waiting = taking(b)
        waiting.join(2.5 * LEASE_S)  # longer than a lease: only the heartbeat keeps it
        assert waiting.is_alive(), "the second worker took a lease that was renewed"
        a.check()  # still ours
    waiting.join(5 * LEASE_S)
    assert not waiting.is_alive() and holder(b) == b.holder
    b.release()
    assert b.objects.read(b.path) is None


@pytest.mark.fast
def test_a_holder_that_stopped_renewing_is_taken_over_once_its_lease_expired(url, tmp_path, monkeypatch):
    store = worker(url, tmp_path / "a", monkeypatch).shared
    folder = store.mirror / "r" / "artifacts" / "v-0123456789ab"
    a, b = store.lease(folder, "v"), store.lease(folder, "v")
    a.acquire()
    a._stop.set()  # as a kill -9 leaves it: no more renewals, nothing released
    a._heartbeat.join()
    waiting = taking(b)
    waiting.join(LEASE_S / 3)
    assert waiting.is_alive(), "taken before the lease expired"
    waiting.join(5 * LEASE_S)
    assert not waiting.is_alive() and holder(b) == b.holder
    assert a.objects.replace(a.path, b"late renewal", a._version) is None  # the old holder cannot renew
    b.release()


@pytest.mark.fast
def test_a_file_url_store_shares_runs_and_locks_too(tmp_path, monkeypatch):
    url = (tmp_path / "shared").as_uri()
    store_a = worker(url, tmp_path / "a", monkeypatch)
    run = store_a.create_run("r", "name: r\n", {})
    run.write_record(record_of(run))
    store_b = worker(url, tmp_path / "b", monkeypatch)
    assert [r.run_id for r in store_b.runs("r")] == [run.run_id]
    folder = store_b.root / "r" / "artifacts" / "v"
    with store_b.shared.lease(folder, "v") as held:
        assert store_b.shared.lease(folder, "v").objects.create(held.path, b"x") is None
    assert not (tmp_path / "shared" / "r" / "artifacts" / ".v.lease").exists()


@pytest.mark.fast
def test_links_another_worker_plants_in_a_file_url_store_are_not_followed(tmp_path, monkeypatch, caplog):
    url = (tmp_path / "shared").as_uri()
    store_a = worker(url, tmp_path / "a", monkeypatch)
    run = store_a.create_run("r", "name: r\n", {})
    run.write_record(record_of(run))
    victim = tmp_path / "b-secrets"  # a file of worker B's machine
    victim.mkdir()
    (victim / "token").write_text("hf_theVictimsTokenValue")
    planted = tmp_path / "shared" / "r" / run.run_id / "plan.json"
    planted.unlink()
    planted.symlink_to(victim / "token")  # read: would copy B's token into B's mirror, and on into artifacts
    (tmp_path / "shared" / "r" / "artifacts").symlink_to(victim, target_is_directory=True)  # write: would land there

    store_b = worker(url, tmp_path / "b", monkeypatch)
    with caplog.at_level(logging.WARNING, logger="quantmill.sharedstore"):
        store_b.pull("r")
    mirror_run = store_b.recipe_dir("r") / run.run_id
    assert (mirror_run / "results.json").is_file() and not (mirror_run / "plan.json").exists()
    assert "plan.json from the shared store: a link, or under one" in caplog.text
    folder = store_b.recipe_dir("r") / "artifacts" / "rtn-w4-0123456789ab"
    artifact(folder)
    with pytest.raises(RunStoreError, match="is a link, or under one: not followed"):
        store_b.shared.push_artifact(folder)
    assert sorted(p.name for p in victim.iterdir()) == ["token"]


@pytest.mark.fast
def test_a_missing_bucket_is_one_clear_line(s3, tmp_path, monkeypatch):
    store = worker("s3://no-such-bucket/runs", tmp_path / "a", monkeypatch)
    with pytest.raises(RunStoreError) as caught:
        store.runs("r")
    message = str(caught.value)
    assert message.startswith("shared run store s3://no-such-bucket/runs: ")
    assert "create the bucket or fix QUANTMILL_RUNS_DIR" in message and "\n" not in message
    assert isinstance(caught.value, QuantmillError)  # the CLI prints it without a traceback


# Worker A's run as `quantmill run` runs it, with one test seam: the second servable check to start
# writes its variant into a file and never ends, so A is killed with one variant finished and the
# other half done (quantized and evaluated, not checked), whichever order the heavy steps took.
STALLS_ON_THE_SECOND_CHECK = """
import sys, time
from pathlib import Path
from quantmill import stages
from quantmill.flows.recipe import run_recipe
recipe, stalled = sys.argv[1:]
original, checks = stages.check_servable, []
def check_servable(loaded, variant, *args, **kwargs):
    checks.append(variant.id)
    if len(checks) == 2:
        Path(stalled).write_text(variant.id)
        time.sleep(3600)
    return original(loaded, variant, *args, **kwargs)
stages.check_servable = check_servable
run_recipe(recipe, publish=False)
"""
TWO = "    - {method: rtn, bits: [4, 8], group_size: 128}\n"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_worker_killed_midway_is_resumed_by_another_that_redoes_no_finished_step(
    url, tmp_path, write_recipe, monkeypatch
):
    """Two workers with separate local homes share one store: B resumes what A (kill -9) left, and each
    sees the other's runs (the nightly zoo on a fresh machine sees yesterday's run)."""
    import fsspec
    from prefect.settings import PREFECT_API_URL

    from quantmill.flows.recipe import run_recipe
    from quantmill.quantize import read_artifact
    from quantmill.tasks.limits import MACHINE_LIMITS_ENV
    from quantmill.testing.recipes import fast_recipe
    from tests.support.calls import Calls

    recipe = write_recipe(fast_recipe(TWO))
    stalled = tmp_path / "stalled"
    env_a = {
        **os.environ,
        "QUANTMILL_RUNS_DIR": url,
        "QUANTMILL_CACHE_DIR": str(tmp_path / "a"),
        "QUANTMILL_STORE_LEASE_S": "3",
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        MACHINE_LIMITS_ENV: "1",  # A's heavy slot is a file lock on A's machine, which the kill frees
    }
    keys = url.removeprefix("s3://") + "/flowtest/.cache/keys"
    store = fsspec.filesystem("s3")
    log = (tmp_path / "worker-a.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", STALLS_ON_THE_SECOND_CHECK, str(recipe), str(stalled)],
        env=env_a,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:  # kill once the store holds the baseline's entry and 2 + 3 of the variants' steps
        deadline, stalled_at = time.monotonic() + 600, None
        while True:
            entries, stalling = _listed(store, keys), stalled.exists()
            if stalling and len(entries) == 6:
                break
            assert process.poll() is None, "worker A ended: " + (tmp_path / "worker-a.log").read_text()
            assert time.monotonic() < deadline, "worker A never got to its second servable check"
            if stalling:  # its other steps are done: their entries are on the way to the store
                stalled_at = stalled_at or time.monotonic()
                assert time.monotonic() - stalled_at < 60, (
                    f"only {len(entries)} of A's 6 cache entries reached the store"
                )
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    half_done = stalled.read_text()
    finished = ({"rtn-w4-g128", "rtn-w8-g128"} - {half_done}).pop()
    run_a = next((tmp_path / "a" / "stores").glob("*/flowtest/2*")).name

    store_b = worker(url, tmp_path / "b", monkeypatch)
    calls = Calls(monkeypatch)
    results = run_recipe(str(recipe), publish=False)
    assert calls.log == []  # no quantization or evaluation ran again, nor the baseline
    assert {v: r["status"] for v, r in results["variants"].items()} == {finished: "passed", half_done: "passed"}
    assert results["baseline"]["cached"] is True
    assert results["variants"][finished]["cached"] == {"quantize": True, "evaluate": True, "servable": True}
    assert results["variants"][half_done]["cached"] == {"quantize": True, "evaluate": True, "servable": False}
    # A's artifact, recorded under B's mirror, is fetched from the store when read
    artifact = Path(results["variants"][finished]["artifact"])
    assert artifact.is_relative_to(store_b.root) and not artifact.exists()
    assert read_artifact(artifact).path == artifact and (artifact / "COMPLETE").is_file()

    assert [run.run_id for run in RunStore(store_b.root).runs("flowtest")] == [run_a, results["run_id"]]
    store_a = worker(url, tmp_path / "a", monkeypatch)  # A's machine, the next night
    previous = latest_completed(store_a, "flowtest")
    assert previous is not None and previous.run_id == results["run_id"]

    # a third machine, empty home: every step is in the store, so the rerun is replayed, without Prefect
    env_c = {**os.environ, "QUANTMILL_RUNS_DIR": url, "QUANTMILL_CACHE_DIR": str(tmp_path / "c")}
    env_c.pop("PREFECT_API_URL", None)
    replayed = run_cli("run", str(recipe), "--no-publish", env=env_c, merge_output=True)
    assert replayed.returncode == 0, replayed.stdout[-3000:]
    assert "replayed without Prefect" in replayed.stdout
    run_c = RunStore(next((tmp_path / "c" / "stores").glob("*"))).latest("flowtest")
    assert run_c is not None
    recorded = Path(run_c.read_record().variants[finished].artifact or "")
    assert recorded.is_relative_to(tmp_path / "c")  # where this machine has (or fetches) it, not A's path


def _listed(fs, path: str) -> list[str]:
    fs.invalidate_cache(path)
    try:
        return fs.ls(path, detail=False)
    except FileNotFoundError:
        return []


@pytest.mark.fast
def test_a_variant_another_worker_finished_is_fetched_under_the_lock_not_made_again(url, tmp_path, monkeypatch):
    from dataclasses import replace

    from quantmill.quantize import quantize_variant
    from quantmill.recipe import matrix

    store_a = worker(url, tmp_path / "a", monkeypatch)
    made = store_a.root / "r" / "artifacts" / "rtn-w4-g128-0123456789ab"
    artifact(made)
    store_a.shared.push_artifact(made)

    store_b = worker(url, tmp_path / "b", monkeypatch)
    rtn = matrix.get_method("rtn")

    def made_again(params, ctx):
        raise AssertionError("quantized again")

    monkeypatch.setattr(matrix, "get_method", lambda name: replace(rtn, quantize=made_again))
    variant = matrix.Variant("rtn-w4-g128", "rtn", rtn.params.model_validate({"bits": 4, "group_size": 128}), (), 0)
    out = store_b.root / "r" / "artifacts" / made.name
    got = quantize_variant(variant, source_dir=tmp_path, out_dir=out, calibration=None)
    assert got.path == out and (out / "model.safetensors").read_bytes() == b"\0" * 1000
    assert not store_b.shared.fs.exists(store_b.shared.remote(out.with_name(f".{out.name}.lease")))  # released


@pytest.mark.fast
def test_a_sensitivity_scan_made_on_one_worker_is_read_on_another_not_made_again(url, tmp_path, monkeypatch):
    from quantmill.search import sensitivity
    from quantmill.search.sensitivity import Level, Sensitivity, Unit

    unit, level = Unit("model.layers.0.mlp.up_proj", "blk.0.ffn_up.weight", 4096), Level("q4_k", 4.5, 4, 32)
    made = Sensitivity((unit,), (level,), {unit.key: {"q4_k": 0.25}}, 128)
    scanning = (tmp_path / "model", "rev", [unit], [level], [[1, 2, 3]], "calibration-fingerprint")

    worker(url, tmp_path / "a", monkeypatch)
    monkeypatch.setattr(sensitivity, "scan", lambda *args, **kwargs: made)
    assert sensitivity.cached_sensitivity(*scanning) == made

    store_b = worker(url, tmp_path / "b", monkeypatch).shared
    monkeypatch.setattr(sensitivity, "scan", lambda *args, **kwargs: pytest.fail("scanned again"))
    assert sensitivity.cached_sensitivity(*scanning) == made
    assert len(list((tmp_path / "b" / "cache" / "sensitivity").glob("*.json"))) == 1
    assert not (store_b.mirror / sensitivity.SHARED_FOLDER).exists()  # the mirror holds recipes only

    # a scan made before the worker's store was shared reaches the store when next used
    earlier = (*scanning[:-1], "another-fingerprint")
    monkeypatch.delenv("QUANTMILL_RUNS_DIR")
    monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(tmp_path / "c" / "cache"))
    get_settings.cache_clear()
    monkeypatch.setattr(sensitivity, "scan", lambda *args, **kwargs: made)
    sensitivity.cached_sensitivity(*earlier)
    worker(url, tmp_path / "c", monkeypatch)
    monkeypatch.setattr(sensitivity, "scan", lambda *args, **kwargs: pytest.fail("scanned again"))
    sensitivity.cached_sensitivity(*earlier)
    worker(url, tmp_path / "b", monkeypatch)
    assert sensitivity.cached_sensitivity(*earlier) == made

    # a scan in the store that is not one of the asked units and levels (anyone can write there) is not used
    other = (*scanning[:-1], "a-third-fingerprint")
    key = sensitivity.scan_key("rev", [unit], [level], "a-third-fingerprint", "float32")
    planted = Sensitivity(
        (Unit("model.layers.9.x", "blk.9.x.weight", 1),), (level,), {"blk.9.x.weight": {"q4_k": 0}}, 1
    )
    store_d = worker(url, tmp_path / "d", monkeypatch).shared
    store_d.fs.pipe(
        f"{store_d.remote(store_d.mirror)}/{sensitivity.SHARED_FOLDER}/{key}.json",
        json.dumps(planted.to_dict()).encode(),
    )
    monkeypatch.setattr(sensitivity, "scan", lambda *args, **kwargs: made)
    assert sensitivity.cached_sensitivity(*other) == made  # scanned here instead


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_proxy_step_is_pushed_as_it_completes_and_another_worker_pulls_it(url, tmp_path, monkeypatch):
    """The search's proxy goes through the recipe's cache like its other steps (``CachedTasks.stored``), so a
    worker of the shared store does not measure a candidate's proxy again."""
    from prefect import flow

    from quantmill.flows import search
    from quantmill.pipeline import StepSlot
    from quantmill.recipe import matrix
    from quantmill.tasks.steps import steps_cached_in

    store_a = worker(url, tmp_path / "a", monkeypatch)
    made = store_a.root / "r" / "artifacts" / "rtn-w4-g128-0123456789ab"
    artifact(made)
    rtn = matrix.get_method("rtn")
    variant = matrix.Variant("rtn-w4-g128", "rtn", rtn.params.model_validate({"bits": 4, "group_size": 128}), (), 0)
    monkeypatch.setattr(search, "measure_proxy", lambda *args: {"score": 12.5, "size_mb": 0.001})
    key = "5" * 64
    proxy = steps_cached_in(store_a.recipe_dir("r") / ".cache", "r").stored(search.proxy_task)

    @flow
    def screening() -> dict:
        return proxy(None, variant, {"path": str(made)}, StepSlot(None), tmp_path / "run", cache_key=key)

    assert screening() == {"score": 12.5, "size_mb": 0.001}
    store_b = worker(url, tmp_path / "b", monkeypatch)
    store_b.pull("r")
    cache_b = store_b.recipe_dir("r") / ".cache"
    assert (cache_b / "keys" / key).is_file()
    assert json.loads((cache_b / "results" / key).read_text()) == {"score": 12.5, "size_mb": 0.001}
