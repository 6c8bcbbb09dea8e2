import pytest

from core.settings import MissingSetting, Settings, to_env


def test_settings_come_from_prefixed_variables(monkeypatch):
    monkeypatch.setenv("MAAS_BROKER_URL", "redis://example:6379/3")
    monkeypatch.setenv("MAAS_MAX_UPLOAD_BYTES", "1234")
    settings = Settings()
    assert settings.broker_url == "redis://example:6379/3"
    assert settings.max_upload_bytes == 1234


def test_missing_service_urls_are_named():
    with pytest.raises(MissingSetting, match="MAAS_DATABASE_URL, MAAS_S3_ENDPOINT_URL"):
        Settings(broker_url="redis://x").require("database_url", "broker_url", "s3_endpoint_url")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_upload_bytes"):
        Settings(max_upload_bytes=0)


def test_to_env_round_trips(monkeypatch, tmp_path):
    original = Settings(database_url="postgresql://a@b/c", max_tensor_elements=77, data_dir=tmp_path)
    for key, value in to_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original
