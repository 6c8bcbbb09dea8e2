"""The OIP v2 tensor codec: round trips per datatype, every refusal naming its tensor, and a stock tritonclient.

The interop tests build real request bodies with ``tritonclient.http`` and parse our responses
with its ``InferResult``, so they fail if we drift from what Triton clients send and expect.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from core.tensor_codec import (
    CodecError,
    InferenceRequest,
    RequestedOutput,
    Tensor,
    datatype_of,
    decode_request,
    decode_tensors,
    encode_response,
    tensor_to_json,
    validate_against_signature,
)

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 1, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 3, 2**63 - 1]], dtype=np.int64),
    "UINT8": np.array([[0, 1, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], dtype=np.uint64),
    "FP16": np.array([[0.5, -1.25, 65504.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3.4e38], [1e-30, 0.0, 7.0]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e300]], dtype=np.float64),
    "BYTES": np.array([[b"", b"plain", "h\u00e9llo \u2603".encode()]], dtype=object),
}


def _json_body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _json_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = datatype_of(array)
    flat = [item.decode() for item in array.reshape(-1)] if datatype == "BYTES" else array.reshape(-1).tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": flat}


def _binary_body(tensors: list[tuple[dict[str, Any], bytes]]) -> tuple[bytes, int]:
    """Hand-built binary extension body: the JSON header, then each tensor's raw bytes in order."""
    specs = [dict(spec, parameters={"binary_data_size": len(raw)}) for spec, raw in tensors]
    header = json.dumps({"inputs": specs}).encode()
    return header + b"".join(raw for _, raw in tensors), len(header)


def _length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_json_request_round_trips_every_datatype(datatype: str) -> None:
    array = SAMPLES[datatype]
    request = decode_request(_json_body([_json_tensor("x", array)]))
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, list(array.shape))
    _assert_same(tensor.data, array)


@pytest.mark.parametrize("datatype", [d for d in SAMPLES if d != "BYTES"])
def test_binary_request_round_trips_fixed_size_datatypes(datatype: str) -> None:
    array = SAMPLES[datatype]
    spec = {"name": "x", "shape": list(array.shape), "datatype": datatype}
    body, header_length = _binary_body([(spec, array.astype(array.dtype.newbyteorder("<")).tobytes())])
    _assert_same(decode_request(body, header_length).inputs[0].data, array)


def test_binary_bytes_are_length_prefixed_elements() -> None:
    raw = _length_prefixed(b"", b"\xff\x00binary", b"abc")
    body, header_length = _binary_body([({"name": "s", "shape": [3], "datatype": "BYTES"}, raw)])
    assert decode_request(body, header_length).inputs[0].data.tolist() == [b"", b"\xff\x00binary", b"abc"]


def test_binary_and_json_inputs_mix_and_header_length_may_be_a_string() -> None:
    ints = np.arange(6, dtype=np.int32).reshape(3, 2)
    spec = {"name": "a", "shape": [3, 2], "datatype": "INT32", "parameters": {"binary_data_size": 24}}
    header = _json_body([spec, _json_tensor("b", SAMPLES["FP64"])])
    request = decode_request(header + ints.tobytes(), str(len(header)))
    _assert_same(request.arrays()["a"], ints)
    _assert_same(request.arrays()["b"], SAMPLES["FP64"])


