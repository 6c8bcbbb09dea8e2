"""The internal tensor wire format between the API and the model servers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from core.tensor_wire import WireError, pack, unpack


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array([[True, False]]),
        np.arange(4, dtype=np.float16),
        np.arange(8, dtype=np.uint8).reshape(2, 2, 2),
        np.zeros((0, 3), dtype=np.float64),
        np.arange(3, dtype=">i4"),
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
    ],
)
def test_arrays_come_back_equal(array: np.ndarray) -> None:
    arrays, meta = unpack(pack({"t": array}, {"k": 1}))
    np.testing.assert_array_equal(arrays["t"], array)
    assert arrays["t"].dtype.kind == array.dtype.kind and arrays["t"].shape == array.shape
    assert meta == {"k": 1}


def test_several_tensors_keep_their_order_and_bytes_tensors_travel_as_bytes():
    words = np.array([["a", "bé"], ["", "ccc"]], dtype=object)
    arrays, _ = unpack(pack({"x": np.ones((2, 2), np.float32), "w": words, "b": np.array([b"\x00\xff"], dtype=object)}))
    assert list(arrays) == ["x", "w", "b"]
    assert arrays["w"].tolist() == [[b"a", "bé".encode()], [b"", b"ccc"]]
    assert arrays["b"].tolist() == [b"\x00\xff"]


def test_numeric_arrays_are_read_only_views_of_the_message():
    body = pack({"x": np.arange(4, dtype=np.float32)})
    arrays, _ = unpack(body)
    assert not arrays["x"].flags.writeable


def _message(header: object, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<I", len(raw)) + raw + payload


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\x01", "shorter"),
        (struct.pack("<I", 100) + b"{}", "claims 100"),
        (_message([]), "cannot be read"),
        (_message({"meta": {}, "tensors": [{"name": "x"}]}), "needs name, dtype"),
        (
            _message({"meta": {}, "tensors": [{"name": "x", "dtype": "|O", "shape": [1], "nbytes": 8}]}, b"\0" * 8),
            "'x'",
        ),
        (
            _message({"meta": {}, "tensors": [{"name": "x", "dtype": "<f4", "shape": [2], "nbytes": 4}]}, b"\0" * 4),
            "'x'",
        ),
        (
            _message({"meta": {}, "tensors": [{"name": "x", "dtype": "<f4", "shape": [1], "nbytes": 8}]}, b"\0" * 4),
            "past",
        ),
        (_message({"meta": {}, "tensors": []}, b"extra"), "left over"),
        (
            _message(
                {"meta": {}, "tensors": [{"name": "x", "dtype": "bytes", "shape": [2], "nbytes": 5}]}, b"\1\0\0\0a"
            ),
            "'x'",
        ),
    ],
)
def test_malformed_messages_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(WireError, match=words.replace("(", r"\(")):
        unpack(body)


def test_unsupported_dtypes_are_refused_when_packing():
    with pytest.raises(WireError, match="'c'"):
        pack({"c": np.array([1 + 2j])})
