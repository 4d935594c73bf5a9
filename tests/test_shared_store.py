"""The shared run store against a real S3-compatible server (moto's server mode): leases, push/pull, errors,
and two workers with separate local homes sharing one recipe's work through it."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from quantmill.errors import QuantmillError, RunStoreError
from quantmill.leases import Lease
from quantmill.pipeline import latest_completed
from quantmill.record import RunRecord, RunStatus
from quantmill.runstore import RunStore
from quantmill.settings import get_settings
from quantmill.sharedstore import SharedStore
from tests.support.s3server import _environment, s3_server

LEASE_S = 1.0  # short leases keep the lock tests quick


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with a ``quantmill`` bucket; its client environment is set for the module."""
    with s3_server() as env, _environment(env):
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


def cache_entry(cache: Path, key: str) -> None:
    """A step-cache entry as Prefect writes it: the result, and the key record naming it."""
    (cache / "results").mkdir(parents=True, exist_ok=True)
    (cache / "keys").mkdir(parents=True, exist_ok=True)
    (cache / "results" / key).write_text(json.dumps({"metrics": {}}))
    (cache / "keys" / key).write_text(json.dumps({"storage_key": key, "serializer": {"type": "json"}}))


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
    made = store_a.recipe_dir("r") / "artifacts" / "v-abc"
    artifact(made)

    def killed_before_marker():
        raise KeyboardInterrupt("the worker dies")

    with pytest.raises(KeyboardInterrupt):
        store_a.shared.push_artifact(made, before_marker=killed_before_marker)
    shutil.rmtree(made)  # worker A's disk is on another machine

    store_b = worker(url, tmp_path / "b", monkeypatch)
    here = local_artifact_path(made)  # the path worker A recorded, in B's mirror
    assert here == store_b.recipe_dir("r") / "artifacts" / "v-abc"
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
    a = store_a.shared.lease(store_a.root / "r" / "artifacts" / "v-abc", "v")
    store_b = worker(url, tmp_path / "b", monkeypatch)
    b = store_b.shared.lease(store_b.root / "r" / "artifacts" / "v-abc", "v")
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
    folder = store.mirror / "r" / "artifacts" / "v-abc"
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
def test_a_missing_bucket_is_one_clear_line(s3, tmp_path, monkeypatch):
    store = worker("s3://no-such-bucket/runs", tmp_path / "a", monkeypatch)
    with pytest.raises(RunStoreError) as caught:
        store.runs("r")
    message = str(caught.value)
    assert message.startswith("shared run store s3://no-such-bucket/runs: ")
    assert "create the bucket or fix QUANTMILL_RUNS_DIR" in message and "\n" not in message
    assert isinstance(caught.value, QuantmillError)  # the CLI prints it without a traceback