def test_nested_json_data_is_read_row_major() -> None:
    nested = {"name": "x", "shape": [2, 2, 2], "datatype": "INT64", "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}
    data = decode_request(_json_body([nested])).inputs[0].data
    _assert_same(data, np.arange(1, 9, dtype=np.int64).reshape(2, 2, 2))


def test_empty_and_scalar_tensors() -> None:
    empty = {"name": "e", "shape": [0, 4], "datatype": "FP32", "data": []}
    scalar = {"name": "s", "shape": [], "datatype": "FP32", "data": [2.5]}
    arrays = decode_request(_json_body([empty, scalar])).arrays()
    assert arrays["e"].shape == (0, 4)
    assert arrays["s"].shape == () and arrays["s"] == np.float32(2.5)


def test_request_id_parameters_and_requested_outputs_are_kept() -> None:
    body = _json_body(
        [_json_tensor("x", SAMPLES["FP32"])],
        id="req-7",
        parameters={"binary_data_output": True, "priority": 1},
        outputs=[{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}],
    )
    request = decode_request(body)
    assert request.id == "req-7"
    assert request.outputs == [RequestedOutput("y", False, {"binary_data": False}), RequestedOutput("z")]
    assert request.wants_binary("y") is False
    assert request.wants_binary("z") is True


def test_decode_tensors_reads_json_only_tensors() -> None:
    [tensor] = decode_tensors([_json_tensor("x", SAMPLES["INT16"])])
    _assert_same(tensor.data, SAMPLES["INT16"])


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_json_response_has_flat_data(datatype: str) -> None:
    array = SAMPLES[datatype]
    body, header_length = encode_response({"y": array}, model_name="m", model_version=2)
    assert header_length is None
    document = json.loads(body)
    assert document["model_name"] == "m" and document["model_version"] == "2"
    [output] = document["outputs"]
    assert output == _json_tensor("y", array) | {"data": output["data"]}
    want = [item.decode() for item in array.reshape(-1)] if datatype == "BYTES" else array.reshape(-1).tolist()
    assert output["data"] == want


def test_binary_response_carries_sizes_and_raw_bytes_in_output_order() -> None:
    request = InferenceRequest(inputs=[], parameters={"binary_data_output": True}, id="r")
    floats, words = SAMPLES["FP32"], np.array([b"ab", b""], dtype=object)
    body, header_length = encode_response({"f": floats, "w": words}, model_name="m", request=request)
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert header["id"] == "r"
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [floats.nbytes, 4 + 2 + 4]
    assert all("data" not in o for o in header["outputs"])
    assert body[header_length:] == floats.tobytes() + _length_prefixed(b"ab", b"")


def test_only_requested_outputs_are_sent_in_the_requested_order() -> None:
    request = InferenceRequest(inputs=[], outputs=[RequestedOutput("b"), RequestedOutput("a", binary_data=True)])
    outputs = {"a": np.ones(2, np.float32), "b": np.zeros(1, np.int64), "c": np.ones(1, np.int8)}
    body, header_length = encode_response(outputs, model_name="m", request=request)
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["b", "a"]
    assert header["outputs"][0]["data"] == [0]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}


def test_tensor_to_json_is_one_oip_tensor() -> None:
    assert tensor_to_json("y", np.array([[1, 2]], np.uint8)) == {
        "name": "y",
        "datatype": "UINT8",
        "shape": [1, 2],
        "data": [1, 2],
    }


# ---------------------------------------------------------------- refusals


def _spec(name: str = "x", **overrides: Any) -> dict[str, Any]:
    return {"name": name, "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]} | overrides


def _refused(body: bytes, header_length: int | str | None = None, **kwargs: Any) -> str:
    with pytest.raises(CodecError) as caught:
        decode_request(body, header_length, **kwargs)
    return str(caught.value)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (_spec(datatype="FP8"), "unknown datatype"),
        (_spec(datatype=None), "unknown datatype"),
        (_spec(datatype="BF16"), "BF16"),
        (_spec(data=[1.0, 2.0, 3.0]), "3 data elements but shape [2] needs 2"),
        (_spec(shape=[2, 2]), "needs 4"),
        (_spec(shape=[-1]), "invalid shape"),
        (_spec(shape=[1.5]), "invalid shape"),
        (_spec(shape=[True]), "invalid shape"),
        (_spec(shape="2"), "'shape'"),
        (_spec(data=["1.0", 2.0]), "not a number"),
        (_spec(data=[True, 2.0]), "not a number"),
        (_spec(data=[None, 2.0]), "not a number"),
        (_spec(data=[{"v": 1}, 2.0]), "not a number"),
        (_spec(datatype="INT64", data=[1, 2.5]), "not an integer"),
        (_spec(datatype="BOOL", data=[1, 0]), "not a boolean"),
        (_spec(datatype="BYTES", data=[b"x".hex(), 3]), "not a string"),
        (_spec(datatype="UINT8", data=[1, 256]), "does not fit UINT8"),
        (_spec(datatype="INT8", data=[-129, 0]), "does not fit INT8"),
        ({"name": "x", "shape": [2], "datatype": "FP32"}, "no 'data'"),
        (_spec(parameters={"binary_data_size": 8}), "both 'data' and binary_data_size"),
        (_spec(parameters={"shared_memory_region": "r"}), "shared memory"),
        (_spec(parameters=[1]), "'parameters'"),
    ],
)
def test_json_input_refusals_name_the_input(spec: dict[str, Any], words: str) -> None:
    message = _refused(_json_body([_spec("ok"), spec]))
    assert "input 'x'" in message
    assert words in message


