"""Model-service protocol v1: message models, parsing/validation and JSON encoding.

Shared by the server (``model_service/server.py``) and the client (``pipeline/step_audio2/client.py``);
the wire format is specified in ``stepcall/PROTOCOL.md``. Text WebSocket messages are JSON
objects with a ``"type"``; binary messages are little-endian PCM16 mono audio (not modelled here).

Every message and event is a pydantic model whose ``type`` is a ``Literal`` field, and its rules
are declared on its fields (types, bounds, choices); :data:`ClientMessage` and
:data:`ServerEvent` are the unions that parsing picks from by ``type``.

- :func:`parse_client_message` validates a client → server text message and returns its model,
  raising :class:`ProtocolError` (``code`` is a protocol error code) for anything malformed.
- :func:`parse_server_event` does the same for server → client events (used by the client).
- :func:`message_to_json` / :func:`event_to_json` encode either direction.

Reading the wire: JSON types are strict (a string is not a number, ``true`` is not 1; ``8000.0``
is the integer 8000), unknown extra fields are ignored (forward compatibility), a ``null`` field
is an absent one (its default applies), and a refusal is a :class:`ProtocolError` whose text
names the message and the field (``session.start: 'call_id' must be a string, got int``).
Constructing a model in Python validates it the pydantic way (lax types, the same rules).

Measured against the hand-written checks these replaced (``benchmarks/protocol_parse.py``,
RESULTS.md): parsing a small message costs 0.3-2 µs more, encoding is 1.3-6.7x faster, a
``turn.check`` costs the same (JSON and base64 are the whole of it).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    FiniteFloat,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

PROTOCOL_VERSION = 1
SAMPLE_RATES = (8000, 16000, 24000, 48000)
MAX_TEXT_BYTES = 64 * 1024  # a text message larger than this is refused with ``too_large``
#: ``turn.check`` carries its audio (base64 PCM16, up to MAX_TURN_CHECK_SECS at 48 kHz): the one
#: message allowed past MAX_TEXT_BYTES, up to this size.
MAX_TURN_CHECK_BYTES = 1536 * 1024
MAX_TURN_CHECK_SECS = 8.0  # the turn model reads the last 8 s of a turn
MAX_AUDIO_SECONDS = 1.0  # a binary message longer than this (at the input rate) is ``too_large``
TEXT_ROLES = ("human", "system", "assistant")
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


TIMING_KEYS = ("queue_ms", "prefill_ms", "first_code_ms", "first_audio_ms", "total_ms")
USAGE_KEYS = ("prompt_tokens", "completion_tokens")

# --------------------------------------------------------------------------------------------
# field types
# --------------------------------------------------------------------------------------------

#: The validation context of a message read from the wire (:func:`parse_client_message`,
#: :func:`parse_server_event`): the leniencies of reading (nulls, empty objects, JSON-string
#: tool arguments) apply only there.
_WIRE: dict[str, bool] = {"wire": True}


def _on_wire(info: ValidationInfo) -> bool:
    return info.context is _WIRE


class _Absent:
    """A field the wire requires but the message lacks (one with a default in Python): no field
    type accepts it, and its error reads ``missing 'name'``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _integral(value: Any) -> Any:
    return int(value) if type(value) is float and value.is_integer() else value


#: An integer; a JSON number with an integral value counts (``8000.0`` is 8000).
Integer = Annotated[int, BeforeValidator(_integral)]


def _one_of(choices: tuple) -> AfterValidator:
    def check(value: Any) -> Any:
        if value not in choices:
            raise PydanticCustomError(
                "one_of",
                "must be one of {choices}, got {got}",
                {"choices": list(choices), "got": repr(value)},
            )
        return value

    return AfterValidator(check)


SampleRate = Annotated[Integer, _one_of(SAMPLE_RATES)]
TextRole = Annotated[str, _one_of(TEXT_ROLES)]


def _named_function(tool: dict[str, Any]) -> dict[str, Any]:
    spec = tool.get("function", tool)
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise PydanticCustomError("function_name", "has no function name")
    return tool


#: An OpenAI function tool (``{"type": "function", "function": {"name": ...}}``) or a bare
#: function spec (``{"name": ...}``): an object with a non-empty function name.
Tool = Annotated[dict[str, Any], AfterValidator(_named_function)]


