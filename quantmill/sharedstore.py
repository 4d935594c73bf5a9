"""The shared run store: the run store on object storage, worked on through a local mirror.

``QUANTMILL_RUNS_DIR=s3://bucket/prefix`` (any fsspec URL; ``file://…`` too) makes the store
shared by workers on several machines. Every reader and writer of the run store keeps working
on local folders, in a mirror under the local cache (``quantmill.settings``); this module
copies between the mirror and the store, keeping the store's layout (``quantmill.runstore``):

- **pull** (:meth:`SharedStore.pull`, when a run starts and when runs are listed): the recipe's
  run records (``results.json`` with the recipe and plan copies: history and regressions see runs
  made elsewhere; their reports and logs stay in the store) and its step cache
  (``.cache/results`` before ``.cache/keys``, so a key is never local without its result).
  Artifacts are fetched lazily (:meth:`SharedStore.fetch_artifact`), when one is read.
- **push**, as work finishes: a step's cache entry, its result before its key record
  (:meth:`SharedStore.push_cache_entry`); an artifact folder's files, then its ``COMPLETE``
  marker, which lists them (:meth:`SharedStore.push_artifact`); run files as they are written.
- **files outside every recipe** (a model's sensitivity scans, which any recipe may use): under a dot
  folder of the store's root, pushed when made (:meth:`SharedStore.push_file`) and fetched one at a
  time when this machine lacks one (:meth:`SharedStore.fetch_file`); they stay out of the mirror.

Atomicity is the local store's: a single PUT is atomic on object storage, a ``file://`` store
gets each file written beside its place and renamed; the object that makes an entry visible
(a key record, ``COMPLETE``, ``results.json``) is written last, and readers treat an artifact
folder without ``COMPLETE`` as absent. Locks across machines are leases (``quantmill.leases``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from quantmill.cacheentry import holds_an_encoded_object, plain_json_entry, plain_name
from quantmill.errors import RunStoreError
from quantmill.leases import Lease, is_local, objects_for
from quantmill.recipe.schema import SLUG
from quantmill.runstore import COMPLETE_MARKER, RUN_ID  # runstore imports this module only when a store opens
from quantmill.settings import get_settings

log = logging.getLogger(__name__)

#: a file to fetch: its store path, its mirror path, its listing entry
_Item = tuple[str, Path, dict[str, Any]]

RESULTS_FILE = "results.json"
#: what is pulled of a run: its record and what it ran (reports and logs stay in the store)
RECORD_FILES = ([RESULTS_FILE], ["recipe.yaml"], ["plan.json"])


try:  # botocore's own errors (not OSErrors), when an S3 store is in use
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    _BOTO: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
    _NO_CREDENTIALS: tuple[type[Exception], ...] = (NoCredentialsError,)
except ImportError:  # pragma: no cover
    _BOTO, _NO_CREDENTIALS = (), ()
#: what the store answers when it refuses us, and when it cannot be reached (or answers nonsense)
_DENIED: tuple[type[Exception], ...] = (PermissionError, *_NO_CREDENTIALS)
_UNREACHABLE: tuple[type[Exception], ...] = (OSError, ValueError, *_BOTO)


class SharedStore:
    """One shared store: its URL, the local mirror of it, and the lease length of its locks."""

    def __init__(self, url: str, mirror: Path, lease_s: float, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.mirror = Path(mirror).resolve()
        self.lease_s = lease_s
        self.options = options or {}
        self._fs: Any = None
        self._root = ""

    # -- where things are

    @property
    def fs(self) -> Any:
        """The store's fsspec file system (made on first use: a store that is never touched needs no s3fs)."""
        if self._fs is None:
            from fsspec.core import url_to_fs

            with self._talking("open"):
                self._fs, self._root = url_to_fs(self.url, **self.options)
                if is_local(self._fs):
                    self._fs.auto_mkdir = True  # object stores have no folders to make first
        return self._fs

    def _through_a_link(self, remote: str) -> bool:
        """Whether a ``file://`` store path is a link or lies under one below the store's root: another
        worker on the shared mount could point one at this machine's files (a read copies them into an
        artifact; a write lands there). Object stores have no links."""
        if not is_local(self.fs):
            return False
        root, path = Path(self._root), Path(remote)
        if not path.is_relative_to(root):
            return True
        for part in [path, *path.parents]:
            if part == root:
                return False
            if part.is_symlink():
                return True
        return True

    def _refuse_links(self, remotes: list[str]) -> None:
        linked = next((r for r in remotes if self._through_a_link(r)), None)
        if linked is not None:
            raise RunStoreError(f"shared run store {self.url}: {linked} is a link, or under one: not followed")

    def remote(self, local: Path) -> str:
        """The store path of a path in the mirror."""
        try:
            relative = Path(local).resolve().relative_to(self.mirror).as_posix()
        except ValueError:
            raise RunStoreError(f"{local} is not in the mirror of the shared run store {self.url}") from None
        self.fs  # noqa: B018 -- sets _root
        return self._root if relative == "." else f"{self._root}/{relative}"

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is in this store's mirror."""
        return Path(path).resolve().is_relative_to(self.mirror)

    def localize(self, artifact: Path) -> Path:
        """Where an artifact folder recorded on another machine (its mirror elsewhere) is in this mirror.

        Cached quantize results name the folder where the worker that made it had it:
        ``<its mirror>/<recipe>/artifacts/<variant>-<key>``; the last three parts are the store's.
        """
        artifact = Path(artifact)
        if self.holds(artifact):
            return artifact
        recipe, folder = artifact.parent.parent.name, artifact.name
        # a record naming anything else (another store's folder, a path with '..') is never used as it is
        if artifact.parent.name != "artifacts" or not (SLUG.fullmatch(recipe) and ARTIFACT_FOLDER.fullmatch(folder)):
            raise RunStoreError(f"shared run store {self.url}: {artifact} is not an artifact folder of a recipe")
        return self.mirror / recipe / "artifacts" / folder

    # -- errors

    @contextlib.contextmanager
    def _talking(self, doing: str) -> Iterator[None]:
        """Turn the store's errors into one line naming the store and what to do."""
        try:
            yield
        except RunStoreError:
            raise
        except ImportError as exc:
            raise RunStoreError(
                f"shared run store {self.url}: cannot {doing}: {exc}; install the store's fsspec backend "
                "(pip install 'quantmill[s3]' for s3://)"
            ) from None
        except _DENIED as exc:
            raise RunStoreError(
                f"shared run store {self.url}: access denied while trying to {doing} ({exc}); check the "
                "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or QUANTMILL_STORE_OPTIONS)"
            ) from None
        except FileNotFoundError as exc:
            raise RunStoreError(
                f"shared run store {self.url}: not found while trying to {doing} ({exc}); create the bucket "
                "or fix QUANTMILL_RUNS_DIR"
            ) from None
        except _UNREACHABLE as exc:
            raise RunStoreError(
                f"shared run store {self.url}: cannot {doing} ({type(exc).__name__}: {exc}); check the "
                "endpoint (AWS_ENDPOINT_URL or QUANTMILL_STORE_OPTIONS) and the network"
            ) from None

    # -- pull

    def pull(self, recipe: str) -> None:
        """Copy the recipe's run records and step cache from the store into the mirror (what changed only)."""
        prefix = self.remote(self.mirror / recipe)
        with self._talking(f"list {recipe}"):
            self.fs.invalidate_cache(prefix)
            listing = self.fs.find(prefix, detail=True)
        cache_results: list[_Item] = []
        cache_keys: list[_Item] = []
        run_files: list[_Item] = []
        records: list[_Item] = []
        for path, info in listing.items():
            parts = path[len(prefix) + 1 :].split("/")
            local = self.mirror / recipe / Path(*parts)
            if parts[0] == ".cache" and len(parts) == 3 and parts[1] in ("keys", "results"):
                if not local.exists():  # entries are never rewritten under a key
                    (cache_keys if parts[1] == "keys" else cache_results).append((path, local, info))
            elif RUN_ID.fullmatch(parts[0]) and parts[1:] in RECORD_FILES and _newer(info, local):
                (records if parts[-1] == RESULTS_FILE else run_files).append((path, local, info))
        # results before the keys naming them; what a run ran before its record
        self._download(cache_results + cache_keys + run_files + records, f"pull {recipe}", _placeable)

    def _download(self, items: list[_Item], doing: str, placeable: Callable[[Path, Path], bool] | None = None) -> None:
        """Fetch these files into a scratch folder in one batch, then move each into place in order
        (those ``placeable(mirror path, fetched file)`` accepts, when given)."""
        linked = [item for item in items if self._through_a_link(item[0])]
        for remote, _, _ in linked:
            log.warning("not using %s from the shared store: a link, or under one", remote)
        items = [item for item in items if item not in linked]
        if not items:
            return
        self.mirror.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pull-", dir=self.mirror) as scratch:
            temporary = [str(Path(scratch) / str(n)) for n in range(len(items))]
            with self._talking(doing):
                self.fs.get([remote for remote, _, _ in items], temporary)
            for (remote, local, info), fetched in zip(items, temporary, strict=True):
                if placeable is not None and not placeable(local, Path(fetched)):
                    log.warning("not using %s from the shared store: not a cache entry quantmill writes", remote)
                    continue
                local.parent.mkdir(parents=True, exist_ok=True)
                os.replace(fetched, local)
                stamp = _mtime(info)
                if stamp is not None:
                    os.utime(local, (stamp, stamp))  # unchanged files are not fetched again
        log.debug("%s: %d files", doing, len(items))

    # -- push

    def push_files(self, files: list[Path]) -> None:
        """Copy mirror files to the store, one after another in this order (the one that makes them visible last)."""
        for local in files:
            self._put(local)

    def _put(self, local: Path, remote: str | None = None) -> None:
        remote = remote or self.remote(local)
        self._refuse_links([remote])
        with self._talking(f"write {remote}"):
            if is_local(self.fs):  # write beside, then rename: readers see the old file or the new one
                scratch = f"{remote}.{uuid.uuid4().hex[:8]}.tmp"
                self.fs.put_file(str(local), scratch)
                self.fs.mv(scratch, remote)
            else:
                self.fs.put_file(str(local), remote)  # a single PUT is atomic

    def push_cache_entry(self, cache: Path, key: str, *, unless_present: bool = False) -> None:
        """Copy one step-cache entry to the store: the result file first, then the key record naming it.

        ``unless_present``: skip it when the store has the key record already (a cached step's entry).
        """
        record = cache / "keys" / key
        if not record.is_file():
            return  # the step persisted nothing (it failed)
        if unless_present and self._exists(self.remote(record), f"look up cache key {key[:12]}"):
            return
        storage_key = json.loads(record.read_text())["storage_key"]
        result = Path(storage_key) if Path(storage_key).is_absolute() else cache / "results" / storage_key
        self.push_files([result, record])

    def _exists(self, remote: str, doing: str) -> bool:
        with self._talking(doing):
            return bool(self.fs.exists(remote))

    # -- files outside every recipe (kept per model, for any recipe: sensitivity scans)

    def _outside_recipes(self, name: str) -> str:
        """The store path of ``name``, a path under its root in a folder no recipe can have (``.<folder>/…``)."""
        if not name.startswith(".") or ".." in PurePosixPath(name).parts:
            raise ValueError(f"{name!r} is not a file outside the store's recipes")
        self.fs  # noqa: B018 -- sets _root
        return f"{self._root}/{name}"

    def push_file(self, local: Path, name: str, *, unless_present: bool = False) -> None:
        """Copy a local file to ``name`` under the store's root (a write-once entry named by its key);
        ``unless_present``: skip it when the store has it already (made before the store was shared)."""
        remote = self._outside_recipes(name)
        if unless_present and self._exists(remote, f"look up {name}"):
            return
        self._put(local, remote)

    def fetch_file(self, name: str, local: Path) -> bool:
        """Copy ``name`` under the store's root to ``local`` (written whole or not at all); whether the store has it."""
        remote = self._outside_recipes(name)
        self._refuse_links([remote])
        local.parent.mkdir(parents=True, exist_ok=True)
        scratch = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.fetch")
        try:
            with self._talking(f"read {remote}"):
                try:
                    self.fs.get_file(remote, str(scratch))
                except FileNotFoundError:
                    return False
            os.replace(scratch, local)
        finally:
            scratch.unlink(missing_ok=True)
        return True

    def push_artifact(self, folder: Path, before_marker: Callable[[], None] = lambda: None) -> None:
        """Copy a finished artifact folder to the store: its files, then ``COMPLETE`` listing them.

        ``before_marker`` runs before the files are written and again just before the marker (the caller's
        lease check: a holder whose lock lapsed must neither overwrite the new holder's files nor make its
        own folder visible).
        """
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != COMPLETE_MARKER)
        remote = self.remote(folder)
        self._refuse_links([remote, *(self.remote(f) for f in files)])
        before_marker()
        with self._talking(f"write {remote}"):
            if files:
                self.fs.put([str(f) for f in files], [self.remote(f) for f in files])
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
        marker["files"] = {f.relative_to(folder).as_posix(): f.stat().st_size for f in files}
        before_marker()
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as manifest:
            json.dump(marker, manifest, indent=2, sort_keys=True)
        try:
            self._put(Path(manifest.name), f"{remote}/{COMPLETE_MARKER}")
        finally:
            os.unlink(manifest.name)

    def has_artifact(self, folder: Path) -> bool:
        """Whether the store has this artifact folder complete (its ``COMPLETE`` marker)."""
        remote = self.remote(folder)
        with self._talking(f"read {remote}"):
            try:
                self.fs.cat_file(f"{remote}/{COMPLETE_MARKER}")
            except FileNotFoundError:
                return False
        return True

    # -- artifacts, lazily

    def fetch_artifact(self, folder: Path) -> Path:
        """The artifact folder in this mirror, downloaded first when only the store has it complete.

        Returns the local folder (complete), or ``folder`` unchanged when neither has it complete.
        """
        local = self.localize(folder)
        if (local / COMPLETE_MARKER).is_file() or not self.holds(local):
            return local if self.holds(local) else folder
        remote = self.remote(local)
        with self._talking(f"read {remote}"):
            try:
                marker = self.fs.cat_file(f"{remote}/{COMPLETE_MARKER}")
            except FileNotFoundError:
                return folder  # not finished anywhere: absent
        files = _listed_files(marker, f"{self.url}: {remote}/{COMPLETE_MARKER}")
        self._refuse_links([f"{remote}/{COMPLETE_MARKER}"] + [f"{remote}/{n}" for n in files])
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.fetch-", dir=local.parent))
        try:
            names = sorted(files)
            with self._talking(f"read {remote}"):
                if names:
                    self.fs.get([f"{remote}/{n}" for n in names], [str(staging / n) for n in names])
            wrong = [n for n in names if (staging / n).stat().st_size != files[n]]
            if wrong:
                raise RunStoreError(f"shared run store {self.url}: {remote} changed while being read ({wrong[0]})")
            (staging / COMPLETE_MARKER).write_bytes(marker)
            if local.exists() and not (local / COMPLETE_MARKER).is_file():
                shutil.rmtree(local)  # an attempt that never completed
            with contextlib.suppress(OSError):  # another process put it in place meanwhile: theirs is as good
                staging.rename(local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("fetched %s from the shared store", local.name)
        return local

    # -- locks

    def lease(self, local: Path, label: str) -> Lease:
        """The store-wide lock on a mirror path (its lease object is ``.<name>.lease`` beside it in the store)."""
        path = self.remote(local)
        parent, name = path.rsplit("/", 1)
        with self._talking("open its locks"):
            objects = objects_for(self.fs)
        return _TalkingLease(self, objects, f"{parent}/.{name}.lease", self.lease_s, label)


class _TalkingLease(Lease):
    """A lease whose store errors are reported like the store's others."""

    def __init__(self, store: SharedStore, *args: Any) -> None:
        super().__init__(*args)
        self.store = store

    def acquire(self) -> None:
        with self.store._talking(f"lock {self.label}"):
            super().acquire()


def _placeable(local: Path, fetched: Path) -> bool:
    """A pulled step-cache key record is used only when it and the result it names (pulled just
    before it, or already here) are plain JSON entries (:mod:`quantmill.cacheentry`): whoever can
    write the bucket could otherwise make every worker that pulls the entry unpickle it."""
    if local.parent.parent.name != ".cache":
        return True
    if local.parent.name == "results":  # a key record of this machine may name it: Prefect's JSON decoder imports
        try:  # the class an {"__class__": …} names
            return not holds_an_encoded_object(json.loads(fetched.read_text()))
        except (OSError, ValueError):
            return False
    if local.parent.name != "keys":
        return True
    try:
        record = json.loads(fetched.read_text())
        storage_key = record["storage_key"] if isinstance(record, dict) else None
        result_file = local.parent.parent / "results" / str(storage_key)
        result = json.loads(result_file.read_text()) if plain_name(str(storage_key)) else None
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return plain_json_entry(record, result)


def _mtime(info: dict) -> float | None:
    """A listing entry's modification time in seconds (S3: ``LastModified``; local: ``mtime``)."""
    stamp = info.get("LastModified", info.get("mtime"))
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return float(stamp) if stamp is not None else None


def _newer(info: dict, local: Path) -> bool:
    """Whether the store's file should replace the local one: absent here, or written in the store later.

    A pulled file keeps the store's time (:meth:`SharedStore._download`), so a later time there is a later
    version; the same time with another size is one written within the same second (S3 keeps whole seconds).
    A file this machine wrote after the store's copy is kept: a record whose last push failed is not
    replaced by the stale one. Without times, another size means another version."""
    try:
        stat = local.stat()
    except FileNotFoundError:
        return True
    stamp = _mtime(info)
    resized = stat.st_size != info.get("size")
    if stamp is None:
        return resized
    return stamp > stat.st_mtime + 1e-3 or (abs(stamp - stat.st_mtime) <= 1e-3 and resized)


#: an artifact folder's name: ``<variant id>-<12 hex of its quantize key>`` (quantmill.pipeline.RecipeRun.artifact_dir)
ARTIFACT_FOLDER = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}-[0-9a-f]{12}")


