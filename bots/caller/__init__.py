"""The caller simulator behind ``stepcall call``: Twilio's side of a phone call, offline.

``run_call(url, turns, options) -> CallResult`` is the library API (used by end-to-end tests);
``bots.caller.webrtc_client.run_webrtc_call(base_url, turns, options)`` places the same kind of
call over WebRTC, like the browser widget (imported on demand: it loads aiortc);
``bots.caller.cli.main(argv)`` is the command line.
"""

from __future__ import annotations

from bots.caller.speech import SpeechUnavailableError, synthesize
from bots.caller.twilio_client import (
    CallerTurn,
    CallOptions,
    CallResult,
    MarkRecord,
    TurnResult,
    decode_bot_audio,
    run_call,
)
from bots.caller.twilio_messages import StreamIdentity

__all__ = [
    "CallOptions", "CallResult", "CallerTurn", "MarkRecord", "SpeechUnavailableError",
    "StreamIdentity", "TurnResult", "decode_bot_audio", "run_call", "synthesize",
]
