"""A file's sha256 is read once while the file is unchanged, and read again after any write."""

from __future__ import annotations

import hashlib
import os

import pytest

from quantmill import filehash
from quantmill.settings import get_settings


@pytest.fixture
def cache(tmp_path, monkeypatch, request):
    monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # later tests read the environment as it was
    monkeypatch.setattr(filehash, "RACY_SECONDS", 0)  # the files here were written a moment ago
    return tmp_path / "cache" / "file-hashes"


def _never_read(path):
    raise AssertionError(f"read {path} again")


@pytest.mark.fast
def test_an_unchanged_file_is_read_once(cache, tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    assert filehash.sha256_of(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setattr(filehash, "read_sha256", _never_read)
    assert filehash.sha256_of(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    link = tmp_path / "link.safetensors"
    link.symlink_to(weights)  # a Hub cache snapshot links to its blobs: the same file, the same entry
    assert filehash.sha256_of(link) == hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.fast
def test_a_rewrite_with_the_same_size_and_restored_mtime_is_read_again(cache, tmp_path):
    """What ``rsync -t`` or a careless copy does: same path, size and modification time, other bytes."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    before = weights.stat()
    first = filehash.sha256_of(weights)
    weights.write_bytes(b"b" * 4096)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_mtime_ns == before.st_mtime_ns and weights.stat().st_size == before.st_size
    assert filehash.sha256_of(weights) == hashlib.sha256(b"b" * 4096).hexdigest() != first


@pytest.mark.fast
def test_a_damaged_entry_is_read_again(cache, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    filehash.sha256_of(weights)
    (entry,) = cache.iterdir()
    entry.write_text("not a digest")
    assert filehash.sha256_of(weights) == hashlib.sha256(b"weights").hexdigest()


@pytest.mark.fast
def test_a_file_written_a_moment_ago_is_not_kept(cache, tmp_path, monkeypatch):
    """Its next rewrite may fall within the same timestamp tick: the digest is read again next time."""
    monkeypatch.setattr(filehash, "RACY_SECONDS", 60)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    assert filehash.sha256_of(weights) == hashlib.sha256(b"weights").hexdigest()
    assert not cache.exists() or not any(cache.iterdir())
