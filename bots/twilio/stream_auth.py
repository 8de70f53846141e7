"""Media-stream tokens: only streams of calls we answered may start a pipeline.

When our TwiML connects a call to ``/twilio/stream`` it adds a ``<Parameter name="auth">`` holding
``"<issued unix time>.<HMAC-SHA256>"`` keyed by the stream secret over the call SID, the bot name
and the issue time. Twilio echoes it in the ``start`` message's ``customParameters`` (with the
real ``callSid``); :meth:`StreamAuth.check` verifies it before a pipeline is built. Without a
secret (development) every stream is accepted and a warning is logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from stepcall.runtime.tokens import secrets_equal, sign

AUTH_PARAM = "auth"
DEFAULT_MAX_AGE_SECS = 600.0  # outbound calls fetch their TwiML when answered; streams start at once


@dataclass(frozen=True)
class StreamAuthResult:
    """Whether a stream may proceed, and why (for the log)."""

    ok: bool
    reason: str
    verified: bool = False  # True only when a token was checked (not dev mode)


def _mac(secret: str, call_sid: str, bot: str, issued: int) -> str:
    return sign(secret, "stepcall-stream-v1", call_sid, bot, issued)


class StreamAuth:
    """Issues and checks per-call media-stream tokens."""

    def __init__(self, secret: str | None, *, max_age_secs: float = DEFAULT_MAX_AGE_SECS) -> None:
        """``secret`` None or empty = development mode (accept every stream, with a warning)."""
        self.secret = secret or None
        self.max_age_secs = max_age_secs

    @property
    def enabled(self) -> bool:
        """True when tokens are issued and required."""
        return self.secret is not None

    def issue(self, call_sid: str, bot: str, *, now: float | None = None) -> str | None:
        """The token for a call's stream (None in development mode)."""
        if self.secret is None:
            return None
        if not call_sid:
            raise ValueError("a stream token needs the call SID")
        issued = int(time.time() if now is None else now)
        return f"{issued}.{_mac(self.secret, call_sid, bot, issued)}"

    def check(
        self, call_sid: str, bot: str, token: str | None, *, now: float | None = None
    ) -> StreamAuthResult:
        """Verify the token a stream's ``start`` message carried for ``call_sid`` and ``bot``."""
        if self.secret is None:
            return StreamAuthResult(True, "no stream secret configured: stream accepted unverified")
        if not token:
            return StreamAuthResult(False, "no stream token in the start message")
        issued_text, sep, mac = token.partition(".")
        if not sep or not issued_text.isdigit():
            return StreamAuthResult(False, "malformed stream token")
        issued = int(issued_text)
        if not secrets_equal(mac, _mac(self.secret, call_sid, bot, issued)):
            return StreamAuthResult(False, "stream token does not match this call and bot")
        age = (time.time() if now is None else now) - issued
        if age > self.max_age_secs or age < -60:
            return StreamAuthResult(False, f"stream token expired ({age:.0f} s old)")
        return StreamAuthResult(True, "stream token verified", verified=True)
