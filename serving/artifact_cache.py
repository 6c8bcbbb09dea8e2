"""A model server's local cache of model files, so that loading a version again does not go back to S3.

Files are named by their sha256 (content addressed: two versions with the same bytes share one
file) under ``model_cache_path``; a file is checked against its sha256 each time it is used, and
one that no longer matches is dropped and downloaded again. The cache stays under
``model_cache_bytes``: after each download, the least recently used files go (a file's mtime is
touched when it is used). Several processes may share the folder: a download goes to a temporary
name and is renamed into place, so a reader never sees half a file. ``model_cache_bytes`` 0
turns the cache off (every load downloads into a temporary folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from core.onnx_model import ModelFiles

log = logging.getLogger("maas.model_server")

CHUNK = 1 << 20


class ArtifactCache:
    def __init__(self, store: ModelFiles, folder: Path, max_bytes: int) -> None:
        self.store = store
        self.folder = folder
        self.max_bytes = max_bytes

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def holds(self, sha256: str) -> bool:
        """Whether the file is cached (not checked: :meth:`fetch` checks it)."""
        return self.enabled and (self.folder / sha256).exists()

    def link_unchecked(self, sha256: str, path: Path) -> bool:
        """Put the cached file with ``sha256`` at ``path`` without checking it (the caller checks it with
        :meth:`verify` meanwhile, before it trusts what it made of the file); False when not cached."""
        if not self.holds(sha256):
            return False
        try:
            _link(self.folder / sha256, path)
        except FileNotFoundError:  # evicted just now
            return False
        with contextlib.suppress(OSError):
            os.utime(self.folder / sha256)
        return True

    def verify(self, sha256: str) -> bool:
        """Whether the cached file still has its sha256; one that does not is dropped."""
        path = self.folder / sha256
        try:
            if file_sha256(path) == sha256:
                return True
        except FileNotFoundError:
            return False
        log.warning("cached model file %s does not match its sha256: dropped", path)
        with contextlib.suppress(OSError):
            path.unlink()
        return False

    def download_file(self, key: str, path: Path, expected_sha256: str | None = None) -> bool:
        """``ArtifactStore.download_file`` through the cache (``core.onnx_model.ModelFiles``): the file at
        ``path``, linked (or copied) from the cache; True when it was cached already."""
        if not self.enabled or expected_sha256 is None:
            self.store.download_file(key, path, expected_sha256=expected_sha256)
            return False
        cached, hit = self.fetch(key, expected_sha256)
        _link(cached, path)
        return hit

    def fetch(self, storage_key: str, sha256: str) -> tuple[Path, bool]:
        """A local path holding the file with ``sha256`` (downloading it if needed), and whether it was cached.

        Only for an enabled cache; the file stays until evicted, so the caller opens it at once.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / sha256
        if path.exists():
            if file_sha256(path) == sha256:
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used
                return path, True
            log.warning("cached model file %s does not match its sha256: downloading it again", path)
            with contextlib.suppress(OSError):
                path.unlink()
        fd, partial = tempfile.mkstemp(prefix=f".{sha256[:16]}-", dir=self.folder)
        os.close(fd)
        try:
            self.store.download_file(storage_key, Path(partial), expected_sha256=sha256)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        self.trim(keep=path)
        return path, False

    def trim(self, keep: Path | None = None) -> None:
        """Delete least recently used files until the cache is within its bound (``keep`` stays)."""
        entries = []
        for entry in self.folder.iterdir():
            if entry.name.startswith("."):
                continue  # a download under way
            with contextlib.suppress(OSError):
                stat = entry.stat()
                entries.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            with contextlib.suppress(OSError):
                entry.unlink()
                total -= size

    def size(self) -> int:
        """Bytes held now."""
        if not self.folder.exists():
            return 0
        return sum(e.stat().st_size for e in self.folder.iterdir() if not e.name.startswith("."))


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:  # another filesystem
        shutil.copyfile(source, target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
