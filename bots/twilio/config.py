"""TwilioConfig: the Twilio-related settings the bot server, ``stepcall dial`` and call control use.

Built from :class:`stepcall.settings.Settings` (which reads the environment) by
:meth:`TwilioConfig.from_settings`. The env vars behind it:

| env var | default | meaning |
|---|---|---|
| TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN | (none) | REST API credentials; the token also validates webhooks |
| TWILIO_FROM_NUMBER | (none) | caller ID of outbound calls when the flow lists no phone number |
| STEPCALL_STREAM_SECRET | (TWILIO_AUTH_TOKEN) | key of the per-call media-stream tokens |
| STEPCALL_API_TOKEN | (none) | bearer token of ``POST /calls/outbound``; unset = endpoint disabled |
| STEPCALL_TWILIO_API_URL | https://api.twilio.com | Twilio REST API base URL (a local fake in tests) |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_API_URL = "https://api.twilio.com"
DEFAULT_STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")


def _setting(settings: Any, name: str) -> str | None:
    return getattr(settings, name, None) or None


@dataclass(frozen=True)
class TwilioConfig:
    """Credentials and URLs for talking to Twilio and for checking what Twilio sends us."""

    base_url: str  # our public base URL (webhooks, media stream, whisper)
    account_sid: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    from_number: str | None = None
    stream_secret: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    status_events: tuple[str, ...] = DEFAULT_STATUS_EVENTS

    @classmethod
    def from_settings(cls, settings: Any) -> TwilioConfig:
        """Read the Twilio settings (see the module docstring for the env vars)."""
        return cls(
            base_url=settings.base_url,
            account_sid=settings.twilio_account_sid or None,
            auth_token=settings.twilio_auth_token or None,
            from_number=_setting(settings, "twilio_from_number"),
            stream_secret=_setting(settings, "stream_secret"),
            api_token=_setting(settings, "api_token"),
            api_url=(_setting(settings, "twilio_api_url") or DEFAULT_API_URL).rstrip("/"),
        )

    @property
    def has_credentials(self) -> bool:
        """True when the REST API can be used (account SID and auth token set)."""
        return bool(self.account_sid and self.auth_token)

    @property
    def stream_key(self) -> str | None:
        """The key of media-stream tokens: STEPCALL_STREAM_SECRET, else the Twilio auth token."""
        return self.stream_secret or self.auth_token

    def url(self, path: str) -> str:
        """Our public URL for ``path`` (``/twilio/status`` → ``https://host/twilio/status``)."""
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")
