"""Uploads read from a path, bytes or a file object with progress; a download that does not match its
recorded sha256 leaves no file behind."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from maas_client.errors import ChecksumMismatch
from maas_client.transfers import CHUNK, ChecksummedFile, upload_source


def test_a_path_bytes_and_a_file_object_upload_the_same_chunks_with_progress(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK // 128)  # two chunks
    (tmp_path / "d.npz").write_bytes(data)
    with (tmp_path / "d.npz").open("rb") as handle:
        sources = [upload_source(tmp_path / "d.npz"), upload_source(data, "d.npz"), upload_source(handle)]
        for source in sources:
            seen: list[tuple[int, int | None]] = []
            assert source.filename == "d.npz" and source.size == len(data)
            assert b"".join(source.chunks(lambda *at, seen=seen: seen.append(at))) == data
            assert seen == [(0, len(data)), (CHUNK, len(data)), (len(data), len(data))]
    assert sources[0].replayable and sources[1].replayable and not sources[2].replayable
    with pytest.raises(ValueError, match="filename"):
        upload_source(b"x")
    assert upload_source(io.BytesIO(b"xy"), "s.csv").size == 2


def test_a_download_is_kept_only_when_its_sha256_matches(tmp_path: Path) -> None:
    good = hashlib.sha256(b"hello").hexdigest()
    with ChecksummedFile(tmp_path / "a.bin", good) as out:
        out.write(b"hel")
        out.write(b"lo")
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    with pytest.raises(ChecksumMismatch, match="sha256"), ChecksummedFile(tmp_path / "b.bin", good) as out:
        out.write(b"jello")
    assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.bin.part").exists()
