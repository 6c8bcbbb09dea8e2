"""The SDK's pure pieces against independent implementations: webhook verification against signatures
made by the ``standardwebhooks`` package, binary inference bodies against the server's own decoder,
the Server-Sent Events parser on the spec's examples, and ``Retry-After`` in both of its forms."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from standardwebhooks import Webhook

from core.tensor_codec import decode_request, encode_response
from core.webhooks import new_secret
from maas_client.errors import Problem, ValidationError, WebhookVerificationError, error_from_response
from maas_client.retries import RetryPolicy, parse_retry_after
from maas_client.sse import Resumption, SseParser
from maas_client.tensors import decode_response, encode_request
from maas_client.webhooks import verify


def signed(secret: str, body: str, at: float) -> dict[str, str]:
    stamp = datetime.fromtimestamp(int(at), UTC)
    signature = Webhook(secret).sign("msg_1", stamp, body)
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(int(at)), "Webhook-Signature": signature}


def test_a_delivery_signed_by_the_standard_webhooks_library_verifies() -> None:
    secret, body = new_secret(), json.dumps({"id": "pred_1", "event": "completed"})
    assert verify(body.encode(), signed(secret, body, time.time()), secret) == {"id": "pred_1", "event": "completed"}


def test_a_tampered_body_another_secret_or_an_old_timestamp_is_refused() -> None:
    secret, body = new_secret(), '{"id": "pred_1"}'
    headers = signed(secret, body, time.time())
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify(b'{"id": "pred_2"}', headers, secret)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify(body, headers, new_secret())
    old = signed(secret, body, time.time() - 3600)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(body, old, secret)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(body, {}, secret)


def test_one_of_two_signatures_after_a_rotation_is_enough() -> None:
    old, new, body = new_secret(), new_secret(), '{"id": "job_1"}'
    now = time.time()
    headers = signed(new, body, now)
    headers["Webhook-Signature"] = signed(old, body, now)["Webhook-Signature"] + " " + headers["Webhook-Signature"]
    assert verify(body, headers, new)["id"] == "job_1"
    assert verify(body, headers, old)["id"] == "job_1"


def test_a_binary_request_decodes_with_the_servers_decoder() -> None:
    inputs = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ids": np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int64),
        "text": np.array([b"a", b"bc", b""], dtype=object),
    }
    body, header_length = encode_request(inputs, outputs=["scores"])
    request = decode_request(body, header_length)
    decoded = request.arrays()
    np.testing.assert_array_equal(decoded["x"], inputs["x"])
    np.testing.assert_array_equal(decoded["ids"], inputs["ids"])
    assert list(decoded["text"]) == [b"a", b"bc", b""]
    assert [o.name for o in request.outputs] == ["scores"] and request.wants_binary("scores")


def test_a_response_encoded_by_the_server_decodes_in_binary_and_in_json() -> None:
    outputs = {"scores": np.array([[0.5, -1.0]], dtype=np.float32), "label": np.array([0], dtype=np.int64)}
    binary_request = decode_request(*encode_request({"x": np.zeros((1, 4), np.float32)}))
    for request in (binary_request, None):  # None: the server answers plain JSON
        body, header_length = encode_response(outputs, model_name="m", model_version=1, request=request)
        decoded = decode_response(body, header_length)
        np.testing.assert_array_equal(decoded["scores"], outputs["scores"])
        np.testing.assert_array_equal(decoded["label"], outputs["label"])
        assert decoded["label"].dtype == np.int64


def test_the_sse_parser_follows_the_specs_fields_comments_and_multiline_data() -> None:
    parser = SseParser()
    lines = [": keep-alive", "", "id: evt_1", "event: progress", 'data: {"a":', "data: 1}", "", "data: x", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.id, e.event, e.data) for e in events] == [("evt_1", "progress", '{"a":\n1}'), ("evt_1", "message", "x")]


def test_a_stream_resumes_after_the_last_event_and_stops_after_the_final_status() -> None:
    state = Resumption(after=None, max_failures=2, backoff_s=0.1)
    assert "Last-Event-ID" not in state.headers()
    state.connected()
    state.received("evt_1", final=False)
    assert state.closed()  # a clean close mid-job: connect again
    assert state.headers()["Last-Event-ID"] == "evt_1"
    assert state.broken() == 0.1 and state.broken() == 0.2 and state.broken() is None
    state.connected()
    state.received("evt_2", final=True)
    assert not state.closed()
    quiet = Resumption(after="evt_9")
    quiet.connected()
    assert not quiet.closed()  # a fresh connection that brought nothing: the job had ended


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:05 GMT", now=now) == 5.0
    assert parse_retry_after((now - timedelta(seconds=5)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_the_policy_repeats_429_and_503_but_a_connection_error_only_when_safe() -> None:
    policy = RetryPolicy(max_retries=2, max_retry_after_s=10)
    assert policy.after_status(0, 429, 2.5) == 2.5
    assert policy.after_status(0, 503, None) is not None
    assert policy.after_status(0, 429, 11) is None  # longer than we wait: the error goes to the caller
    assert policy.after_status(2, 503, 1) is None  # out of retries
    assert policy.after_status(0, 409, 1) == 1  # the same Idempotency-Key still being handled
    assert policy.after_status(0, 409, None) is None and policy.after_status(0, 500, 1) is None
    assert policy.after_connection_error(0, idempotent=True) is not None
    assert policy.after_connection_error(0, idempotent=False) is None


def test_a_validation_problem_becomes_a_typed_error_with_its_pointer() -> None:
    body = json.dumps(
        {
            "type": "https://maas.dev/problems/validation-error",
            "title": "Unprocessable content",
            "status": 422,
            "detail": "/spec/hyperparameters/lr: Input should be greater than 0",
            "errors": [{"pointer": "/spec/hyperparameters/lr", "detail": "Input should be greater than 0"}],
        }
    ).encode()
    error = error_from_response(422, {}, body)
    assert isinstance(error, ValidationError)
    assert error.pointer == "/spec/hyperparameters/lr" and error.detail.startswith("/spec/hyperparameters/lr")
    assert Problem.from_body(400, b'{"error": "bad input"}').detail == "bad input"
    assert Problem.from_body(502, b"<html>bad gateway</html>").detail == "<html>bad gateway</html>"
