"""TwilioConfig.from_settings: credentials from Settings, the Twilio-side env vars."""

from __future__ import annotations

from bots.twilio.config import DEFAULT_API_URL, TwilioConfig
from stepcall.settings import Settings


def test_from_settings_reads_credentials_and_env(monkeypatch):
    env = {
        "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "tok", "TWILIO_FROM_NUMBER": "+15559990000",
        "STEPCALL_STREAM_SECRET": "s3", "STEPCALL_API_TOKEN": "api",
        "STEPCALL_TWILIO_API_URL": "http://127.0.0.1:9/", "STEPCALL_PUBLIC_URL": "https://bots.example.com/",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    config = TwilioConfig.from_settings(settings)
    assert (config.account_sid, config.auth_token, config.has_credentials) == ("AC1", "tok", True)
    assert config.from_number == "+15559990000" and config.api_token == "api"
    assert config.stream_key == "s3" and config.api_url == "http://127.0.0.1:9"
    assert config.url("/twilio/status") == "https://bots.example.com/twilio/status"
    assert "tok" not in repr(config) and "s3" not in repr(config) and "api'" not in repr(config)


def test_defaults(monkeypatch):
    for name in ("TWILIO_FROM_NUMBER", "STEPCALL_STREAM_SECRET", "STEPCALL_API_TOKEN",
                 "STEPCALL_TWILIO_API_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    config = TwilioConfig.from_settings(Settings.from_env())
    assert config.api_url == DEFAULT_API_URL and not config.has_credentials
    assert config.stream_key is None and config.api_token is None