def test_binary_data_size_without_the_header_length_is_refused() -> None:
    spec = {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    message = _refused(_json_body([spec]))
    assert "input 'x'" in message and "Inference-Header-Content-Length" in message


def test_an_input_without_a_name_is_named_by_position() -> None:
    assert "input #1" in _refused(_json_body([_spec("a"), {"shape": [1], "datatype": "FP32", "data": [1.0]}]))


def test_duplicate_input_names_are_refused() -> None:
    message = _refused(_json_body([_spec("x"), _spec("y"), _spec("x")]))
    assert "input 'x'" in message and "more than once" in message


def test_the_element_limit_is_checked_from_the_shape_before_anything_is_allocated() -> None:
    huge = {"name": "x", "shape": [1 << 20, 1 << 20], "datatype": "FP64", "parameters": {"binary_data_size": 0}}
    header = _json_body([huge])
    message = _refused(header, len(header), max_elements=1_000_000)
    assert "input 'x'" in message and "over the limit of 1000000" in message
    assert "over the limit" in _refused(_json_body([_spec(shape=[2], data=[1.0, 2.0])]), max_elements=1)
    assert decode_request(_json_body([_spec()]), max_elements=2).inputs[0].data.size == 2


def test_huge_bytes_shape_is_refused_before_allocating_its_elements() -> None:
    spec = {"name": "s", "shape": [1 << 40], "datatype": "BYTES"}
    body, header_length = _binary_body([(spec, _length_prefixed(b"a"))])
    message = _refused(body, header_length)
    assert "input 's'" in message and "too short" in message


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "words"),
    [
        ("FP32", [3], b"\x00" * 8, "needs 12 bytes"),
        ("INT64", [1], b"\x00" * 9, "needs 8 bytes"),
        ("BOOL", [2], b"\x01\x02", "other than 0 and 1"),
        ("BYTES", [2], _length_prefixed(b"a"), "too short"),
        ("BYTES", [1], _length_prefixed(b"abc")[:-1], "past the end"),
        ("BYTES", [2], _length_prefixed(b"abc") + b"\x01\x00", "ends after 1 of 2"),
        ("BYTES", [1], _length_prefixed(b"a") + b"junk", "left over"),
    ],
)
def test_binary_input_refusals_name_the_input(datatype: str, shape: list[int], raw: bytes, words: str) -> None:
    body, header_length = _binary_body([({"name": "x", "shape": shape, "datatype": datatype}, raw)])
    message = _refused(body, header_length)
    assert "input 'x'" in message and words in message


def test_binary_sizes_must_add_up_to_the_body() -> None:
    body, header_length = _binary_body([({"name": "x", "shape": [2], "datatype": "FP32"}, b"\x00" * 8)])
    assert "add up to 8 bytes" in _refused(body + b"extra", header_length)
    past = _refused(body[:-1], header_length)
    assert "input 'x'" in past and "only 7 bytes" in past


