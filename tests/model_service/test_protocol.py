"""Protocol v1 parsing, validation and encoding (stepcall/protocol.py)."""

from __future__ import annotations

import json

import pytest

from stepcall import protocol as p

START = {
    "type": "session.start",
    "protocol": 1,
    "call_id": "CA123",
    "system_prompt": "You are a receptionist.",
    "voice": "alice",
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    "input_sample_rate": 8000,
    "output_sample_rate": 8000,
    "max_response_tokens": 300,
    "sampling": {"temperature": 0.0, "seed": 7},
}


def _with(**changes) -> str:
    d = dict(START)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d)


def test_session_start_parses_every_field() -> None:
    m = p.parse_client_message(json.dumps(START))
    assert isinstance(m, p.SessionStart)
    assert m.call_id == "CA123" and m.voice == "alice" and m.style is None
    assert m.input_sample_rate == 8000 and m.output_sample_rate == 8000
    assert m.tools[0]["function"]["name"] == "lookup"
    assert m.max_response_tokens == 300
    assert m.sampling == p.Sampling(temperature=0.0, seed=7)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"type": "input_audio.commit"}', p.InputAudioCommit()),
        ('{"type": "input_audio.clear"}', p.InputAudioClear()),
        ('{"type": "input_text.append", "text": "1"}', p.InputTextAppend(text="1", role="human")),
        (
            '{"type": "input_text.append", "text": "be brief", "role": "system"}',
            p.InputTextAppend(text="be brief", role="system"),
        ),
        ('{"type": "response.create"}', p.ResponseCreate()),
        (
            '{"type": "response.create", "instructions": "greet"}',
            p.ResponseCreate(instructions="greet"),
        ),
        ('{"type": "response.cancel", "heard_ms": 1250}', p.ResponseCancel(heard_ms=1250.0)),
        ('{"type": "response.cancel"}', p.ResponseCancel(heard_ms=None)),
        (
            '{"type": "tool.result", "call_id": "c1", "output": "{}"}',
            p.ToolResult(call_id="c1", output="{}"),
        ),
        ('{"type": "session.update", "voice": "bob"}', p.SessionUpdate(voice="bob")),
        ('{"type": "session.update", "tools": []}', p.SessionUpdate(tools=[])),
        ('{"type": "session.end"}', p.SessionEnd()),
        ('{"type": "session.end", "future_field": 1}', p.SessionEnd()),
    ],
)
def test_valid_messages(text: str, message: p.ClientMessage) -> None:
    assert p.parse_client_message(text) == message