def _version(value: Any) -> Any:
    if value is not _ABSENT and (isinstance(value, bool) or value != PROTOCOL_VERSION):
        raise PydanticCustomError(
            "protocol_version",
            "unsupported protocol version {version}; this server speaks {ours}",
            {"version": repr(value), "ours": PROTOCOL_VERSION},
        )
    return value


#: ``session.start``'s ``protocol``: this version, or a ``protocol_version`` error.
ProtocolVersion = Annotated[Integer, BeforeValidator(_version)]

#: A flag a lenient client reads by its truth (any JSON value; absent or null is false).
Truthy = Annotated[bool, BeforeValidator(bool)]


def _object(value: Any, info: ValidationInfo) -> Any:
    """On the wire, an absent or empty (``false``, ``0``, ``""``, ``[]``) object is ``{}``."""
    return (value or {}) if _on_wire(info) else value


def _timings(value: Any, info: ValidationInfo) -> Any:
    value = _object(value, info)
    if _on_wire(info) and isinstance(value, dict):
        return dict.fromkeys(TIMING_KEYS) | value
    return value


def _usage(value: Any, info: ValidationInfo) -> Any:
    value = _object(value, info)
    if _on_wire(info) and isinstance(value, dict):
        return dict.fromkeys(USAGE_KEYS, 0) | {k: v for k, v in value.items() if v is not None}
    return value


def _arguments(value: Any, info: ValidationInfo) -> Any:
    value = _object(value, info)
    if _on_wire(info) and isinstance(value, str):  # tolerate an OpenAI-style JSON string
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:
            raise PydanticCustomError(
                "json_string", "is not valid JSON: {error}", {"error": str(e)}
            ) from e
    return value


#: ``response.done`` timings (ms): read from the wire with every :data:`TIMING_KEYS` key (None
#: when not sent) and whatever else the server sends, values as sent.
Timings = Annotated[dict[str, Any], BeforeValidator(_timings)]


class Usage(TypedDict, total=False):
    """``response.done`` token usage: read from the wire with both keys (0 when not sent), other
    keys dropped."""

    prompt_tokens: Integer
    completion_tokens: Integer


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


