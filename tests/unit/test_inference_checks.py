"""The API's checks before a request is queued: signature, batch limit, timeouts."""

from __future__ import annotations

import numpy as np
import pytest

from api.inference_router import InferenceFailed, check_inputs, effective_timeout_ms, request_timeout_ms
from api.routing_table import ModelRoute, ServedVersion, Target
from core.deployments import BatchingSettings
from core.tensor_codec import InferenceRequest, Tensor

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
}
TARGET = Target(
    ModelRoute("t", "m", "mdl", 1, BatchingSettings(8, 500, 64, 1000), {}),
    ServedVersion("mv", 1, SIGNATURE, ()),
)


def request(rows: int, **parameters) -> InferenceRequest:
    return InferenceRequest([Tensor("x", "FP32", np.zeros((rows, 4), np.float32))], parameters=parameters)


def test_a_request_within_the_signature_and_the_batch_limit_passes():
    check_inputs(request(8), TARGET, max_elements=1000)


@pytest.mark.parametrize(
    ("given", "max_elements", "words"),
    [
        (request(9), 1000, "input 'x' has 9 rows"),
        (request(4), 8, "input 'x' has shape [4, 4]: 16 elements, over the limit of 8"),
        (InferenceRequest([Tensor("x", "FP64", np.zeros((1, 4)))]), 1000, "input 'x' has datatype FP64"),
    ],
)
def test_bad_requests_are_400_naming_the_input(given, max_elements, words):
    with pytest.raises(InferenceFailed, match=words.replace("[", r"\[").replace("]", r"\]")) as caught:
        check_inputs(given, TARGET, max_elements=max_elements)
    assert caught.value.status == 400 and caught.value.code == "invalid_input"


def test_the_request_timeout_parameter_is_in_microseconds_and_the_shorter_limit_wins():
    assert request_timeout_ms(request(1)) is None
    assert request_timeout_ms(request(1, timeout=2500)) == 3
    with pytest.raises(InferenceFailed):
        request_timeout_ms(request(1, timeout="soon"))
    assert effective_timeout_ms(1000, None) == 1000
    assert effective_timeout_ms(1000, 3) == 3
    assert effective_timeout_ms(0, 3) == 3
    assert effective_timeout_ms(0, None) == 0
