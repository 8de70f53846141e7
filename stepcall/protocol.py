"""Model-service protocol v1: typed messages, parsing/validation and JSON encoding.

Shared by the server (``model_service/server.py``) and the client (``pipeline/step_audio2/client.py``);
the wire format is specified in ``stepcall/PROTOCOL.md``. Text WebSocket messages are JSON
objects with a ``"type"``; binary messages are little-endian PCM16 mono audio (not modelled here).

- :func:`parse_client_message` validates a client → server text message and returns its dataclass,
  raising :class:`ProtocolError` (``code`` is a protocol error code) for anything malformed.
- :func:`parse_server_event` does the same for server → client events (used by the client).
- :func:`message_to_json` / :func:`event_to_json` encode either direction.

Unknown extra fields in a message are ignored (forward compatibility); missing or wrong-typed
known fields are ``bad_message``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
SAMPLE_RATES = (8000, 16000, 24000, 48000)
MAX_TEXT_BYTES = 64 * 1024  # a text message larger than this is refused with ``too_large``
#: ``turn.check`` carries its audio (base64 PCM16, up to MAX_TURN_CHECK_SECS at 48 kHz): the one
#: message allowed past MAX_TEXT_BYTES, up to this size.
MAX_TURN_CHECK_BYTES = 1536 * 1024
MAX_TURN_CHECK_SECS = 8.0  # the turn model reads the last 8 s of a turn
MAX_AUDIO_SECONDS = 1.0  # a binary message longer than this (at the input rate) is ``too_large``
TEXT_ROLES = ("human", "system")
RESPONSE_STATUSES = ("completed", "cancelled", "tool_call", "error")

# Error codes (``error.code``).
BUSY = "busy"
NOT_READY = "not_ready"
BAD_MESSAGE = "bad_message"
BAD_AUDIO = "bad_audio"
TOO_LARGE = "too_large"
PROTOCOL_VERSION_ERROR = "protocol_version"
NO_SESSION = "no_session"
RESPONSE_ACTIVE = "response_active"
UNKNOWN_TOOL_CALL = "unknown_tool_call"
INTERNAL = "internal"
IDLE_TIMEOUT = "idle_timeout"
ERROR_CODES = (
    BUSY,
    NOT_READY,
    BAD_MESSAGE,
    BAD_AUDIO,
    TOO_LARGE,
    PROTOCOL_VERSION_ERROR,
    NO_SESSION,
    RESPONSE_ACTIVE,
    UNKNOWN_TOOL_CALL,
    INTERNAL,
    IDLE_TIMEOUT,
)

# WebSocket close codes used by the server.
CLOSE_NORMAL = 1000
CLOSE_UNAUTHORIZED = 4401
CLOSE_BUSY = 4429
CLOSE_PROTOCOL = 4400
CLOSE_NOT_READY = 4503
CLOSE_INTERNAL = 1011


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is the error code sent back to the peer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def max_audio_bytes(sample_rate: int) -> int:
    """Largest accepted binary audio message at ``sample_rate`` (PCM16 mono)."""
    return int(sample_rate * MAX_AUDIO_SECONDS) * 2


# --------------------------------------------------------------------------------------------
# client → server
# --------------------------------------------------------------------------------------------


@dataclass
class Sampling:
    """Optional decoding overrides of ``session.start`` (unset fields keep the backend default)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None


@dataclass
class SessionStart:
    """``session.start``: must be the first message of a connection."""

    type: ClassVar[str] = "session.start"
    call_id: str = ""
    system_prompt: str = ""
    voice: str | None = None
    style: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    input_sample_rate: int = 16000
    output_sample_rate: int = 24000
    max_response_tokens: int | None = None
    sampling: Sampling | None = None
    #: Send ``input_audio.transcript`` events: what the caller said in each committed turn.
    input_transcription: bool = False
    protocol: int = PROTOCOL_VERSION


@dataclass
class InputAudioCommit:
    """``input_audio.commit``: the user turn is complete."""

    type: ClassVar[str] = "input_audio.commit"


