"""Bytes in and out: what an upload reads from (a path, bytes or an open binary file), in chunks that
report progress, and a download written to disk while its SHA-256 is computed.

Pure enough to share: the sync and async clients differ only in how they move the chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from maas_client.errors import ChecksumMismatch

CHUNK = 1 << 20

FileSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
# called with (bytes sent so far, total bytes or None when unknown)
Progress = Callable[[int, "int | None"], None]


@dataclass
class UploadSource:
    """What an upload sends: a name, a size when known, and a way to read it from the start."""

    filename: str
    size: int | None
    _open: Callable[[], IO[bytes]] | None = None
    _data: bytes | None = None
    _stream: IO[bytes] | None = None

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again (a path or bytes; not a stream already read)."""
        return self._stream is None

    def chunks(self, progress: Progress | None = None) -> Iterator[bytes]:
        """The content from the start, ``CHUNK`` bytes at a time, calling ``progress`` after each."""
        sent = 0
        if progress:
            progress(0, self.size)
        for chunk in self._raw_chunks():
            sent += len(chunk)
            yield chunk
            if progress:
                progress(sent, self.size)

    def _raw_chunks(self) -> Iterator[bytes]:
        if self._data is not None:
            view = memoryview(self._data)
            for start in range(0, len(view), CHUNK):
                yield bytes(view[start : start + CHUNK])
            return
        if self._open is not None:
            with self._open() as handle:
                yield from iter(lambda: handle.read(CHUNK), b"")
            return
        assert self._stream is not None
        yield from iter(lambda: self._stream.read(CHUNK), b"")  # type: ignore[union-attr]


def upload_source(file: FileSource, filename: str | None = None) -> UploadSource:
    """An upload's source: ``filename`` defaults to the path's (or the file object's) name."""
    if isinstance(file, (bytes, bytearray, memoryview)):
        if not filename:
            raise ValueError("uploading bytes needs a filename (its extension says the format)")
        data = bytes(file)
        return UploadSource(filename, len(data), _data=data)
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        return UploadSource(filename or path.name, path.stat().st_size, _open=lambda: path.open("rb"))
    name = filename or os.path.basename(str(getattr(file, "name", "") or ""))
    if not name:
        raise ValueError("uploading a file object without a name needs a filename")
    size = None
    with contextlib.suppress(AttributeError, OSError, ValueError):  # a pipe or a socket: sent without a length
        if file.seekable():
            start = file.tell()
            size = file.seek(0, os.SEEK_END) - start
            file.seek(start)
    return UploadSource(name, size, _stream=file)


class ChecksummedFile:
    """A file being written whose SHA-256 is checked at the end; on a mismatch (or any error) the file is
    removed, so a path that exists after a download holds exactly the expected bytes.

        with ChecksummedFile(path, expected_sha256) as out:
            for chunk in chunks:
                out.write(chunk)
    """

    def __init__(self, path: str | os.PathLike[str], expected_sha256: str | None):
        self.path = Path(path)
        self.expected = expected_sha256
        self._partial = self.path.with_name(self.path.name + ".part")
        self._hash = hashlib.sha256()
        self.bytes = 0

    def __enter__(self) -> ChecksummedFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self._partial.open("wb")
        return self

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)
        self._hash.update(chunk)
        self.bytes += len(chunk)

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self._handle.close()
        if error is not None:
            self._partial.unlink(missing_ok=True)
            return
        digest = self._hash.hexdigest()
        if self.expected is not None and digest != self.expected:
            self._partial.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{self.path.name}: sha256 {digest} but the API recorded {self.expected}")
        self._partial.replace(self.path)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()
