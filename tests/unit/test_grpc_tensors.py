"""api.grpc_tensors: gRPC tensors to numpy and back, for every datatype and both layouts."""

from __future__ import annotations

import numpy as np
import pytest

from api.grpc_tensors import decode_infer_request, encode_infer_response
from api.oip_grpc import open_inference_grpc_pb2 as pb
from core.tensor_codec import CodecError, serialize_bytes_tensor


def request_with(name: str, datatype: str, shape: list[int]) -> tuple[pb.ModelInferRequest, pb.ModelInferRequest]:
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
    return message, tensor


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("BOOL", "bool_contents", [True, False, True], np.bool_),
        ("INT8", "int_contents", [-128, 0, 127], np.int8),
        ("UINT16", "uint_contents", [0, 1, 65535], np.uint16),
        ("INT64", "int64_contents", [-(2**40), 0, 2**40], np.int64),
        ("UINT64", "uint64_contents", [0, 2**63, 5], np.uint64),
        ("FP32", "fp32_contents", [0.5, -1.25, 3.0], np.float32),
        ("FP64", "fp64_contents", [0.1, 0.2, 0.3], np.float64),
        ("BYTES", "bytes_contents", [b"a", b"", b"\xff\x00"], object),
    ],
)
def test_contents_and_raw_decode_to_the_same_array(datatype, field, values, dtype):
    message, tensor = request_with("x", datatype, [1, 3])
    getattr(tensor.contents, field).extend(values)
    typed = decode_infer_request(message, None).inputs[0].data
    assert typed.dtype == np.dtype(dtype) and typed.shape == (1, 3)
    assert typed.ravel().tolist() == values

    array = np.empty(3, dtype=object) if dtype is object else np.array(values, dtype=dtype)
    if dtype is object:
        array[:] = values
    raw_message, _ = request_with("x", datatype, [1, 3])
    raw_message.raw_input_contents.append(
        serialize_bytes_tensor(array) if dtype is object else array.astype(array.dtype.newbyteorder("<")).tobytes()
    )
    raw = decode_infer_request(raw_message, None).inputs[0].data
    assert raw.ravel().tolist() == values


def test_narrow_ints_must_fit_and_counts_must_match():
    message, tensor = request_with("small", "INT8", [2])
    tensor.contents.int_contents.extend([1, 300])
    with pytest.raises(CodecError, match=r"input 'small' is INT8 but contents.int_contents holds values outside"):
        decode_infer_request(message, None)
    message, tensor = request_with("x", "FP32", [2, 2])
    tensor.contents.fp32_contents.extend([1.0] * 3)
    with pytest.raises(CodecError, match=r"input 'x' has 3 elements in contents.fp32_contents but shape \[2, 2\]"):
        decode_infer_request(message, None)
    message, _ = request_with("x", "FP32", [2, 2])
    message.raw_input_contents.extend([b"\0" * 16, b"\0" * 16])
    with pytest.raises(CodecError, match="1 inputs but 2 raw_input_contents"):
        decode_infer_request(message, None)
    message, _ = request_with("big", "FP32", [1000, 1000])
    with pytest.raises(CodecError, match="input 'big' has shape"):
        decode_infer_request(message, 1000)


def test_fp16_travels_raw_and_parameters_come_through():
    message, _ = request_with("h", "FP16", [2])
    message.raw_input_contents.append(np.array([1.5, -2], dtype="<f2").tobytes())
    message.parameters["timeout"].int64_param = 5000
    message.outputs.add(name="y").parameters["note"].string_param = "n"
    decoded = decode_infer_request(message, None)
    assert decoded.inputs[0].data.tolist() == [1.5, -2.0]
    assert decoded.parameters == {"timeout": 5000}
    assert decoded.outputs[0].name == "y" and decoded.outputs[0].parameters == {"note": "n"}


def test_responses_are_raw_when_asked_raw_or_when_an_output_has_no_typed_field():
    message, tensor = request_with("x", "FP32", [1])
    tensor.contents.fp32_contents.append(1.0)
    request = decode_infer_request(message, None)
    outputs = {"y": np.array([[1.0, 2.0]], np.float32), "label": np.array([1], np.int64)}
    typed = encode_infer_response(outputs, request, raw=False, model_name="m", model_version="2")
    assert not typed.raw_output_contents and list(typed.outputs[0].contents.fp32_contents) == [1.0, 2.0]
    assert list(typed.outputs[1].contents.int64_contents) == [1] and typed.model_version == "2"
    raw = encode_infer_response(outputs, request, raw=True, model_name="m", model_version="2")
    assert [o.HasField("contents") for o in raw.outputs] == [False, False]
    assert np.frombuffer(raw.raw_output_contents[0], "<f4").tolist() == [1.0, 2.0]
    half = encode_infer_response({"h": np.ones(2, np.float16)}, request, raw=False, model_name="m", model_version="2")
    assert half.outputs[0].datatype == "FP16" and len(half.raw_output_contents) == 1