@dataclass
class InputAudioClear:
    """``input_audio.clear``: drop the uncommitted user audio."""

    type: ClassVar[str] = "input_audio.clear"


@dataclass
class InputTextAppend:
    """``input_text.append``: a text message into the history (DTMF, flow instructions)."""

    type: ClassVar[str] = "input_text.append"
    text: str = ""
    role: str = "human"


@dataclass
class ResponseCreate:
    """``response.create``: generate a reply now (``instructions`` apply to this one only)."""

    type: ClassVar[str] = "response.create"
    instructions: str | None = None


@dataclass
class ResponseCancel:
    """``response.cancel``: barge-in; the history keeps only ``heard_ms`` of the bot's audio."""

    type: ClassVar[str] = "response.cancel"
    heard_ms: float | None = None


@dataclass
class ToolResult:
    """``tool.result``: the output of a ``tool.call``."""

    type: ClassVar[str] = "tool.result"
    call_id: str = ""
    output: str = ""


@dataclass
class SessionUpdate:
    """``session.update``: change persona/voice/style/tools; ``None`` fields stay unchanged."""

    type: ClassVar[str] = "session.update"
    system_prompt: str | None = None
    voice: str | None = None
    style: str | None = None
    tools: list[dict[str, Any]] | None = None


@dataclass
class SessionEnd:
    """``session.end``: the server answers ``session.ended`` and closes."""

    type: ClassVar[str] = "session.end"


@dataclass
class TurnCheck:
    """``turn.check``: judge whether the caller's turn is complete from its audio (the turn
    model, Smart Turn v3, on the service); answered by a ``turn.verdict`` with the same
    ``check_id``. ``audio`` is base64 PCM16 mono at ``sample_rate``, at most
    ``MAX_TURN_CHECK_SECS``."""

    type: ClassVar[str] = "turn.check"
    check_id: int = 0
    sample_rate: int = 16000
    audio: str = ""

    @classmethod
    def of(cls, check_id: int, pcm16: bytes, sample_rate: int) -> TurnCheck:
        """A check of ``pcm16`` (bytes of PCM16 mono at ``sample_rate``)."""
        return cls(check_id, sample_rate, base64.b64encode(pcm16).decode("ascii"))

    def pcm16(self) -> bytes:
        """The audio's PCM16 bytes."""
        return base64.b64decode(self.audio)


ClientMessage = (
    SessionStart
    | InputAudioCommit
    | InputAudioClear
    | InputTextAppend
    | ResponseCreate
    | ResponseCancel
    | ToolResult
    | SessionUpdate
    | SessionEnd
    | TurnCheck
)

# --------------------------------------------------------------------------------------------
# server → client
# --------------------------------------------------------------------------------------------


@dataclass
class SessionStarted:
    """``session.started``: the answer to ``session.start``."""

    type: ClassVar[str] = "session.started"
    session_id: str
    protocol: int = PROTOCOL_VERSION
    backend: str = ""
    model: str = ""
    input_sample_rate: int = 16000
    output_sample_rate: int = 24000
    #: The turn model the service runs for ``turn.check`` (None: it answers none).
    turn_model: str | None = None


@dataclass
class ResponseStarted:
    """``response.started``."""

    type: ClassVar[str] = "response.started"
    session_id: str
    response_id: str


@dataclass
class TextDelta:
    """``text.delta``: text the bot speaks."""

    type: ClassVar[str] = "text.delta"
    session_id: str
    response_id: str
    text: str


