"""Locks that work across machines: a lease is an object in the shared store, renewed while held.

A lease object names its holder and when it expires (the holder's wall clock: the machines'
clocks must agree to well within a lease, as NTP keeps them). It is taken by creating the
object only if it is absent, which the store decides atomically (S3's conditional PUT,
``If-None-Match: *``; ``O_EXCL`` on a local or mounted folder), renewed by a heartbeat thread
that replaces it only if it is still the version the holder wrote (``If-Match``), and deleted
when released. A holder that dies (kill -9, a lost machine) stops renewing: once its lease
expires the next taker replaces it, again only if nobody changed it meanwhile, so two takers
of one expired lease cannot both win.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from quantmill.errors import RunStoreError

log = logging.getLogger(__name__)


class LeaseLost(RunStoreError):
    """The lease expired and another holder took it: this one must not publish what it made."""


class ConditionalObjects(Protocol):
    """The three atomic operations a lease needs from a store; versions are opaque strings (S3: ETags)."""

    def create(self, path: str, data: bytes) -> str | None:
        """Write ``data`` only if ``path`` is absent; its version, or None when it exists."""

    def replace(self, path: str, data: bytes, version: str) -> str | None:
        """Overwrite only if ``path`` is still at ``version``; the new version, or None when it changed or is gone."""

    def read(self, path: str) -> tuple[bytes, str] | None:
        """Content and version read together (one request), or None when absent."""

    def delete(self, path: str, version: str) -> None:
        """Delete ``path`` if it is still at ``version``."""


class S3Objects:
    """Conditional writes on S3 (and S3-compatible servers that honour ``If-None-Match``/``If-Match``)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs  # an s3fs.S3FileSystem

    def _bucket_key(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return bucket, key

    def _put(self, path: str, data: bytes, **condition: str) -> str | None:
        bucket, key = self._bucket_key(path)
        try:
            return self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        except FileExistsError:  # s3fs's translation of a failed If-None-Match
            return None
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise

    def create(self, path: str, data: bytes) -> str | None:
        return self._put(path, data, IfNoneMatch="*")

    def replace(self, path: str, data: bytes, version: str) -> str | None:
        try:
            return self._put(path, data, IfMatch=version)
        except FileNotFoundError:  # deleted meanwhile: not ours to recreate here
            return None

    def read(self, path: str) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        bucket, key = self._bucket_key(path)

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def delete(self, path: str, version: str) -> None:
        bucket, key = self._bucket_key(path)
        with contextlib.suppress(FileNotFoundError):
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise


def _precondition_failed(exc: OSError) -> bool:
    """Whether S3 refused a conditional write: 412 (the condition did not hold) or 409 (a concurrent
    conditional write won); s3fs turns those into a plain OSError whose cause is botocore's error."""
    cause = exc.__cause__
    code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class LocalObjects:
    """The same operations on a local or mounted folder (``file://`` stores): each under an ``flock`` of a
    guard file beside the object, so a read never sees half a write and a replace compares and swaps."""

    @contextlib.contextmanager
    def _guarded(self, path: str) -> Iterator[Path]:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_name(target.name + ".guard"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                yield target
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    @staticmethod
    def _write(target: Path, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        return hashlib.sha256(data).hexdigest()

    def create(self, path: str, data: bytes) -> str | None:
        with self._guarded(path) as target:
            return None if target.exists() else self._write(target, data)

    def replace(self, path: str, data: bytes, version: str) -> str | None:
        with self._guarded(path) as target:
            current = self._version(target)
            return self._write(target, data) if current == version else None

    def read(self, path: str) -> tuple[bytes, str] | None:
        with self._guarded(path) as target:
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                return None
            return data, hashlib.sha256(data).hexdigest()

    def delete(self, path: str, version: str) -> None:
        with self._guarded(path) as target:
            if self._version(target) == version:
                target.unlink()

    @staticmethod
    def _version(target: Path) -> str | None:
        try:
            return hashlib.sha256(target.read_bytes()).hexdigest()
        except FileNotFoundError:
            return None


def protocols(fs: Any) -> set[str]:
    """The names an fsspec file system answers to (``s3``/``s3a``, ``file``/``local`` …)."""
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is a local or mounted folder (``file://``), not an object store."""
    return bool(protocols(fs) & {"file", "local"})


def objects_for(fs: Any) -> ConditionalObjects:
    """The conditional operations of an fsspec file system (RunStoreError for one that has none we use)."""
    if protocols(fs) & {"s3", "s3a"}:
        return S3Objects(fs)
    if is_local(fs):
        return LocalObjects()
    raise RunStoreError(
        f"locks across machines need a store with conditional writes: s3:// or file:// (got {sorted(protocols(fs))[0]}://)"
    )


class Lease:
    """A lease on ``path``, held in a ``with`` block; a heartbeat renews it every third of ``lease_s``.

    Args:
        objects: the store's conditional operations.
        path: the lease object.
        lease_s: how long the lease lasts without a renewal (``QUANTMILL_STORE_LEASE_S``).
        label: what it guards, for messages.
    """

    def __init__(self, objects: ConditionalObjects, path: str, lease_s: float, label: str) -> None:
        self.objects, self.path, self.lease_s, self.label = objects, path, lease_s, label
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._version: str | None = None
        self._lost = threading.Event()
        self._renewed_at = 0.0  # when the store last accepted our lease (time.monotonic)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _content(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires": time.time() + self.lease_s}).encode()

    def acquire(self) -> None:
        """Wait until the lease is free or expired, then take it."""
        delay = min(0.05, self.lease_s / 10)
        while True:
            version = self.objects.create(self.path, self._content())
            if version is None:
                version = self._take_over_if_expired()
            if version is not None:
                self._version = version
                self._renewed_at = time.monotonic()
                self._heartbeat = threading.Thread(target=self._renew, name=f"lease {self.label}", daemon=True)
                self._heartbeat.start()
                return
            time.sleep(delay)
            delay = min(delay * 2, self.lease_s / 3, 5.0)

    def _take_over_if_expired(self) -> str | None:
        current = self.objects.read(self.path)
        if current is None:
            return None  # released meanwhile: the next create takes it
        data, version = current
        try:
            previous = json.loads(data)
            expires = float(previous["expires"])
        except (ValueError, KeyError, TypeError):
            previous, expires = {}, 0.0  # an unreadable lease protects nothing
        if expires > time.time():
            return None
        taken = self.objects.replace(self.path, self._content(), version)
        if taken is not None:
            log.warning("took over the expired lock on %s from %s", self.label, previous.get("holder", "?"))
        return taken

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            assert self._version is not None
            try:
                version = self.objects.replace(self.path, self._content(), self._version)
            except Exception as exc:  # noqa: BLE001 -- a network hiccup: try again at the next beat
                log.warning("could not renew the lock on %s (%s); retrying", self.label, exc)
                continue
            if version is None:
                log.error("lost the lock on %s: it expired and another worker took it", self.label)
                self._lost.set()
                return
            self._version = version
            self._renewed_at = time.monotonic()

    def check(self) -> None:
        """Raise LeaseLost when another holder took the lease, or may have: when no renewal reached the store
        for a whole lease length (a network outage), it expired there (call before publishing what it guarded)."""
        if self._lost.is_set():
            raise LeaseLost(f"lost the lock on {self.label}: it expired and another worker took it over")
        if time.monotonic() - self._renewed_at > self.lease_s:
            self._lost.set()
            raise LeaseLost(f"lost the lock on {self.label}: no renewal reached the store for {self.lease_s:g} s")

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._version is not None and not self._lost.is_set():
            with contextlib.suppress(Exception):  # an expired lease is taken over anyway
                self.objects.delete(self.path, self._version)
        self._version = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
