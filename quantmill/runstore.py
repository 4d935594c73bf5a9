"""The run store: where a recipe's runs, quantized variants and cached step results live on disk.

Layout (``QUANTMILL_RUNS_DIR``, default ``./runs``)::

    runs/<recipe>/
        <run-id>/                    one run (RunStore.create_run)
            recipe.yaml              the recipe text exactly as run
            plan.json                the plan (quantmill.plan.Plan.to_dict)
            results.json             the results, with "schema_version", rewritten as the run goes
            report.md, report.html   the report (quantmill.report.render)
            quality_vs_*.png         its plots, when there are numbers to plot
            logs/, variants/         created empty; nothing writes into them yet
        artifacts/                   quantized variants, shared by the recipe's runs (quantmill.quantize)
            <variant>-<key>/         a finished variant: its files, quantmill.json, COMPLETE written last
            .<variant>-<key>.partial one being written; the next attempt removes it
            .<variant>-<key>.lock    held while one process makes that variant
            .shared/                 intermediates the variants share (GGUF conversions, importance matrices)
        .cache/                      the flow's step cache: keys/ (one record per cache key), results/

With ``QUANTMILL_RUNS_DIR=<url>`` the store is shared (``quantmill.sharedstore``): this layout is
then the store's, and the root here is its local mirror. A RunStore on the mirror pulls a recipe's
run records and step cache from the store before it lists its runs (and when a run starts), and a
run pushes its files as it writes them.

Every file the store writes is written atomically (temporary file in the same
folder, fsync, rename), so a crash leaves either the old or the new file, never
half of one. A variant folder counts as finished only once its ``COMPLETE`` marker exists.
Every text file it writes (results, reports, the recipe and plan copies) has the values
of known secrets masked first (:func:`quantmill.redact.redact`): an error message that
quoted a token is never written with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantmill.errors import RunStoreError
from quantmill.record import RunRecord, parse_record
from quantmill.redact import redact
from quantmill.trust.files import open_no_follow

if TYPE_CHECKING:
    from quantmill.sharedstore import SharedStore

COMPLETE_MARKER = "COMPLETE"


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An inter-process lock on ``path`` (created if missing), held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_no_follow(path) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def one_of_locks(paths: list[Path]) -> Iterator[Path]:
    """Hold whichever of these inter-process locks is free first (a counting semaphore of files).

    The kernel drops a lock when its process dies, so a crash never keeps a slot.
    """
    with one_of_lock_groups([[path] for path in paths]) as index:
        yield paths[index]


@contextlib.contextmanager
def one_of_lock_groups(groups: list[list[Path]]) -> Iterator[int]:
    """Hold every lock of whichever group has all its locks free first; yields the group's index.

    A group is taken whole or not at all (never waiting while holding part of one), so holders of
    overlapping groups cannot deadlock. The kernel drops a lock when its process dies.
    """
    groups[0][0].parent.mkdir(parents=True, exist_ok=True)
    delay = 0.02
    while True:
        for index, group in enumerate(groups):
            with contextlib.ExitStack() as held:
                if all(_try_lock(path, held) for path in group):
                    yield index
                    return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _try_lock(path: Path, held: contextlib.ExitStack) -> bool:
    """Take the lock on ``path`` without waiting, released when ``held`` closes; False when another holds it."""
    handle = open_no_follow(path)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    held.callback(handle.close)
    held.callback(fcntl.flock, handle, fcntl.LOCK_UN)
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RunStoreError(f"could not write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RunStoreError(f"could not write {path}: {exc.strerror or exc}") from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, with the values of known secrets masked."""
    atomic_write_bytes(path, redact(text).encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunStoreError(f"{path} does not exist") from None
    except ValueError as exc:
        raise RunStoreError(f"{path} is not valid JSON: {exc}") from None


_last_stamp = datetime.min.replace(tzinfo=UTC)
_stamp_lock = threading.Lock()
_created_here: set[Path] = set()  # run folders RunStore.create_run made in this process


#: what :func:`new_run_id` makes (and, without microseconds, what earlier versions made)
RUN_ID = re.compile(r"\d{8}T\d{6}(\.\d{6})?Z-[0-9a-f]+")


def created_in_this_process(run: Run) -> bool:
    """Whether this process made ``run``'s folder: another process's run of the same recipe
    (a second terminal, an overlapping cron job, a worker whose run a shared store brought
    in) may appear in the store while this one starts."""
    with _stamp_lock:
        return run.path in _created_here


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: ``20261127T083000.123456Z-1a2b3c``.

    "The run before this one" (regressions) is found by sorting ids, so they carry
    microseconds and strictly increase within a process: with whole seconds, two runs
    started within one second were ordered by their random suffix.
    """
    global _last_stamp
    if now is None:
        with _stamp_lock:
            now = _last_stamp = max(datetime.now(UTC), _last_stamp + timedelta(microseconds=1))
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Run:
    """One run's folder in the store (``shared``: the shared store it is pushed to, if any)."""

    path: Path
    shared: SharedStore | None = field(default=None, compare=False, repr=False)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    def variant_dir(self, variant_id: str) -> Path:
        return self.path / "variants" / variant_id

    def is_complete(self, variant_id: str) -> bool:
        return (self.variant_dir(variant_id) / COMPLETE_MARKER).is_file()

    def mark_complete(self, variant_id: str, details: dict[str, Any] | None = None) -> None:
        atomic_write_json(self.variant_dir(variant_id) / COMPLETE_MARKER, details or {})

    def read_record(self) -> RunRecord:
        """The run record in ``results.json`` (RunStoreError when missing, unreadable or of an unknown version)."""
        return parse_record(read_json(self.results_path), self.results_path)

    def write_record(self, record: RunRecord) -> None:
        atomic_write_json(self.results_path, record.to_json())
        self.push([self.results_path])

    def push(self, files: list[Path] | None = None) -> None:
        """Copy these files of the run (default: all, ``results.json`` last) to the shared store, if any."""
        if self.shared is None:
            return
        if files is None:
            every = sorted(f for f in self.path.rglob("*") if f.is_file() and not f.name.startswith("."))
            files = [f for f in every if f != self.results_path] + [f for f in every if f == self.results_path]
        self.shared.push_files(files)


class RunStore:
    """All runs under one root folder."""

    def __init__(self, root: Path) -> None:
        from quantmill.sharedstore import store_holding

        self.root = Path(root)
        self.shared = store_holding(self.root)
        self._pulled: set[str] = set()

    def pull(self, recipe_name: str) -> None:
        """Bring the recipe's runs and step cache from the shared store into this root (no-op for a local store)."""
        if self.shared is not None:
            self.shared.pull(recipe_name)
            self._pulled.add(recipe_name)

    def recipe_dir(self, recipe_name: str) -> Path:
        return self.root / recipe_name

    def create_run(self, recipe_name: str, recipe_text: str, plan: dict[str, Any]) -> Run:
        """A new run folder with the recipe and plan written; ids never collide (mkdir is atomic)."""
        parent = self.recipe_dir(recipe_name)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            while True:
                path = parent / new_run_id()
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    continue
        except OSError as exc:
            raise RunStoreError(f"cannot create a run under {parent}: {exc.strerror or exc}") from exc
        (path / "logs").mkdir()
        (path / "variants").mkdir()
        with _stamp_lock:
            _created_here.add(path)
        run = Run(path, self.shared)
        atomic_write_text(path / "recipe.yaml", recipe_text)
        atomic_write_json(path / "plan.json", plan)
        run.push([path / "recipe.yaml", path / "plan.json"])
        return run

    def runs(self, recipe_name: str) -> list[Run]:
        """Runs of a recipe, oldest first: the folders named by a run id (the recipe's folder also
        holds ``artifacts/`` and ``.cache/``, which are not runs). A shared store's are pulled first, once."""
        if recipe_name not in self._pulled:
            self.pull(recipe_name)
        parent = self.recipe_dir(recipe_name)
        if not parent.is_dir():
            return []
        return [Run(p, self.shared) for p in sorted(parent.iterdir()) if p.is_dir() and RUN_ID.fullmatch(p.name)]

    def latest(self, recipe_name: str) -> Run | None:
        runs = self.runs(recipe_name)
        return runs[-1] if runs else None
