"""Who may read /metrics (the decision, without a network), and what /readyz may say of a failed check."""

from __future__ import annotations

import pytest

from api.routes.health import MAX_CHECK_ERROR_CHARS, is_loopback, metrics_access, sanitize_check_error
from core.settings import Settings

TOKEN = "s3cret-token"


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"])
def test_without_a_token_loopback_clients_read_metrics(remote):
    assert is_loopback(remote)
    assert metrics_access(remote, None, None) is None
    assert metrics_access(remote, None, "") is None  # MAAS_METRICS_TOKEN= (empty) is unset


@pytest.mark.parametrize("remote", ["10.0.0.7", "192.168.1.20", "2001:db8::1", "::ffff:10.0.0.7", "", None, "x"])
def test_without_a_token_other_clients_are_403_naming_the_setting(remote):
    refused = metrics_access(remote, f"Bearer {TOKEN}", None)
    assert refused is not None and refused.status == 403
    assert "MAAS_METRICS_TOKEN" in refused.detail


@pytest.mark.parametrize("remote", ["127.0.0.1", "10.0.0.7"])
@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  Bearer   {TOKEN} "])
def test_with_a_token_the_token_opens_from_anywhere(remote, authorization):
    assert metrics_access(remote, authorization, TOKEN) is None


@pytest.mark.parametrize("remote", ["127.0.0.1", "10.0.0.7"])
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN, "Bearer maas_someapikey", f"Bearer {TOKEN}x", "Bearer é"],
)
def test_with_a_token_anything_else_is_401_even_on_loopback(remote, authorization):
    refused = metrics_access(remote, authorization, TOKEN)
    assert refused is not None and refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in refused.detail


def test_check_errors_lose_credentials_secrets_and_tenant_ids():
    settings = Settings(
        database_url="postgresql+psycopg://maas:hunter22@db.internal:5432/maas",
        broker_url="amqp://guest:rabbitpw@mq:5672//",
        s3_access_key="AKIAEXAMPLE",
        s3_secret_key="wJalrXUtnFEMI",
    )
    message = (
        "OperationalError: connection to postgresql+psycopg://maas:hunter22@db.internal:5432/maas failed "
        "(host=db.internal password=other1 user=maas) for ten_01m8j8n5j2ww43c4g8b216ke52; "
        "amqp://guest:rabbitpw@mq:5672// refused; key AKIAEXAMPLE / wJalrXUtnFEMI; rabbitpw\nsecond line"
    )
    cleaned = sanitize_check_error(message, settings)
    for leak in ("hunter22", "rabbitpw", "other1", "ten_01m8j8n5j2ww43c4g8b216ke52", "AKIAEXAMPLE", "wJalrXUtnFEMI"):
        assert leak not in cleaned
    assert "second line" not in cleaned
    assert cleaned.startswith("OperationalError: connection to postgresql+psycopg://***@db.internal:5432/maas")
    assert "ten_***" in cleaned


def test_check_errors_are_truncated():
    assert len(sanitize_check_error("TimeoutError: " + "x" * 1000, Settings())) == MAX_CHECK_ERROR_CHARS
    assert sanitize_check_error("", Settings()) == ""
