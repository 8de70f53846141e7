"""Secrets out of the logs: access tokens masked in uvicorn's and websockets' log records.

Bearer tokens travel in WebSocket URLs (``?token=``, the model service and dashboard links) and
in ``Authorization`` headers (logged by websockets at DEBUG); every server of the product
installs :func:`install_log_redaction` at start-up.
"""

from __future__ import annotations

import logging
import re

_TOKEN_IN_QUERY = re.compile(r"(?i)(token=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")


def _redact(text: str) -> str:
    lowered = text.lower()
    if "token=" in lowered:
        text = _TOKEN_IN_QUERY.sub(r"\1***", text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\1***", text)
    return text


class RedactTokenFilter(logging.Filter):
    """Masks ``token=...`` and ``Bearer ...`` in log records: uvicorn logs WebSocket paths with
    their query, websockets (at DEBUG) the handshake headers with ``Authorization``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            if any(isinstance(a, str) for a in args):
                record.args = tuple(_redact(a) if isinstance(a, str) else a for a in args)
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactTokenFilter` to uvicorn's and websockets' loggers (once)."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn", "websockets",
                 "websockets.client", "websockets.server"):
        log = logging.getLogger(name)
        if not any(isinstance(f, RedactTokenFilter) for f in log.filters):
            log.addFilter(RedactTokenFilter())