def _listed_files(marker: bytes, where: str) -> dict[str, int]:
    """The files a ``COMPLETE`` marker in the store lists, refused unless each is a plain relative path inside
    the folder: the marker comes from the store, which any worker (or code running on one) can write."""
    try:
        files = json.loads(marker)["files"]
    except (ValueError, KeyError, TypeError):
        raise RunStoreError(f"shared run store {where} is not a marker quantmill wrote (no file list)") from None
    if not isinstance(files, dict):
        raise RunStoreError(f"shared run store {where} is not a marker quantmill wrote (no file list)")
    for name, size in files.items():
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if not parts or name.startswith("/") or "\\" in name or any(p in ("..", ".", "") for p in parts):
            raise RunStoreError(f"shared run store {where} lists {name!r}, which is not a file inside the folder")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RunStoreError(f"shared run store {where} gives {name!r} no size")
    return files


def configured() -> SharedStore | None:
    """The shared store ``QUANTMILL_RUNS_DIR`` names, or None when the store is a local folder."""
    settings = get_settings()
    if settings.shared_store is None:
        return None
    return _store(settings.shared_store, settings.runs_dir, settings.store_lease_s, json.dumps(settings.store_options))


@cache
def _store(url: str, mirror: Path, lease_s: float, options: str) -> SharedStore:
    return SharedStore(url, mirror, lease_s, json.loads(options))


def store_holding(path: Path) -> SharedStore | None:
    """The shared store whose mirror ``path`` is in, or None (a local store, or a path outside the mirror)."""
    store = configured()
    return store if store is not None and store.holds(path) else None
