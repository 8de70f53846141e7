"""Twilio Media Streams messages, built exactly as Twilio sends them (the caller's side).

Every message but ``connected`` carries ``sequenceNumber`` (a string counting up from "1") and
``streamSid``. Numbers inside messages are strings, as on the wire.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field

MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter prefix + 32 lowercase hex digits (34 chars)."""
    if len(prefix) != 2 or not prefix.isalpha():
        raise ValueError(f"SID prefix must be two letters, got {prefix!r}")
    return prefix.upper() + secrets.token_hex(16)


@dataclass
class StreamIdentity:
    """The SIDs of one simulated call."""

    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    account_sid: str = field(default_factory=lambda: new_sid("AC"))


class TwilioMessageBuilder:
    """Builds the caller-side messages of one stream, numbering them in order."""

    def __init__(self, identity: StreamIdentity) -> None:
        self.identity = identity
        self._seq = 0

    def _next(self) -> str:
        self._seq += 1
        return str(self._seq)

    @staticmethod
    def connected() -> dict:
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    def start(self, custom_parameters: dict[str, str] | None = None) -> dict:
        ident = self.identity
        return {
            "event": "start",
            "sequenceNumber": self._next(),
            "start": {
                "accountSid": ident.account_sid,
                "streamSid": ident.stream_sid,
                "callSid": ident.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": dict(MEDIA_FORMAT),
                "customParameters": dict(custom_parameters or {}),
            },
            "streamSid": ident.stream_sid,
        }

    def media(self, chunk: int, timestamp_ms: int, payload: bytes) -> dict:
        """One inbound audio frame; ``chunk`` counts from 1, ``timestamp_ms`` from stream start."""
        return {
            "event": "media",
            "sequenceNumber": self._next(),
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": self.identity.stream_sid,
        }

    def dtmf(self, digit: str) -> dict:
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return {
            "event": "dtmf",
            "streamSid": self.identity.stream_sid,
            "sequenceNumber": self._next(),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    def mark(self, name: str) -> dict:
        """The echo of a server ``mark`` once the audio before it has played (or was cleared)."""
        return {
            "event": "mark",
            "sequenceNumber": self._next(),
            "streamSid": self.identity.stream_sid,
            "mark": {"name": name},
        }

    def stop(self) -> dict:
        return {
            "event": "stop",
            "sequenceNumber": self._next(),
            "streamSid": self.identity.stream_sid,
            "stop": {"accountSid": self.identity.account_sid, "callSid": self.identity.call_sid},
        }