@dataclass
class ToolCall:
    """``tool.call``: the model called a tool; answer with ``tool.result``."""

    type: ClassVar[str] = "tool.call"
    session_id: str
    response_id: str
    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResponseDone:
    """``response.done``: end of a response, with timings (ms) and token usage."""

    type: ClassVar[str] = "response.done"
    session_id: str
    response_id: str
    status: str
    text: str = ""
    audio_ms: float = 0.0
    timings: dict[str, float | None] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class ErrorEvent:
    """``error``: ``fatal`` errors are followed by a close; otherwise the session continues."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool = False
    session_id: str | None = None
    response_id: str | None = None


@dataclass
class SessionEnded:
    """``session.ended``: the answer to ``session.end``; the socket closes next."""

    type: ClassVar[str] = "session.ended"
    session_id: str


@dataclass
class InputAudioTranscript:
    """``input_audio.transcript``: the text of the ``item``-th committed user turn (1-based),
    sent when the session asked for ``input_transcription`` and the backend can transcribe.
    It comes after the response that followed the turn (transcribing never delays a reply)."""

    type: ClassVar[str] = "input_audio.transcript"
    session_id: str
    item: int
    text: str


@dataclass
class TurnVerdict:
    """``turn.verdict``: the answer to the ``turn.check`` with ``check_id``: ``probability``
    that the turn is complete (``complete`` when over 0.5) and the service's ``inference_ms``;
    or ``error`` (no turn model, bad audio, a failed inference) and no probability."""

    type: ClassVar[str] = "turn.verdict"
    check_id: int
    probability: float | None = None
    complete: bool = False
    inference_ms: float = 0.0
    error: str | None = None


ServerEvent = (
    SessionStarted
    | TurnVerdict
    | InputAudioTranscript
    | ResponseStarted
    | TextDelta
    | ToolCall
    | ResponseDone
    | ErrorEvent
    | SessionEnded
)

TIMING_KEYS = ("queue_ms", "prefill_ms", "first_code_ms", "first_audio_ms", "total_ms")
USAGE_KEYS = ("prompt_tokens", "completion_tokens")

# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": obj.type}
    for key, value in asdict(obj).items():
        if value is None:
            continue
        if isinstance(value, dict) and key == "sampling":
            value = {k: v for k, v in value.items() if v is not None}
        out[key] = value
    return out


def message_to_json(message: ClientMessage) -> str:
    """Encode a client message (``None`` fields are left out)."""
    return json.dumps(_to_dict(message), ensure_ascii=False)


def event_to_json(event: ServerEvent) -> str:
    """Encode a server event (``None`` fields are left out)."""
    return json.dumps(_to_dict(event), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# parsing helpers
# --------------------------------------------------------------------------------------------


def _bad(message: str) -> ProtocolError:
    return ProtocolError(BAD_MESSAGE, message)


def _too_large(size: int) -> ProtocolError:
    return ProtocolError(TOO_LARGE, f"text message of {size} bytes, over {MAX_TEXT_BYTES} bytes")


def _load_object(text: str | bytes) -> dict[str, Any]:
    """One JSON object with a string ``type``; at most ``MAX_TEXT_BYTES`` (UTF-8), a
    ``turn.check`` at most ``MAX_TURN_CHECK_BYTES``."""
    if isinstance(text, bytes):
        size = len(text)
        if size > MAX_TURN_CHECK_BYTES:
            raise _too_large(size)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad(f"message is not UTF-8: {e}") from e
    else:
        # a str's UTF-8 size is at least its length: encode only when that could pass
        if len(text) > MAX_TURN_CHECK_BYTES:
            raise _too_large(len(text))
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > MAX_TURN_CHECK_BYTES:
            raise _too_large(size)
    too_large = _too_large(size)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        if size > MAX_TEXT_BYTES:
            raise too_large from e
        raise _bad(f"message is not valid JSON: {e}") from e
    if size > MAX_TEXT_BYTES and not (isinstance(data, dict) and data.get("type") == "turn.check"):
        raise too_large
    if not isinstance(data, dict):
        raise _bad(f"message must be a JSON object, got {type(data).__name__}")
    if "type" not in data:
        raise _bad("message has no 'type'")
    if not isinstance(data["type"], str):
        raise _bad(f"'type' must be a string, got {type(data['type']).__name__}")
    return data


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str(data: dict, key: str, msg_type: str, *, required: bool = False, default: Any = None):
    if key not in data or data[key] is None:
        if required:
            raise _bad(f"{msg_type}: missing '{key}'")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise _bad(f"{msg_type}: '{key}' must be a string, got {_type_name(value)}")
    return value


def _int(data: dict, key: str, msg_type: str, *, required: bool = False, default: Any = None):
    if key not in data or data[key] is None:
        if required:
            raise _bad(f"{msg_type}: missing '{key}'")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(f"{msg_type}: '{key}' must be an integer, got {_type_name(value)}")
    return value


def _num(data: dict, key: str, msg_type: str, *, required: bool = False, default: Any = None):
    if key not in data or data[key] is None:
        if required:
            raise _bad(f"{msg_type}: missing '{key}'")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{msg_type}: '{key}' must be a number, got {_type_name(value)}")
    try:
        number = float(value)  # an int beyond float range raises OverflowError
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _bad(f"{msg_type}: '{key}' must be a finite number")
    return number


def _rate(data: dict, key: str, msg_type: str) -> int:
    value = _int(data, key, msg_type, required=True)
    if value not in SAMPLE_RATES:
        raise _bad(f"{msg_type}: '{key}' must be one of {list(SAMPLE_RATES)}, got {value}")
    return value


def _tools(data: dict, key: str, msg_type: str) -> list[dict[str, Any]] | None:
    if key not in data or data[key] is None:
        return None
    tools = data[key]
    if not isinstance(tools, list):
        raise _bad(f"{msg_type}: '{key}' must be a list, got {_type_name(tools)}")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"{msg_type}: {key}[{i}] must be an object, got {_type_name(tool)}")
        spec = tool.get("function", tool)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise _bad(f"{msg_type}: {key}[{i}] has no function name")
    return tools


def _sampling(data: dict, msg_type: str) -> Sampling | None:
    raw = data.get("sampling")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad(f"{msg_type}: 'sampling' must be an object, got {_type_name(raw)}")
    where = f"{msg_type}.sampling"
    unknown = set(raw) - {"temperature", "top_p", "top_k", "repetition_penalty", "seed"}
    if unknown:
        raise _bad(f"{where}: unknown fields {sorted(unknown)}")
    s = Sampling(
        temperature=_num(raw, "temperature", where),
        top_p=_num(raw, "top_p", where),
        top_k=_int(raw, "top_k", where),
        repetition_penalty=_num(raw, "repetition_penalty", where),
        seed=_int(raw, "seed", where),
    )
    if s.temperature is not None and s.temperature < 0:
        raise _bad(f"{where}: 'temperature' must be >= 0, got {s.temperature}")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        raise _bad(f"{where}: 'top_p' must be in (0, 1], got {s.top_p}")
    if s.top_k is not None and s.top_k < 0:
        raise _bad(f"{where}: 'top_k' must be >= 0, got {s.top_k}")
    if s.repetition_penalty is not None and s.repetition_penalty <= 0:
        raise _bad(f"{where}: 'repetition_penalty' must be > 0, got {s.repetition_penalty}")
    return s


# --------------------------------------------------------------------------------------------
# client message parsing
# --------------------------------------------------------------------------------------------


def _parse_session_start(d: dict) -> SessionStart:
    t = SessionStart.type
    if "protocol" not in d:
        raise _bad(f"{t}: missing 'protocol'")
    protocol = d["protocol"]
    if protocol != PROTOCOL_VERSION or isinstance(protocol, bool):
        raise ProtocolError(
            PROTOCOL_VERSION_ERROR,
            f"unsupported protocol version {protocol!r}; this server speaks {PROTOCOL_VERSION}",
        )
    max_tokens = _int(d, "max_response_tokens", t)
    if max_tokens is not None and max_tokens <= 0:
        raise _bad(f"{t}: 'max_response_tokens' must be > 0, got {max_tokens}")
    return SessionStart(
        call_id=_str(d, "call_id", t, default=""),
        system_prompt=_str(d, "system_prompt", t, default=""),
        voice=_str(d, "voice", t),
        style=_str(d, "style", t),
        tools=_tools(d, "tools", t) or [],
        input_sample_rate=_rate(d, "input_sample_rate", t),
        output_sample_rate=_rate(d, "output_sample_rate", t),
        max_response_tokens=max_tokens,
        sampling=_sampling(d, t),
        input_transcription=_flag(d, "input_transcription", t),
        protocol=PROTOCOL_VERSION,
    )


def _flag(d: dict, key: str, msg_type: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"{msg_type}: '{key}' must be true or false, got {_type_name(value)}")
    return value


def _parse_text_append(d: dict) -> InputTextAppend:
    t = InputTextAppend.type
    text = _str(d, "text", t, required=True)
    role = _str(d, "role", t, default="human")
    if role not in TEXT_ROLES:
        raise _bad(f"{t}: 'role' must be one of {list(TEXT_ROLES)}, got {role!r}")
    return InputTextAppend(text=text, role=role)


def _parse_cancel(d: dict) -> ResponseCancel:
    heard = _num(d, "heard_ms", ResponseCancel.type)
    if heard is not None and heard < 0:
        raise _bad(f"{ResponseCancel.type}: 'heard_ms' must be >= 0, got {heard}")
    return ResponseCancel(heard_ms=heard)


def _parse_tool_result(d: dict) -> ToolResult:
    t = ToolResult.type
    call_id = _str(d, "call_id", t, required=True)
    if "output" not in d:
        raise _bad(f"{t}: missing 'output'")
    output = d["output"]
    if not isinstance(output, str):
        raise _bad(f"{t}: 'output' must be a string, got {_type_name(output)}")
    return ToolResult(call_id=call_id, output=output)


def _parse_update(d: dict) -> SessionUpdate:
    t = SessionUpdate.type
    return SessionUpdate(
        system_prompt=_str(d, "system_prompt", t),
        voice=_str(d, "voice", t),
        style=_str(d, "style", t),
        tools=_tools(d, "tools", t),
    )


def _parse_turn_check(d: dict) -> TurnCheck:
    t = TurnCheck.type
    check_id = _int(d, "check_id", t, required=True)
    if check_id < 0:
        raise _bad(f"{t}: 'check_id' must be >= 0, got {check_id}")
    rate = _rate(d, "sample_rate", t)
    audio = _str(d, "audio", t, required=True)
    try:
        pcm = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{t}: 'audio' is not base64: {e}") from e
    if len(pcm) % 2:
        raise _bad(f"{t}: odd byte count {len(pcm)} (PCM16 needs pairs)")
    if not pcm:
        raise _bad(f"{t}: no audio")
    limit = int(MAX_TURN_CHECK_SECS * rate) * 2
    if len(pcm) > limit:
        raise ProtocolError(
            TOO_LARGE, f"{t}: {len(pcm)} bytes of audio (at most {MAX_TURN_CHECK_SECS:g} s)"
        )
    return TurnCheck(check_id=check_id, sample_rate=rate, audio=audio)


_CLIENT_PARSERS = {
    SessionStart.type: _parse_session_start,
    InputAudioCommit.type: lambda d: InputAudioCommit(),
    InputAudioClear.type: lambda d: InputAudioClear(),
    InputTextAppend.type: _parse_text_append,
    ResponseCreate.type: lambda d: ResponseCreate(
        instructions=_str(d, "instructions", ResponseCreate.type)
    ),
    ResponseCancel.type: _parse_cancel,
    ToolResult.type: _parse_tool_result,
    SessionUpdate.type: _parse_update,
    SessionEnd.type: lambda d: SessionEnd(),
    TurnCheck.type: _parse_turn_check,
}


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse and validate one client → server text message; raises :class:`ProtocolError`."""
    data = _load_object(text)
    parser = _CLIENT_PARSERS.get(data["type"])
    if parser is None:
        raise _bad(f"unknown message type {data['type']!r}")
    return parser(data)


