"""The client's side of the Open Inference Protocol's binary tensor extension: numpy arrays into a
request body, a response body back into numpy arrays.

Both directions go through ``core.tensor_codec``, the server's codec, so the client cannot lay out
bytes differently from what the server reads: a response's ``outputs`` have exactly the layout of a
request's ``inputs``, so the codec encodes inputs as it encodes outputs and decodes outputs as it
decodes inputs. Pure: bytes, JSON and numpy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.tensor_codec import (
    HEADER_LENGTH_HEADER,
    InferenceRequest,
    RequestedOutput,
    decode_request,
    decode_tensors,
    encode_response,
    tensor_to_json,
)

__all__ = ["HEADER_LENGTH_HEADER", "decode_response", "encode_request", "from_oip_json", "to_oip_json"]


def encode_request(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> tuple[bytes, int]:
    """The body of a binary ``…/infer`` request and its ``Inference-Header-Content-Length``; every
    output is asked for in binary too."""
    wanted = [RequestedOutput(name, binary_data=True) for name in inputs]
    body, header_length = encode_response(
        {name: np.asarray(array) for name, array in inputs.items()},
        model_name="",
        request=InferenceRequest(inputs=[], outputs=wanted),
    )
    assert header_length is not None  # every tensor was asked for in binary
    laid_out = json.loads(body[:header_length])["outputs"]
    header: dict[str, Any] = {"inputs": laid_out, "parameters": {"binary_data_output": True}}
    if outputs:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + body[header_length:], len(raw)


def decode_response(body: bytes, header_length: int | str | None) -> dict[str, np.ndarray]:
    """The named output arrays of an ``…/infer`` response (binary or JSON tensors)."""
    length = int(header_length) if header_length is not None else len(body)
    document = json.loads(body[:length])
    as_inputs = json.dumps({"inputs": document.get("outputs", [])}, separators=(",", ":")).encode()
    binary = body[length:]
    request = decode_request(as_inputs + binary, len(as_inputs) if header_length is not None else None)
    return {tensor.name: tensor.data for tensor in request.inputs}


def to_oip_json(inputs: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Arrays as Open Inference Protocol JSON tensors, as ``/v1/predictions`` takes them."""
    return [tensor_to_json(name, np.asarray(array)) for name, array in inputs.items()]


def from_oip_json(tensors: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Open Inference Protocol JSON tensors (a prediction's ``output["outputs"]``) as named arrays."""
    return {tensor.name: tensor.data for tensor in decode_tensors(list(tensors))}