def test_header_length_must_be_inside_the_body() -> None:
    body = _json_body([_spec()])
    assert "past the end of the body" in _refused(body, len(body) + 1)
    assert "non-negative integer" in _refused(body, "twelve")
    assert "non-negative integer" in _refused(body, -1)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "cannot be parsed"),
        (b"\xff\xfe", "cannot be parsed"),
        (b"[1, 2]", "must be an object"),
        (b"{}", "no 'inputs'"),
        (b'{"inputs": {"x": 1}}', "must be a list"),
        (b'{"inputs": [], "id": 7}', "'id' must be a string"),
        (b'{"inputs": [], "parameters": {"binary_data_output": "yes"}}', "binary_data_output"),
        (b'{"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}', "output 'y' is requested more than once"),
        (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}', "output 'y'"),
        (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 3}}]}', "classification"),
    ],
)
def test_malformed_requests_are_refused(body: bytes, words: str) -> None:
    assert words in _refused(body)


def test_encoding_refuses_what_the_protocol_cannot_carry() -> None:
    request = InferenceRequest(inputs=[], outputs=[RequestedOutput("missing")])
    with pytest.raises(CodecError, match="output 'missing' was requested"):
        encode_response({"y": np.ones(1)}, model_name="m", request=request)
    with pytest.raises(CodecError, match=r"output 'c'.*complex128"):
        encode_response({"c": np.ones(1, np.complex128)}, model_name="m")
    with pytest.raises(CodecError, match=r"output 's'.*binary_data: true"):
        encode_response({"s": np.array([b"\xff"], dtype=object)}, model_name="m")


# ---------------------------------------------------------------- signature

SIGNATURE = {
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "mask", "datatype": "BOOL", "shape": None},
    ],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}


def _inputs(**arrays: np.ndarray) -> list[Tensor]:
    return [Tensor(name, datatype_of(array), array) for name, array in arrays.items()]


def test_free_dims_and_unknown_ranks_match_the_signature() -> None:
    mask = np.ones((7, 1, 1), dtype=bool)
    validate_against_signature(_inputs(x=np.zeros((5, 3), np.float32), mask=mask), SIGNATURE, 100)
    validate_against_signature({"x": np.zeros((1, 3), np.float32), "mask": mask}, SIGNATURE)
    validate_against_signature(
        _inputs(x=np.zeros((1, 3), np.float32), mask=mask), SIGNATURE, outputs=[RequestedOutput("y")]
    )


@pytest.mark.parametrize(
    ("x", "words"),
    [
        (np.zeros((2, 3), np.float64), "datatype FP64 but the model expects FP32"),
        (np.zeros((2, 3, 1), np.float32), "expects rank 2"),
        (np.zeros((2,), np.float32), "expects rank 2"),
        (np.zeros((2, 4), np.float32), "dimension 1 must be 3"),
        (np.zeros((40, 3), np.float32), "over the limit of 100"),
    ],
)
def test_signature_mismatches_name_the_input(x: np.ndarray, words: str) -> None:
    with pytest.raises(CodecError) as caught:
        validate_against_signature(_inputs(x=x, mask=np.ones(1, bool)), SIGNATURE, 100)
    assert "input 'x'" in str(caught.value) and words in str(caught.value)


def test_unknown_and_missing_inputs_and_outputs_are_named() -> None:
    good = {"x": np.zeros((1, 3), np.float32), "mask": np.ones(1, bool)}
    with pytest.raises(CodecError, match="input 'extra' is not an input of this model; it takes 'x', 'mask'"):
        validate_against_signature(good | {"extra": np.ones(1, np.float32)}, SIGNATURE)
    with pytest.raises(CodecError, match="missing input 'mask'"):
        validate_against_signature({"x": good["x"]}, SIGNATURE)
    with pytest.raises(CodecError, match="output 'z' is not an output of this model"):
        validate_against_signature(good, SIGNATURE, outputs=[RequestedOutput("z")])


# ---------------------------------------------------------------- tritonclient interop

INTEROP = {
    "FP32": np.array([[0.5, -1.5, 3.25], [1e-3, 2.0, -7.0]], dtype=np.float32),
    "INT64": np.array([[-(2**40), 0, 2**40]], dtype=np.int64),
    "BOOL": np.array([[True, False], [False, True]]),
    "FP16": np.array([[0.5, -2.0, 1024.0]], dtype=np.float16),
    "BYTES": np.array([[b"alpha", b"", "caf\u00e9".encode()]], dtype=object),
}


