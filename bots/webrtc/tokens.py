"""Widget call tokens: short-lived, per-bot permission to start a browser call.

With ``STEPCALL_WIDGET_SECRET`` set, ``POST /webrtc/offer`` needs a token in
``request_data.token``: ``"<expires unix time>.<nonce>.<HMAC-SHA256>"`` keyed by the secret over
the bot name, the expiry and the nonce. The site that embeds the widget mints one per page view
from its backend (``POST /webrtc/token`` with the ``STEPCALL_API_TOKEN`` bearer, or the
``stepcall widget-token`` command) and puts it in the script tag (``data-token``). A token only
calls the bot it names and stops working after ``STEPCALL_WIDGET_TOKEN_TTL_SECS``.

Without a secret (development) the offer endpoint stays open, still rate limited per IP.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from stepcall.runtime.tokens import secrets_equal, sign

DEFAULT_TTL_SECS = 600
#: Longest lifetime a token may be minted with.
MAX_TTL_SECS = 24 * 3600


@dataclass(frozen=True)
class WidgetTokenCheck:
    """Whether an offer may start a call, and why (for the log and the 401 body)."""

    ok: bool
    reason: str


def _mac(secret: str, bot: str, expires: int, nonce: str) -> str:
    return sign(secret, "stepcall-widget-v1", bot, expires, nonce)


class WidgetTokens:
    """Mints and checks widget call tokens (disabled without a secret)."""

    def __init__(self, secret: str | None, *, ttl_secs: int = DEFAULT_TTL_SECS) -> None:
        """``secret`` None or empty: tokens are neither issued nor required."""
        if ttl_secs <= 0 or ttl_secs > MAX_TTL_SECS:
            raise ValueError(
                f"STEPCALL_WIDGET_TOKEN_TTL_SECS must be in 1..{MAX_TTL_SECS}, got {ttl_secs}"
            )
        self.secret = secret or None
        self.ttl_secs = ttl_secs

    @property
    def enabled(self) -> bool:
        """True when offers need a token."""
        return self.secret is not None

    def issue(self, bot: str, *, ttl_secs: int | None = None, now: float | None = None) -> str:
        """A token for calling ``bot`` (ValueError without a secret or a bot)."""
        if self.secret is None:
            raise ValueError("widget tokens are off: set STEPCALL_WIDGET_SECRET")
        if not bot:
            raise ValueError("a widget token needs a bot name")
        ttl = self.ttl_secs if ttl_secs is None else ttl_secs
        if ttl <= 0 or ttl > MAX_TTL_SECS:
            raise ValueError(f"token lifetime must be in 1..{MAX_TTL_SECS} s, got {ttl}")
        expires = int((time.time() if now is None else now) + ttl)
        nonce = secrets.token_urlsafe(9)
        return f"{expires}.{nonce}.{_mac(self.secret, bot, expires, nonce)}"

    @staticmethod
    def expires_at(token: str) -> int | None:
        """The expiry (unix time) written in ``token``; None when malformed."""
        head = token.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def check(self, bot: str, token: object, *, now: float | None = None) -> WidgetTokenCheck:
        """Verify the token an offer carried for ``bot``."""
        if self.secret is None:
            return WidgetTokenCheck(True, "no widget secret configured: offer accepted")
        if not isinstance(token, str) or not token:
            return WidgetTokenCheck(False, "a call token is required (request_data.token)")
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1] or len(token) > 200:
            return WidgetTokenCheck(False, "malformed call token")
        expires, nonce, mac = int(parts[0]), parts[1], parts[2]
        if not secrets_equal(mac, _mac(self.secret, bot, expires, nonce)):
            return WidgetTokenCheck(False, "call token is not valid for this bot")
        if (time.time() if now is None else now) > expires:
            return WidgetTokenCheck(False, "call token expired")
        return WidgetTokenCheck(True, "call token verified")


def widget_token_command(bot: str, ttl_secs: int | None, secret: str | None, ttl_default: int) -> int:
    """``stepcall widget-token BOT``: print a call token (exit 2 without a secret)."""
    import sys

    try:
        tokens = WidgetTokens(secret, ttl_secs=ttl_default)
        token = tokens.issue(bot, ttl_secs=ttl_secs)
    except ValueError as e:
        print(f"stepcall widget-token: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0
