import random

import pytest
from standardwebhooks.webhooks import Webhook

from core.settings import Settings
from core.webhooks import UnsafeWebhookUrl, check_url, new_secret, sign, signature_header, wants
from workers.webhooks import next_delay_s, outcome


def test_signatures_verify_with_the_standard_library():
    secret = new_secret()
    body = b'{"id":"job_1","event":"completed"}'
    timestamp = int(__import__("time").time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_1", timestamp, body),
    }
    assert Webhook(secret).verify(body, headers) == {"id": "job_1", "event": "completed"}


def test_a_rotated_header_carries_both_signatures():
    old, new = new_secret(), new_secret()
    header = signature_header([new, old], "msg_1", 1, b"{}")
    assert header.split(" ") == [sign(new, "msg_1", 1, b"{}"), sign(old, "msg_1", 1, b"{}")]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/x", "http or https"),
        ("http:///nohost", "no host"),
        ("https://user:pw@example.com/x", "credentials"),
        ("http://127.0.0.1:8080/x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://192.168.0.1/x", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/x", "loopback"),
        ("http://localhost/x", "loopback"),
    ],
)
def test_unsafe_targets_are_refused(url, words):
    with pytest.raises(UnsafeWebhookUrl, match=words.split()[0]):
        check_url(url, allow_private=False)


def test_public_and_allowed_private_targets_pass():
    check_url("https://8.8.8.8/hook", allow_private=False)
    check_url("http://127.0.0.1:9000/hook", allow_private=True)


def test_filters():
    assert wants("progress", "https://x", [])
    assert not wants("progress", "https://x", ["completed"])
    assert not wants("completed", None, [])


def test_backoff_doubles_with_jitter_and_a_cap():
    settings = Settings(webhook_backoff_base_s=2, webhook_backoff_max_s=60)
    rng = random.Random(7)
    for attempt, nominal in [(1, 2), (2, 4), (3, 8), (10, 60)]:
        delays = [next_delay_s(attempt, settings, rng) for _ in range(200)]
        assert nominal * 0.5 <= min(delays) and max(delays) <= nominal * 1.5
        assert max(delays) - min(delays) > nominal * 0.5  # jitter spreads retries


@pytest.mark.parametrize(
    ("status", "result"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (410, "disabled"),
        (301, "retry"),
        (404, "retry"),
        (500, "retry"),
        (None, "retry"),
    ],
)
def test_what_an_answer_means(status, result):
    assert outcome(status) == result
