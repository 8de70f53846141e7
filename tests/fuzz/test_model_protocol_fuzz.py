"""Fuzzing the model-service protocol parsers (``stepcall/protocol.py``) with hypothesis.

Property: whatever text a peer sends, ``parse_client_message`` (server side) and
``parse_server_event`` (client side) either return a message or raise ``ProtocolError`` with a
known error code; no other exception escapes (one would end the session with ``internal``).
Inputs mix arbitrary text, arbitrary JSON, and well-formed messages with mutated fields.
Deterministic (``derandomize``) and bounded so the file runs in seconds.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepcall import protocol as p

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

MUTATIONS = settings(
    max_examples=1000,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON scalars that stress the validators: huge ints, floats at the edges, odd strings.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e308, -1e308, 8000, 16000, 24000, 1.5, "", "x" * 70_000]),
    st.text(max_size=20),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

_sampling = st.dictionaries(
    st.sampled_from(["temperature", "top_p", "top_k", "repetition_penalty", "seed", "bogus"]),
    _scalars,
    max_size=5,
)

#: A valid example of every message type; the fuzzer replaces some of their fields.
_VALID_CLIENT = {
    "session.start": {"protocol": 1, "call_id": "CA1", "system_prompt": "hi", "voice": "v",
                      "tools": [{"name": "t"}], "input_sample_rate": 8000,
                      "output_sample_rate": 8000, "max_response_tokens": 10,
                      "sampling": {"temperature": 0.7, "top_k": 5}},
    "input_audio.commit": {},
    "input_audio.clear": {},
    "input_text.append": {"text": "hi", "role": "human"},
    "response.create": {"instructions": "say hi"},
    "response.cancel": {"heard_ms": 120.0},
    "tool.result": {"call_id": "c1", "output": "{}"},
    "session.update": {"system_prompt": "x", "tools": [{"function": {"name": "t"}}]},
    "session.end": {},
}
_VALID_SERVER = {
    "session.started": {"session_id": "s", "protocol": 1, "input_sample_rate": 8000},
    "response.started": {"session_id": "s", "response_id": "r"},
    "text.delta": {"session_id": "s", "response_id": "r", "text": "hi"},
    "tool.call": {"session_id": "s", "response_id": "r", "call_id": "c", "name": "t",
                  "arguments": {"a": 1}},
    "response.done": {"session_id": "s", "response_id": "r", "status": "completed",
                      "audio_ms": 10.0, "timings": {"total_ms": 1.0},
                      "usage": {"prompt_tokens": 3}},
    "error": {"code": "busy", "message": "m", "fatal": True},
    "session.ended": {"session_id": "s"},
}
_CLIENT_TYPES = list(_VALID_CLIENT)
_SERVER_TYPES = list(_VALID_SERVER)


def _nested_fields(base: dict) -> list[str]:
    keys = set(base)
    for value in base.values():
        if isinstance(value, dict):
            keys |= set(value)
    return sorted(keys | {"bogus"})


@st.composite
def _mutated_valid(draw: st.DrawFn, valid: dict[str, dict]) -> str:
    """A valid message of a random type with one to three fields (maybe nested) replaced."""
    kind = draw(st.sampled_from(sorted(valid)))
    message: dict = json.loads(json.dumps({"type": kind, **valid[kind]}))
    if draw(st.integers(0, 19)) == 0:
        message["type"] = draw(_json)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(_nested_fields(message)))
        value = draw(st.one_of(_scalars, _scalars, _json, _sampling))
        nested = [v for v in message.values() if isinstance(v, dict) and key in v]
        if nested and draw(st.booleans()):
            nested[0][key] = value
        elif draw(st.integers(0, 9)) == 0:
            message.pop(key, None)
        else:
            message[key] = value
    return json.dumps(message)


def _mutated(types: list[str]) -> st.SearchStrategy[str]:
    valid = _VALID_CLIENT if types is _CLIENT_TYPES else _VALID_SERVER
    return _mutated_valid(valid)


def _frames(types: list[str]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        _json.map(json.dumps),
        st.integers(min_value=1, max_value=2000).map(lambda n: "[" * n + "]" * n),
    )


def _check(parse, text: str | bytes) -> None:
    try:
        parse(text)
    except p.ProtocolError as e:
        assert e.code in p.ERROR_CODES, e.code
        assert e.message


@FUZZ
@given(_frames(_CLIENT_TYPES))
def test_client_parser_refuses_garbage_with_protocol_errors(text: str | bytes) -> None:
    _check(p.parse_client_message, text)


@MUTATIONS
@given(_mutated_valid(_VALID_CLIENT))
def test_client_parser_refuses_bad_fields_with_protocol_errors(text: str) -> None:
    _check(p.parse_client_message, text)


@FUZZ
@given(_frames(_SERVER_TYPES))
def test_server_event_parser_refuses_garbage_with_protocol_errors(text: str | bytes) -> None:
    _check(p.parse_server_event, text)


@MUTATIONS
@given(_mutated_valid(_VALID_SERVER))
def test_server_event_parser_refuses_bad_fields_with_protocol_errors(text: str) -> None:
    _check(p.parse_server_event, text)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(_mutated_valid(_VALID_CLIENT))
def test_parsed_client_messages_round_trip(text: str) -> None:
    """What the parser accepts, the encoder writes back to an equal message."""
    try:
        message = p.parse_client_message(text)
    except p.ProtocolError:
        return
    assert p.parse_client_message(p.message_to_json(message)) == message