# --------------------------------------------------------------------------------------------
# server event parsing (client side; lenient about extra fields)
# --------------------------------------------------------------------------------------------


def _parse_done(d: dict) -> ResponseDone:
    t = ResponseDone.type
    status = _str(d, "status", t, required=True)
    timings = d.get("timings") or {}
    usage = d.get("usage") or {}
    if not isinstance(timings, dict) or not isinstance(usage, dict):
        raise _bad(f"{t}: 'timings' and 'usage' must be objects")
    return ResponseDone(
        session_id=_str(d, "session_id", t, default=""),
        response_id=_str(d, "response_id", t, required=True),
        status=status,
        text=_str(d, "text", t, default=""),
        audio_ms=_num(d, "audio_ms", t, default=0.0),
        timings={k: timings.get(k) for k in TIMING_KEYS} | timings,
        usage={k: _int(usage, k, f"{t}.usage", default=0) for k in USAGE_KEYS},
    )


def _parse_tool_call(d: dict) -> ToolCall:
    t = ToolCall.type
    args = d.get("arguments") or {}
    if isinstance(args, str):  # tolerate an OpenAI-style JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise _bad(f"{t}: 'arguments' is not valid JSON: {e}") from e
    if not isinstance(args, dict):
        raise _bad(f"{t}: 'arguments' must be an object, got {_type_name(args)}")
    return ToolCall(
        session_id=_str(d, "session_id", t, default=""),
        response_id=_str(d, "response_id", t, default=""),
        call_id=_str(d, "call_id", t, required=True),
        name=_str(d, "name", t, required=True),
        arguments=args,
    )


