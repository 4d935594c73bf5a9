"""A file's sha256, read once while the file is unchanged.

Cache keys pin a local model by a hash of its files, and publishing compares the
files it would upload with those already there: on a real model both read tens
of GB on every run, most of an unchanged rerun. A digest is kept under
``$QUANTMILL_CACHE_DIR/file-hashes/``, keyed as git's index keys a file: its path,
device, inode, size, and modification and change times in nanoseconds. Writing
the file changes its ctime, which no tool can set back (``touch``/``rsync -t``
restore mtime only), so a stale digest needs a change that leaves every one of
these equal. As git does with "racily clean" entries, a file changed less than
:data:`RACY_SECONDS` before it was read is not kept: on file systems whose
timestamps move in coarse ticks, a same-size rewrite within one tick would
otherwise keep every field equal.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from quantmill.errors import QuantmillError
from quantmill.runstore import atomic_write_bytes
from quantmill.settings import get_settings

#: a file changed this recently when it was read may still change within the same timestamp tick
RACY_SECONDS = 2.0


def read_sha256(path: Path) -> str:
    """The hex sha256 of the file's bytes, read now."""
    with path.open("rb") as fh:  # streamed: a file can be larger than memory
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_of(path: Path) -> str:
    """The hex sha256 of the file's bytes, from the cache while the file is unchanged."""
    real = Path(os.path.realpath(path))
    stat = real.stat()
    key = f"{real}\0{stat.st_dev}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}"
    kept = get_settings().cache_dir / "file-hashes" / hashlib.sha256(key.encode()).hexdigest()
    with contextlib.suppress(OSError, UnicodeDecodeError):
        known = kept.read_text().strip()
        if len(known) == 64:
            return known
    started = time.time_ns()
    digest = read_sha256(real)
    settled = started - max(stat.st_mtime_ns, stat.st_ctime_ns) >= RACY_SECONDS * 1e9
    if settled and real.stat().st_ctime_ns == stat.st_ctime_ns:  # and not written while it was read
        with contextlib.suppress(QuantmillError):  # an unwritable cache only costs the next read
            atomic_write_bytes(kept, digest.encode())
    return digest