@pytest.mark.parametrize(
    "text, code, fragment",
    [
        ("not json", p.BAD_MESSAGE, "not valid JSON"),
        ("[1, 2]", p.BAD_MESSAGE, "JSON object"),
        ('{"kind": "x"}', p.BAD_MESSAGE, "no 'type'"),
        ('{"type": 5}', p.BAD_MESSAGE, "'type' must be a string"),
        ('{"type": "response.explode"}', p.BAD_MESSAGE, "unknown message type 'response.explode'"),
        ('{"type": "input_text.append"}', p.BAD_MESSAGE, "missing 'text'"),
        ('{"type": "input_text.append", "text": 5}', p.BAD_MESSAGE, "'text' must be a string"),
        ('{"type": "input_text.append", "text": "x", "role": "bot"}', p.BAD_MESSAGE, "'role'"),
        (
            '{"type": "response.cancel", "heard_ms": "soon"}',
            p.BAD_MESSAGE,
            "'heard_ms' must be a number",
        ),
        ('{"type": "response.cancel", "heard_ms": -5}', p.BAD_MESSAGE, ">= 0"),
        ('{"type": "response.cancel", "heard_ms": true}', p.BAD_MESSAGE, "'heard_ms'"),
        ('{"type": "tool.result", "output": "x"}', p.BAD_MESSAGE, "missing 'call_id'"),
        ('{"type": "tool.result", "call_id": "c"}', p.BAD_MESSAGE, "missing 'output'"),
        (
            '{"type": "tool.result", "call_id": "c", "output": {"a": 1}}',
            p.BAD_MESSAGE,
            "'output' must be a string",
        ),
        ('{"type": "session.update", "tools": {}}', p.BAD_MESSAGE, "'tools' must be a list"),
        (
            '{"type": "session.update", "tools": [{"type": "function"}]}',
            p.BAD_MESSAGE,
            "tools[0] has no function name",
        ),
        ('{"type": "response.create", "instructions": 3}', p.BAD_MESSAGE, "'instructions'"),
        (_with(protocol=2), p.PROTOCOL_VERSION_ERROR, "unsupported protocol version 2"),
        (_with(protocol=...), p.BAD_MESSAGE, "missing 'protocol'"),
        (_with(input_sample_rate=...), p.BAD_MESSAGE, "missing 'input_sample_rate'"),
        (_with(input_sample_rate=44100), p.BAD_MESSAGE, "'input_sample_rate' must be one of"),
        (
            _with(output_sample_rate="8000"),
            p.BAD_MESSAGE,
            "'output_sample_rate' must be an integer",
        ),
        (_with(call_id=12), p.BAD_MESSAGE, "'call_id' must be a string"),
        (_with(tools=["lookup"]), p.BAD_MESSAGE, "tools[0] must be an object"),
        (_with(max_response_tokens=0), p.BAD_MESSAGE, "'max_response_tokens' must be > 0"),
        (_with(sampling={"temperature": -1}), p.BAD_MESSAGE, "'temperature' must be >= 0"),
        (_with(sampling={"top_p": 1.5}), p.BAD_MESSAGE, "'top_p'"),
        (_with(sampling={"beam": 4}), p.BAD_MESSAGE, "unknown fields ['beam']"),
        (_with(sampling=[]), p.BAD_MESSAGE, "'sampling' must be an object"),
        (
            '{"type": "input_text.append", "text": "' + "x" * 70000 + '"}',
            p.TOO_LARGE,
            "over 65536 bytes",
        ),
    ],
)
def test_invalid_messages(text: str, code: str, fragment: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(text)
    assert info.value.code == code
    assert fragment in info.value.message


def test_size_cap_counts_utf8_bytes_not_characters() -> None:
    # 30000 three-byte characters: under 64 Ki characters but over 64 KiB
    text = json.dumps({"type": "input_text.append", "text": "語" * 30000}, ensure_ascii=False)
    assert len(text) < p.MAX_TEXT_BYTES
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(text)
    assert info.value.code == p.TOO_LARGE


def test_client_messages_round_trip_through_json() -> None:
    start = p.parse_client_message(json.dumps(START))
    assert p.parse_client_message(p.message_to_json(start)) == start
    for m in (
        p.ResponseCancel(heard_ms=320.0),
        p.ToolResult(call_id="c1", output="ok"),
        p.SessionUpdate(system_prompt="new", tools=[{"name": "f"}]),
        p.InputTextAppend(text="5", role="human"),
    ):
        assert p.parse_client_message(p.message_to_json(m)) == m


def test_none_fields_are_left_out_of_the_wire_format() -> None:
    wire = json.loads(p.message_to_json(p.SessionUpdate(voice="bob")))
    assert wire == {"type": "session.update", "voice": "bob"}
    start = json.loads(p.message_to_json(p.SessionStart(sampling=p.Sampling(seed=3))))
    assert start["sampling"] == {"seed": 3} and "max_response_tokens" not in start


@pytest.mark.parametrize(
    "event",
    [
        p.SessionStarted(
            session_id="s1",
            backend="reference",
            model="tiny",
            input_sample_rate=8000,
            output_sample_rate=8000,
        ),
        p.ResponseStarted(session_id="s1", response_id="r1"),
        p.TextDelta(session_id="s1", response_id="r1", text="héllo"),
        p.ToolCall(
            session_id="s1", response_id="r1", call_id="c1", name="lookup", arguments={"q": "x"}
        ),
        p.ResponseDone(
            session_id="s1",
            response_id="r1",
            status="completed",
            text="hi",
            audio_ms=480.0,
            timings={k: 1.0 for k in p.TIMING_KEYS},
            usage={"prompt_tokens": 10, "completion_tokens": 20},
        ),
        p.ErrorEvent(code="busy", message="full", fatal=True, session_id="s1"),
        p.SessionEnded(session_id="s1"),
    ],
)
def test_server_events_round_trip(event: p.ServerEvent) -> None:
    wire = p.event_to_json(event)
    assert json.loads(wire)["type"] == event.type
    assert p.parse_server_event(wire) == event


def test_server_event_tool_arguments_may_be_a_json_string() -> None:
    ev = p.parse_server_event(
        '{"type": "tool.call", "call_id": "c", "name": "f", "arguments": "{\\"a\\": 1}"}'
    )
    assert isinstance(ev, p.ToolCall) and ev.arguments == {"a": 1}


@pytest.mark.parametrize("text", ["nope", '{"type": "mystery"}', '{"type": "text.delta"}', "[]"])
def test_malformed_server_events_raise_protocol_error(text: str) -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_server_event(text)


def test_input_transcription_flag_and_transcript_event() -> None:
    base = {
        "type": "session.start",
        "protocol": p.PROTOCOL_VERSION,
        "input_sample_rate": 8000,
        "output_sample_rate": 8000,
    }
    assert p.parse_client_message(json.dumps(base)).input_transcription is False
    on = p.parse_client_message(json.dumps({**base, "input_transcription": True}))
    assert on.input_transcription is True
    with pytest.raises(p.ProtocolError, match="'input_transcription' must be true or false"):
        p.parse_client_message(json.dumps({**base, "input_transcription": "yes"}))
    event = p.InputAudioTranscript(session_id="sess_1", item=2, text="what time do you open")
    assert p.parse_server_event(p.event_to_json(event)) == event
    with pytest.raises(p.ProtocolError, match="missing 'item'"):
        p.parse_server_event(json.dumps({"type": "input_audio.transcript", "text": "x"}))


@pytest.mark.parametrize(
    "changes, field, value",
    [
        ({"call_id": None, "voice": None}, "call_id", ""),  # null: absent, the default applies
        ({"input_sample_rate": 8000.0}, "input_sample_rate", 8000),  # an integral number
        ({"protocol": 1.0}, "protocol", 1),
        ({"tools": None}, "tools", []),
        ({"sampling": {"top_k": 2.0, "seed": None}}, "sampling", p.Sampling(top_k=2)),
    ],
)
def test_session_start_reads_nulls_and_integral_numbers(changes, field, value) -> None:
    m = p.parse_client_message(_with(**changes))
    assert getattr(m, field) == value and type(getattr(m, field)) is type(value)


@pytest.mark.parametrize(
    "text, code, fragment",
    [
        (_with(protocol=None), p.PROTOCOL_VERSION_ERROR, "unsupported protocol version None"),
        (_with(protocol=True), p.PROTOCOL_VERSION_ERROR, "unsupported protocol version True"),
        # the version is read first: a v2 client's other fields do not matter
        (
            json.dumps({"type": "session.start", "protocol": 2, "call_id": 5}),
            p.PROTOCOL_VERSION_ERROR,
            "this server speaks 1",
        ),
        (_with(input_transcription=None), p.BAD_MESSAGE, "must be true or false, got null"),
        (_with(input_sample_rate=True), p.BAD_MESSAGE, "must be an integer, got bool"),
        (_with(max_response_tokens=2.5), p.BAD_MESSAGE, "must be an integer, got float"),
        (_with(sampling={"beam": 1, "top_p": 5}), p.BAD_MESSAGE, "unknown fields ['beam']"),
        (_with(sampling={"temperature": 10**400}), p.BAD_MESSAGE, "must be a finite number"),
        (_with(tools=[{"function": {"name": ""}}]), p.BAD_MESSAGE, "tools[0] has no function name"),
        ('{"type": "input_text.append", "text": null}', p.BAD_MESSAGE, "missing 'text'"),
        ('{"type": "tool.result", "call_id": "c", "output": null}', p.BAD_MESSAGE, "got null"),
        ('{"type": "response.cancel", "heard_ms": NaN}', p.BAD_MESSAGE, "finite number"),
        ('{"type": "turn.check", "check_id": 1, "sample_rate": 8000}', p.BAD_MESSAGE, "'audio'"),
        (
            json.dumps({"type": "turn.check", "check_id": 1, "sample_rate": 8000, "audio": "AAE"}),
            p.BAD_MESSAGE,
            "'audio' is not base64",
        ),
        (
            json.dumps({"type": "turn.check", "check_id": 1, "sample_rate": 8000, "audio": "AAAA"}),
            p.BAD_MESSAGE,
            "odd byte count 3",
        ),
    ],
)
def test_more_refusals(text: str, code: str, fragment: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(text)
    assert info.value.code == code
    assert fragment in info.value.message


def test_turn_check_over_eight_seconds_is_too_large_only_when_otherwise_valid() -> None:
    too_long = p.message_to_json(p.TurnCheck.of(1, bytes(8 * 8000 * 2 + 2), 8000))
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(too_long)
    assert info.value.code == p.TOO_LARGE and "at most 8 s" in info.value.message
    bad_id = json.dumps({**json.loads(too_long), "check_id": -1})
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(bad_id)
    assert info.value.code == p.BAD_MESSAGE and "'check_id' must be >= 0" in info.value.message
    ok = p.parse_client_message(p.message_to_json(p.TurnCheck.of(1, bytes(8 * 8000 * 2), 8000)))
    assert isinstance(ok, p.TurnCheck) and ok.pcm16() == bytes(8 * 8000 * 2)


def test_server_events_are_read_leniently() -> None:
    done = p.parse_server_event(
        '{"type": "response.done", "response_id": "r", "status": "completed", "timings": 0,'
        ' "usage": {"prompt_tokens": null, "cached": 3}}'
    )
    assert done.timings == dict.fromkeys(p.TIMING_KEYS)
    assert done.usage == {"prompt_tokens": 0, "completion_tokens": 0}
    call = p.parse_server_event(
        '{"type": "tool.call", "call_id": "c", "name": "f", "arguments": ""}'
    )
    assert call.arguments == {} and call.session_id == ""
    error = p.parse_server_event('{"type": "error", "code": "x", "fatal": "yes", "message": null}')
    assert error.fatal is True and error.message == ""
    with pytest.raises(p.ProtocolError, match="'arguments' must be an object, got list"):
        p.parse_server_event(
            '{"type": "tool.call", "call_id": "c", "name": "f", "arguments": "[1]"}'
        )
