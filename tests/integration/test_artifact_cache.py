"""A model server's local cache of model files, in front of the real S3 store: a second fetch does not
go to S3, a cached file that no longer matches its sha256 is fetched again (or dropped by the check
that runs while a model server already opens it), the cache stays under its bound by dropping the
least recently used files, and a file under the wrong sha256 is never kept."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest

from core.artifact_store import ArtifactStore, ChecksumMismatch
from serving.artifact_cache import ArtifactCache


class CountingStore:
    """The real store, counting downloads."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.downloads = 0

    def download_file(self, key: str, path: Path, expected_sha256: str | None = None) -> object:
        self.downloads += 1
        return self.store.download_file(key, path, expected_sha256=expected_sha256)


def stored(settings, size: int) -> tuple[str, str, bytes]:
    data = secrets.token_bytes(size)
    key = f"tests/cache/{secrets.token_hex(6)}.onnx"
    ArtifactStore(settings).upload_chunks(key, [data])
    return key, hashlib.sha256(data).hexdigest(), data


def test_a_second_fetch_is_served_from_the_cache_and_checked(settings, tmp_path):
    store = CountingStore(ArtifactStore(settings))
    cache = ArtifactCache(store, tmp_path / "cache", 1 << 20)
    key, sha, data = stored(settings, 1000)
    path, hit = cache.fetch(key, sha)
    assert (hit, path.read_bytes(), store.downloads) == (False, data, 1)
    path, hit = cache.fetch(key, sha)
    assert (hit, path.read_bytes(), store.downloads) == (True, data, 1)
    assert cache.holds(sha)

    path.write_bytes(b"rotten" + data[6:])  # the disk changed under it: the sha256 says so
    path, hit = cache.fetch(key, sha)
    assert (hit, path.read_bytes(), store.downloads) == (False, data, 2)

    # what load_model calls: the file at the path it asks for, from the cache
    target = tmp_path / "model.onnx"
    assert cache.download_file(key, target, expected_sha256=sha) is True
    assert target.read_bytes() == data and store.downloads == 2


def test_the_least_recently_used_files_go_when_the_cache_is_full(settings, tmp_path):
    cache = ArtifactCache(ArtifactStore(settings), tmp_path / "cache", 2500)
    files = [stored(settings, 1000) for _ in range(3)]
    first, _ = cache.fetch(*files[0][:2])
    second, _ = cache.fetch(*files[1][:2])
    os.utime(first, (1, 1))  # the first is the least recently used
    third, _ = cache.fetch(*files[2][:2])
    assert not first.exists() and second.exists() and third.exists()
    assert cache.size() <= 2500


def test_a_file_that_does_not_match_its_recorded_sha256_is_not_kept(settings, tmp_path):
    cache = ArtifactCache(ArtifactStore(settings), tmp_path / "cache", 1 << 20)
    key, _, _ = stored(settings, 100)
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(ChecksumMismatch):
        cache.fetch(key, wrong)
    assert not cache.holds(wrong) and cache.size() == 0


def test_a_file_linked_before_its_check_is_dropped_when_the_check_fails(settings, tmp_path):
    cache = ArtifactCache(ArtifactStore(settings), tmp_path / "cache", 1 << 20)
    key, sha, data = stored(settings, 1000)
    cache.fetch(key, sha)
    assert cache.link_unchecked(sha, tmp_path / "fast.onnx") and (tmp_path / "fast.onnx").read_bytes() == data
    assert cache.verify(sha)
    (tmp_path / "cache" / sha).write_bytes(b"rotten")
    assert cache.link_unchecked(sha, tmp_path / "rotten.onnx")  # linked at once, unchecked...
    assert not cache.verify(sha) and not cache.holds(sha)  # ...and the check drops it
    assert not cache.link_unchecked(sha, tmp_path / "gone.onnx")