def _parse_verdict(d: dict) -> TurnVerdict:
    t = TurnVerdict.type
    return TurnVerdict(
        check_id=_int(d, "check_id", t, required=True),
        probability=_num(d, "probability", t),
        complete=bool(d.get("complete", False)),
        inference_ms=_num(d, "inference_ms", t, default=0.0),
        error=_str(d, "error", t),
    )


_SERVER_PARSERS = {
    SessionStarted.type: lambda d: SessionStarted(
        session_id=_str(d, "session_id", "session.started", required=True),
        protocol=_int(d, "protocol", "session.started", default=PROTOCOL_VERSION),
        backend=_str(d, "backend", "session.started", default=""),
        model=_str(d, "model", "session.started", default=""),
        input_sample_rate=_int(d, "input_sample_rate", "session.started", default=16000),
        output_sample_rate=_int(d, "output_sample_rate", "session.started", default=24000),
        turn_model=_str(d, "turn_model", "session.started"),
    ),
    TurnVerdict.type: _parse_verdict,
    ResponseStarted.type: lambda d: ResponseStarted(
        session_id=_str(d, "session_id", "response.started", default=""),
        response_id=_str(d, "response_id", "response.started", required=True),
    ),
    TextDelta.type: lambda d: TextDelta(
        session_id=_str(d, "session_id", "text.delta", default=""),
        response_id=_str(d, "response_id", "text.delta", default=""),
        text=_str(d, "text", "text.delta", required=True),
    ),
    ToolCall.type: _parse_tool_call,
    ResponseDone.type: _parse_done,
    ErrorEvent.type: lambda d: ErrorEvent(
        code=_str(d, "code", "error", required=True),
        message=_str(d, "message", "error", default=""),
        fatal=bool(d.get("fatal", False)),
        session_id=_str(d, "session_id", "error"),
        response_id=_str(d, "response_id", "error"),
    ),
    SessionEnded.type: lambda d: SessionEnded(
        session_id=_str(d, "session_id", "session.ended", default="")
    ),
    InputAudioTranscript.type: lambda d: InputAudioTranscript(
        session_id=_str(d, "session_id", "input_audio.transcript", default=""),
        item=_int(d, "item", "input_audio.transcript", required=True),
        text=_str(d, "text", "input_audio.transcript", default=""),
    ),
}


def parse_server_event(text: str | bytes) -> ServerEvent:
    """Parse one server → client text event; raises :class:`ProtocolError` if malformed."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _bad(f"event is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise _bad("event must be a JSON object with a string 'type'")
    parser = _SERVER_PARSERS.get(data["type"])
    if parser is None:
        raise _bad(f"unknown event type {data['type']!r}")
    return parser(data)
