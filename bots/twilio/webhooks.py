"""Twilio webhook signatures: every request Twilio sends us is signed with the account auth token.

Twilio signs the full public URL it requested (with the query string) plus the POST form; behind a
proxy the URL the app sees differs, so the signed URL is rebuilt from our public base URL.
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from starlette.requests import Request
from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "X-Twilio-Signature"


class WebhookValidator:
    """Checks ``X-Twilio-Signature``; with no auth token (development) accepts everything."""

    def __init__(self, auth_token: str | None, base_url: str) -> None:
        """``base_url``: our public base URL, as configured at Twilio."""
        self._validator = RequestValidator(auth_token) if auth_token else None
        self.base_url = base_url.rstrip("/")

    @property
    def enabled(self) -> bool:
        """True when signatures are checked."""
        return self._validator is not None

    def public_url(self, request: Request) -> str:
        """The URL Twilio requested, as Twilio saw it."""
        url = self.base_url + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        return url

    async def form(self, request: Request) -> dict[str, Any] | None:
        """The request's form when its signature is valid (or not checked); None when invalid."""
        form = dict(await request.form())
        if self._validator is None:
            return form
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if signature and self._validator.validate(self.public_url(request), form, signature):
            return form
        logger.warning(
            f"rejected unsigned/invalid Twilio webhook {request.url.path} "
            f"(CallSid {form.get('CallSid') or '?'})"
        )
        return None