@pytest.fixture(scope="module")
def triton() -> Any:
    return pytest.importorskip("tritonclient.http")


def _triton_request(triton: Any, arrays: dict[str, np.ndarray], *, binary_inputs: bool, outputs: Any = None) -> Any:
    inputs = []
    for name, array in arrays.items():
        infer_input = triton.InferInput(name, list(array.shape), datatype_of(array))
        infer_input.set_data_from_numpy(array, binary_data=binary_inputs)
        inputs.append(infer_input)
    return triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="interop-1")


def _as_sent(array: np.ndarray, binary: bool) -> list[Any]:
    """What tritonclient's as_numpy gives back: BYTES come back as str from JSON, bytes from binary."""
    if array.dtype == object and not binary:
        return [[item.decode() for item in row] for row in array.tolist()]
    return array.tolist()


@pytest.mark.parametrize("binary_inputs", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(INTEROP))
def test_tritonclient_requests_decode(triton: Any, datatype: str, binary_inputs: bool) -> None:
    array = INTEROP[datatype]
    body, header_length = _triton_request(triton, {"input": array}, binary_inputs=binary_inputs)
    assert (header_length is not None) == binary_inputs
    request = decode_request(body, header_length)
    assert request.id == "interop-1"
    [tensor] = request.inputs
    assert tensor.datatype == datatype
    _assert_same(tensor.data, array)


@pytest.mark.parametrize("binary_output", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(INTEROP))
def test_tritonclient_reads_responses(triton: Any, datatype: str, binary_output: bool) -> None:
    array = INTEROP[datatype]
    requested = [triton.InferRequestedOutput("output", binary_data=binary_output)]
    body, header_length = _triton_request(triton, {"input": array}, binary_inputs=True, outputs=requested)
    request = decode_request(body, header_length)
    response, response_header_length = encode_response(
        {"output": request.arrays()["input"], "unrequested": np.ones(1, np.float32)},
        model_name="echo",
        model_version="1",
        request=request,
    )
    assert (response_header_length is not None) == binary_output
    result = triton.InferResult.from_response_body(response, header_length=response_header_length)
    assert result.get_response()["id"] == "interop-1"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["output"]
    got = result.as_numpy("output")
    assert got.shape == array.shape
    assert got.tolist() == _as_sent(array, binary_output)


def test_tritonclient_default_outputs_come_back_binary_and_mixed_requests_work(triton: Any) -> None:
    arrays = {name.lower(): array for name, array in INTEROP.items()}
    body, header_length = _triton_request(triton, arrays, binary_inputs=True)
    request = decode_request(body, header_length)
    assert request.parameters["binary_data_output"] is True
    outputs = {f"{name}_out": array for name, array in request.arrays().items()}
    response, response_header_length = encode_response(outputs, model_name="echo", request=request)
    assert response_header_length is not None
    result = triton.InferResult.from_response_body(response, header_length=response_header_length)
    for name, array in arrays.items():
        _assert_same(result.as_numpy(f"{name}_out"), array)

    mixed = [
        triton.InferRequestedOutput("fp32_out", binary_data=True),
        triton.InferRequestedOutput("bytes_out", binary_data=False),
        triton.InferRequestedOutput("fp16_out", binary_data=True),
    ]
    body, header_length = _triton_request(triton, arrays, binary_inputs=False, outputs=mixed)
    request = decode_request(body, header_length)
    response, response_header_length = encode_response(
        {f"{name}_out": array for name, array in request.arrays().items()}, model_name="echo", request=request
    )
    result = triton.InferResult.from_response_body(response, header_length=response_header_length)
    _assert_same(result.as_numpy("fp32_out"), arrays["fp32"])
    _assert_same(result.as_numpy("fp16_out"), arrays["fp16"])
    assert result.as_numpy("bytes_out").tolist() == _as_sent(arrays["bytes"], binary=False)
    assert result.as_numpy("int64_out") is None
