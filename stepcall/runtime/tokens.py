"""Shared secrets and signed tokens, checked in constant time.

- :func:`token_matches` / :func:`bearer_token`: the access tokens of the model service, the
  calls API, the dashboard (``Authorization: Bearer ...``).
- :func:`sign`: the HMAC-SHA256 (base64url, unpadded) over ``purpose|field|...`` that the
  per-call media-stream tokens (``bots/twilio/stream_auth.py``) and the widget call tokens
  (``bots/webrtc/tokens.py``) carry; the purpose string keeps one kind of token from passing
  as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def secrets_equal(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def token_matches(expected: str | None, presented: str | None) -> bool:
    """Constant-time token check; no token configured means open access."""
    if not expected:
        return True
    if presented is None:
        return False
    return secrets_equal(expected, presented)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer X`` header value (None for any other)."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def sign(secret: str, purpose: str, *fields: object) -> str:
    """HMAC-SHA256 of ``purpose|field|...`` keyed by ``secret``, base64url without padding."""
    message = "|".join([purpose, *map(str, fields)]).encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
