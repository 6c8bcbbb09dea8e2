"""The per-call shortcuts of the gRPC path keep the answers of the slower code they replaced."""

from __future__ import annotations

import numpy as np
import pytest

from api.grpc_server import _authorization
from api.grpc_tensors import parameters_of
from api.oip_grpc import open_inference_grpc_pb2 as pb
from core.tensor_codec import CodecError, datatype_of


class _Metadata:
    """What grpc.aio's servicer context answers ``invocation_metadata()`` with."""

    def __init__(self, metadata):
        self.metadata = metadata

    def invocation_metadata(self):
        return self.metadata


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("user-agent", "x"), ("authorization", "Bearer k1")), "Bearer k1"),
        ((("authorization", b"Bearer k1"),), "Bearer k1"),  # bytes metadata decoded
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "Bearer b"),  # the last, as dict() kept
        ((("user-agent", "x"),), ""),
        (None, ""),
    ],
)
def test_authorization_is_read_from_the_metadata_as_before(metadata, expected):
    assert _authorization(_Metadata(metadata)) == expected
    assert _authorization(_Metadata(metadata)) == (
        (lambda h: h if isinstance(h, str) else h.decode())(dict(metadata or ()).get("authorization", ""))
    )


def test_parameters_of_an_empty_map_and_a_full_one():
    tensor = pb.ModelInferRequest.InferInputTensor(name="x")
    assert parameters_of(tensor.parameters) == {}
    tensor.parameters["a"].int64_param = 3
    tensor.parameters["b"].string_param = "s"
    assert parameters_of(tensor.parameters) == {"a": 3, "b": "s"}


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [("<f4", "FP32"), (">f4", "FP32"), ("<i8", "INT64"), (">i8", "INT64"), ("?", "BOOL"), ("f2", "FP16"),
     ("u1", "UINT8"), ("U3", "BYTES"), ("O", "BYTES")],
)  # fmt: skip
def test_datatype_of_any_byte_order(dtype, datatype):
    assert datatype_of(np.zeros(2, dtype)) == datatype


def test_datatype_of_an_unsupported_dtype_names_it():
    with pytest.raises(CodecError, match="complex64"):
        datatype_of(np.zeros(2, np.complex64), "output 'y'")
