"""The caller simulator behind ``stepcall call``: Twilio's side of a phone call, offline.

``run_call(url, turns, options) -> CallResult`` is the library API (used by end-to-end tests);
``harness.callers.webrtc_client.run_webrtc_call(base_url, turns, options)`` places the same kind of
call over WebRTC, like the browser widget (imported on demand: it loads aiortc);
``harness.callers.cli.main(argv)`` is the command line. Both callers play one script on their
line: ``harness.callers.scripted_call`` (the turns, the call clock, latency, the results).
"""

from __future__ import annotations

from harness.callers.scripted_call import (
    CallerTurn,
    CallOptions,
    CallResult,
    MarkRecord,
    TurnResult,
)
from harness.callers.twilio_client import decode_bot_audio, run_call
from harness.callers.twilio_messages import StreamIdentity
from stepcall.audio.speech import SpeechUnavailableError, synthesize

__all__ = [
    "CallOptions", "CallResult", "CallerTurn", "MarkRecord", "SpeechUnavailableError",
    "StreamIdentity", "TurnResult", "decode_bot_audio", "run_call", "synthesize",
]