class _Message(BaseModel):
    """A client message or server event; on the wire, a ``null`` field is an absent one (except
    those in ``_null_is_a_value``), and the fields in ``_wire_required`` must be there even
    though Python gives them a default."""

    _wire_required: ClassVar[tuple[str, ...]] = ()
    _null_is_a_value: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _read_wire(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context is not _WIRE or not isinstance(data, dict):
            return data
        if None in data.values():
            kept = cls._null_is_a_value
            data = {k: v for k, v in data.items() if v is not None or k in kept}
        if cls._wire_required:
            missing = [name for name in cls._wire_required if name not in data]
            if missing:
                data = {**data, **dict.fromkeys(missing, _ABSENT)}
        return data


# --------------------------------------------------------------------------------------------
# client → server
# --------------------------------------------------------------------------------------------


class Sampling(BaseModel, extra="forbid"):
    """Optional decoding overrides of ``session.start`` (unset fields keep the backend default);
    an unknown field is refused."""

    temperature: Annotated[FiniteFloat, Field(ge=0)] | None = None
    top_p: Annotated[FiniteFloat, Field(gt=0, le=1)] | None = None
    top_k: Annotated[Integer, Field(ge=0)] | None = None
    repetition_penalty: Annotated[FiniteFloat, Field(gt=0)] | None = None
    seed: Integer | None = None


class SessionStart(_Message):
    """``session.start``: must be the first message of a connection."""

    type: Literal["session.start"] = "session.start"
    call_id: str = ""
    system_prompt: str = ""
    voice: str | None = None
    style: str | None = None
    tools: list[Tool] = Field(default_factory=list)
    input_sample_rate: SampleRate = 16000
    output_sample_rate: SampleRate = 24000
    max_response_tokens: Annotated[Integer, Field(gt=0)] | None = None
    sampling: Sampling | None = None
    #: Send ``input_audio.transcript`` events: what the caller said in each committed turn.
    input_transcription: bool = False
    protocol: ProtocolVersion = PROTOCOL_VERSION

    _wire_required = ("protocol", "input_sample_rate", "output_sample_rate")
    _null_is_a_value = frozenset({"protocol", "input_transcription"})


class InputAudioCommit(_Message):
    """``input_audio.commit``: the user turn is complete."""

    type: Literal["input_audio.commit"] = "input_audio.commit"


class InputAudioClear(_Message):
    """``input_audio.clear``: drop the uncommitted user audio."""

    type: Literal["input_audio.clear"] = "input_audio.clear"


class InputTextAppend(_Message):
    """``input_text.append``: a text message into the history (DTMF, flow instructions, or with
    role ``assistant`` a bot turn said outside a response, e.g. a pre-rendered greeting)."""

    type: Literal["input_text.append"] = "input_text.append"
    text: str = ""
    role: TextRole = "human"

    _wire_required = ("text",)


class ResponseCreate(_Message):
    """``response.create``: generate a reply now (``instructions`` apply to this one only)."""

    type: Literal["response.create"] = "response.create"
    instructions: str | None = None


class ResponseCancel(_Message):
    """``response.cancel``: barge-in; the history keeps only ``heard_ms`` of the bot's audio."""

    type: Literal["response.cancel"] = "response.cancel"
    heard_ms: Annotated[FiniteFloat, Field(ge=0)] | None = None


class ToolResult(_Message):
    """``tool.result``: the output of a ``tool.call``."""

    type: Literal["tool.result"] = "tool.result"
    call_id: str = ""
    output: str = ""

    _wire_required = ("call_id", "output")
    _null_is_a_value = frozenset({"output"})


class SessionUpdate(_Message):
    """``session.update``: change persona/voice/style/tools; ``None`` fields stay unchanged."""

    type: Literal["session.update"] = "session.update"
    system_prompt: str | None = None
    voice: str | None = None
    style: str | None = None
    tools: list[Tool] | None = None


class SessionEnd(_Message):
    """``session.end``: the server answers ``session.ended`` and closes."""

    type: Literal["session.end"] = "session.end"


class TurnCheck(_Message):
    """``turn.check``: judge whether the caller's turn is complete from its audio (the turn
    model, Smart Turn v3, on the service); answered by a ``turn.verdict`` with the same
    ``check_id``. ``audio`` is base64 PCM16 mono at ``sample_rate``, at most
    ``MAX_TURN_CHECK_SECS``."""

    type: Literal["turn.check"] = "turn.check"
    check_id: Annotated[Integer, Field(ge=0)] = 0
    sample_rate: SampleRate = 16000
    audio: str = ""

    _wire_required = ("check_id", "sample_rate", "audio")

    @field_validator("audio")
    @classmethod
    def _pcm16_base64(cls, audio: str, info: ValidationInfo) -> str:
        try:
            size = len(base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError) as e:
            raise PydanticCustomError(
                "audio", "'audio' is not base64: {error}", {"error": str(e)}
            ) from e
        if size % 2:
            raise PydanticCustomError(
                "audio", "odd byte count {size} (PCM16 needs pairs)", {"size": size}
            )
        if not size:
            raise PydanticCustomError("audio", "no audio")
        rate = info.data.get("sample_rate")  # absent when it was refused
        if rate is not None and size > int(MAX_TURN_CHECK_SECS * rate) * 2:
            raise PydanticCustomError(
                "too_large",
                "{size} bytes of audio (at most {secs} s)",
                {"size": size, "secs": f"{MAX_TURN_CHECK_SECS:g}"},
            )
        return audio

    @classmethod
    def of(cls, check_id: int, pcm16: bytes, sample_rate: int) -> TurnCheck:
        """A check of ``pcm16`` (bytes of PCM16 mono at ``sample_rate``), built unchecked (as
        ever: the service judges it, and the bot's encoder need not decode its own base64)."""
        audio = base64.b64encode(pcm16).decode("ascii")
        return cls.model_construct(check_id=check_id, sample_rate=sample_rate, audio=audio)

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
# server → client (the client reads them leniently: most fields may be absent)
# --------------------------------------------------------------------------------------------


class SessionStarted(_Message):
    """``session.started``: the answer to ``session.start``."""

    type: Literal["session.started"] = "session.started"
    session_id: str
    protocol: Integer = PROTOCOL_VERSION
    backend: str = ""
    model: str = ""
    input_sample_rate: Integer = 16000
    output_sample_rate: Integer = 24000
    #: The turn model the service runs for ``turn.check`` (None: it answers none).
    turn_model: str | None = None


class ResponseStarted(_Message):
    """``response.started``."""

    type: Literal["response.started"] = "response.started"
    session_id: str = ""
    response_id: str


class TextDelta(_Message):
    """``text.delta``: text the bot speaks."""

    type: Literal["text.delta"] = "text.delta"
    session_id: str = ""
    response_id: str = ""
    text: str


class ToolCall(_Message):
    """``tool.call``: the model called a tool; answer with ``tool.result``. ``arguments`` may
    come as a JSON string (OpenAI style)."""

    type: Literal["tool.call"] = "tool.call"
    session_id: str = ""
    response_id: str = ""
    call_id: str
    name: str
    arguments: Annotated[dict[str, Any], BeforeValidator(_arguments)] = Field(default_factory=dict)


class ResponseDone(_Message):
    """``response.done``: end of a response, with timings (ms) and token usage."""

    type: Literal["response.done"] = "response.done"
    session_id: str = ""
    response_id: str
    status: str
    text: str = ""
    audio_ms: FiniteFloat = 0.0
    timings: Timings = Field(default_factory=dict, validate_default=True)
    usage: Annotated[Usage, BeforeValidator(_usage)] = Field(
        default_factory=dict, validate_default=True
    )


class ErrorEvent(_Message):
    """``error``: ``fatal`` errors are followed by a close; otherwise the session continues."""

    type: Literal["error"] = "error"
    code: str
    message: str = ""
    fatal: Truthy = False
    session_id: str | None = None
    response_id: str | None = None


class SessionEnded(_Message):
    """``session.ended``: the answer to ``session.end``; the socket closes next."""

    type: Literal["session.ended"] = "session.ended"
    session_id: str = ""


class InputAudioTranscript(_Message):
    """``input_audio.transcript``: the text of the ``item``-th committed user turn (1-based),
    sent when the session asked for ``input_transcription`` and the backend can transcribe.
    It comes after the response that followed the turn (transcribing never delays a reply)."""

    type: Literal["input_audio.transcript"] = "input_audio.transcript"
    session_id: str = ""
    item: Integer
    text: str = ""


class TurnVerdict(_Message):
    """``turn.verdict``: the answer to the ``turn.check`` with ``check_id``: ``probability``
    that the turn is complete (``complete`` when over 0.5) and the service's ``inference_ms``;
    or ``error`` (no turn model, bad audio, a failed inference) and no probability."""

    type: Literal["turn.verdict"] = "turn.verdict"
    check_id: Integer
    probability: FiniteFloat | None = None
    complete: Truthy = False
    inference_ms: FiniteFloat = 0.0
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

_CLIENT_MESSAGES: TypeAdapter[ClientMessage] = TypeAdapter(
    Annotated[ClientMessage, Field(discriminator="type")]
)
_SERVER_EVENTS: TypeAdapter[ServerEvent] = TypeAdapter(
    Annotated[ServerEvent, Field(discriminator="type")]
)

# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


def message_to_json(message: ClientMessage | ServerEvent) -> str:
    """Encode a client message or a server event (``None`` fields are left out)."""
    return json.dumps(message.model_dump(exclude_none=True), ensure_ascii=False)


#: Server events encode as client messages do.
event_to_json = message_to_json


# --------------------------------------------------------------------------------------------
# parsing
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
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        if size > MAX_TEXT_BYTES:
            raise _too_large(size) from e
        raise _bad(f"message is not valid JSON: {e}") from e
    if size > MAX_TEXT_BYTES and not (isinstance(data, dict) and data.get("type") == "turn.check"):
        raise _too_large(size)
    if not isinstance(data, dict):
        raise _bad(f"message must be a JSON object, got {type(data).__name__}")
    if "type" not in data:
        raise _bad("message has no 'type'")
    if not isinstance(data["type"], str):
        raise _bad(f"'type' must be a string, got {type(data['type']).__name__}")
    return data


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _bound(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


#: What a pydantic error type says about a field (``got``: the type of the value sent).
_PHRASES = {
    "string_type": "must be a string, got {got}",
    "int_type": "must be an integer, got {got}",
    "int_from_float": "must be an integer, got {got}",
    "float_type": "must be a number, got {got}",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false, got {got}",
    "list_type": "must be a list, got {got}",
    "dict_type": "must be an object, got {got}",
    "model_type": "must be an object, got {got}",
    "greater_than": "must be > {gt}, got {input}",
    "greater_than_equal": "must be >= {ge}, got {input}",
    "less_than_equal": "must be <= {le}, got {input}",
}
#: Custom errors whose text names what it is about (no field subject before it).
_WHOLE = ("audio", "too_large")


def _refusal(error: ValidationError, what: str) -> ProtocolError:
    """The :class:`ProtocolError` for a refused message: its first error (a ``protocol`` error
    first: the version is read before anything else), as ``<type>[.<nested>]: <field> <what is
    wrong>``."""
    errors = error.errors(include_url=False)
    first = min(errors, key=lambda e: e["loc"][1:2] != ("protocol",))
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown and unknown[0]["loc"][:-1] == first["loc"][:-1]:
        first = unknown[0]  # an object's unknown fields before its values
    kind, loc, value = first["type"], first["loc"], first["input"]
    if kind == "protocol_version":
        return ProtocolError(PROTOCOL_VERSION_ERROR, first["msg"])
    if kind == "union_tag_invalid":
        return _bad(f"unknown {what} type {first['ctx']['tag']!r}")
    tag, *path = loc
    if len(path) >= 2 and isinstance(path[-1], int):
        parents, subject = path[:-2], f"{path[-2]}[{path[-1]}]"
    else:
        parents, subject = path[:-1], f"'{path[-1]}'" if path else ""
    where = ".".join(str(part) for part in (tag, *parents))
    if kind == "missing" or value is _ABSENT:
        return _bad(f"{where}: missing {subject}")
    if kind == "extra_forbidden":
        names = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == loc[:-1])
        return _bad(f"{where}: unknown fields {names}")
    if kind in _WHOLE:
        return ProtocolError(
            TOO_LARGE if kind == "too_large" else BAD_MESSAGE, f"{where}: {first['msg']}"
        )
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        kind = "finite_number"  # an integer past float range
    phrase = _PHRASES.get(kind)
    if phrase is None:
        phrase = first["msg"]
    else:
        ctx = first.get("ctx", {})
        if any(isinstance(bound, float) for bound in ctx.values()):
            value = float(value)  # a number field's value, as it was read
        bounds = {k: _bound(v) for k, v in ctx.items()}
        phrase = phrase.format(got=_type_name(value), input=value, **bounds)
    return _bad(f"{where}: {subject} {phrase}")


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse and validate one client → server text message; raises :class:`ProtocolError`."""
    data = _load_object(text)
    try:
        return _CLIENT_MESSAGES.validate_python(data, strict=True, context=_WIRE)
    except ValidationError as e:
        raise _refusal(e, "message") from e


def parse_server_event(text: str | bytes) -> ServerEvent:
    """Parse one server → client text event; raises :class:`ProtocolError` if malformed."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _bad(f"event is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise _bad("event must be a JSON object with a string 'type'")
    try:
        return _SERVER_EVENTS.validate_python(data, strict=True, context=_WIRE)
    except ValidationError as e:
        raise _refusal(e, "event") from e


# --------------------------------------------------------------------------------------------
# POST /v1/speech (HTTP): text rendered verbatim in the bot's voice
# --------------------------------------------------------------------------------------------

SPEECH_PATH = "/v1/speech"
MAX_SPEECH_CHARS = 1000  # ``text`` after stripping: 1..this many characters


class SpeechRequest(BaseModel):
    """The JSON body of ``POST /v1/speech`` (see PROTOCOL.md): ``text`` spoken verbatim."""

    text: str
    voice: str | None = None
    style: str | None = None
    sample_rate: SampleRate = 24000

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise PydanticCustomError("empty", "must not be empty")
        if len(value) > MAX_SPEECH_CHARS:
            raise PydanticCustomError(
                "too_long", "is {n} characters; at most {limit}",
                {"n": len(value), "limit": MAX_SPEECH_CHARS},
            )
        return value


def parse_speech_request(body: str | bytes) -> SpeechRequest:
    """Parse and validate a ``/v1/speech`` body (``null`` = absent); raises ``ValueError``
    naming the field, e.g. ``'text' is 1200 characters; at most 1000``."""
    if len(body) > MAX_TEXT_BYTES:
        raise ValueError(f"body of {len(body)} bytes, over {MAX_TEXT_BYTES} bytes")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"body must be a JSON object, got {_type_name(data)}")
    if "text" not in data or data["text"] is None:
        raise ValueError("'text' is required")
    data = {k: v for k, v in data.items() if v is not None}
    try:
        return SpeechRequest.model_validate(data, strict=True)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = ".".join(str(x) for x in first["loc"]) or "body"
        raise ValueError(f"'{field}' {first['msg']}") from e
