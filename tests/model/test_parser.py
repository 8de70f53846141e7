"""Tests for the TA4 output parser (text/audio interleaving, tool calls, UTF-8 handling)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.stepaudio2.parser import (
    AudioCodes,
    EndOfTurn,
    TA4Parser,
    TextDelta,
    ToolCall,
    ToolCallError,
    parse_tool_call_body,
)
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> StepAudio2Tokenizer:
    out: Path = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_tokenizer(out)
    return StepAudio2Tokenizer.from_pretrained(out)


def ta4(tok: StepAudio2Tokenizer, text: str, codes: list[int]) -> list[int]:
    """Interleave like the model: [1 text, 4 audio] groups, <tts_pad>/<audio_6561> padding."""
    text_ids = tok.encode(text)
    n_groups = max(len(text_ids), -(-len(codes) // 4))
    out = [tok.ids.tts_start]
    for g in range(n_groups):
        out.append(text_ids[g] if g < len(text_ids) else tok.ids.tts_pad)
        for k in range(4):
            i = 4 * g + k
            out.append(tok.audio_token(codes[i] if i < len(codes) else 6561))
    out.append(tok.ids.tts_end)
    return out


def stream(tok: StepAudio2Tokenizer, ids: list[int]) -> list[object]:
    parser = TA4Parser(tok)
    events: list[object] = []
    for tid in ids:
        events.extend(parser.feed(tid))
    events.extend(parser.finish())
    return events


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def codes_of(events: list[object]) -> list[int]:
    return [c for e in events if isinstance(e, AudioCodes) for c in e.codes]


def test_interleaved_groups_split_into_text_and_audio(tok: StepAudio2Tokenizer) -> None:
    text = "Hi there, how can I help?"
    codes = list(range(100, 100 + 4 * len(tok.encode(text)) + 10))  # audio outlasts text
    ids = ta4(tok, text, codes) + [tok.ids.eot]
    events = stream(tok, ids)
    assert text_of(events) == text
    assert codes_of(events) == codes
    assert isinstance(events[-1], EndOfTurn)
    # streaming order: the first group's text comes before its audio
    first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioCodes))
    assert first_text < first_audio


def test_tts_pad_removed_and_pad_code_dropped(tok: StepAudio2Tokenizer) -> None:
    # Short audio, long text: audio slots filled with <audio_6561>; then long audio: <tts_pad>.
    ids = ta4(tok, "A fairly long sentence for little audio.", [1, 2, 3])
    ids += ta4(tok, "ok", [7] * 12)[1:] + [tok.ids.eot]
    events = stream(tok, ids)
    assert codes_of(events) == [1, 2, 3] + [7] * 12
    assert 6561 not in codes_of(events)
    assert text_of(events) == "A fairly long sentence for little audio.ok"
    assert "<tts_pad>" not in text_of(events)


def test_streaming_feed_emits_as_it_goes(tok: StepAudio2Tokenizer) -> None:
    parser = TA4Parser(tok)
    assert parser.feed(tok.ids.tts_start) == []
    assert parser.feed(tok.encode("Hello")[0]) == [TextDelta("Hello")]
    assert parser.feed(tok.audio_token(5)) == [AudioCodes([5])]
    assert parser.feed(tok.audio_token(6561)) == []
    assert parser.feed(tok.ids.tts_pad) == []
    assert parser.feed(tok.ids.eot) == [EndOfTurn()]
    assert parser.feed(tok.encode("x")[0]) == []  # ignored after the end
    assert parser.finish() == []


def test_tool_call_after_tts_end_plain_text_markers(tok: StepAudio2Tokenizer) -> None:
    ids = ta4(tok, "Let me check.", list(range(20)))
    ids += tok.encode('<tool_call>function\nget_weather\n{"location": "Paris"}</tool_call>')
    ids.append(tok.ids.eot)
    assert tok.ids.tool_call not in ids  # the markers really are plain text here
    events = stream(tok, ids)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"location": "Paris"})]
    assert text_of(events) == "Let me check."
    assert isinstance(events[-1], EndOfTurn)


def test_tool_call_with_special_token_markers(tok: StepAudio2Tokenizer) -> None:
    body = tok.encode('function\nsearch\n{"query": "opening hours", "limit": 3}')
    ids = ta4(tok, "One moment.", list(range(8)))
    ids += tok.encode("\n") + [tok.ids.tool_call, *body, tok.ids.tool_call_end]
    ids += [tok.ids.tool_call, *tok.encode("function\nget_date_time\n{}"), tok.ids.tool_call_end]
    ids.append(tok.ids.eot)
    events = stream(tok, ids)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [
        ("search", {"query": "opening hours", "limit": 3}),
        ("get_date_time", {}),
    ]
    assert "search" not in text_of(events) and "function" not in text_of(events)
    assert text_of(events) == "One moment.\n"


def test_text_mode_tool_call_split_marker(tok: StepAudio2Tokenizer) -> None:
    # Text reply (no TA4) where the marker is split over several plain-text tokens.
    ids = tok.encode('Sure. <tool_call>function\nbook\n{"day": "Tue"}</tool_call> done')
    events = stream(tok, ids + [tok.ids.eot])
    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("book", {"day": "Tue"}, 'function\nbook\n{"day": "Tue"}')
    ]
    assert text_of(events) == "Sure.  done"


def test_malformed_tool_json_gives_error_event(tok: StepAudio2Tokenizer) -> None:
    ids = tok.encode('<tool_call>function\nget_weather\n{"location": "Par</tool_call>')
    events = stream(tok, ids + [tok.ids.eot])
    errors = [e for e in events if isinstance(e, ToolCallError)]
    assert len(errors) == 1 and "get_weather" in errors[0].message
    assert errors[0].raw.startswith("function\nget_weather")
    assert not [e for e in events if isinstance(e, ToolCall)]
    assert isinstance(events[-1], EndOfTurn)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("function\n\n{}", "no function name"),
        ('function\n{"a": 1}', "no function name"),
        ("function\nf\n[1, 2]", "not a JSON object"),
        ('{"arguments": {}}', "no function name"),
    ],
)
def test_tool_body_errors(body: str, fragment: str) -> None:
    result = parse_tool_call_body(body)
    assert isinstance(result, ToolCallError) and fragment in result.message


def test_qwen_style_json_body_accepted() -> None:
    result = parse_tool_call_body('{"name": "f", "arguments": "{\\"x\\": 1}"}')
    assert result == ToolCall("f", {"x": 1}, '{"name": "f", "arguments": "{\\"x\\": 1}"}')


def test_unterminated_tool_call_is_reported_not_raised(tok: StepAudio2Tokenizer) -> None:
    ids = tok.encode('<tool_call>function\nf\n{"a": ')
    events = stream(tok, ids)  # generation cut off, no EOT
    assert len(events) == 1 and isinstance(events[0], ToolCallError)
    assert "not closed" in events[0].message


def test_utf8_split_across_tokens_emits_only_complete_chars(tok: StepAudio2Tokenizer) -> None:
    text = "é東京😀"
    ids = tok.encode(text)
    assert len(ids) > 4  # byte-level: at least one character spans several tokens
    parser = TA4Parser(tok)
    deltas: list[str] = []
    for tid in ids:
        for ev in parser.feed(tid):
            assert isinstance(ev, TextDelta)
            assert "\ufffd" not in ev.text
            deltas.append(ev.text)
    deltas += [e.text for e in parser.finish() if isinstance(e, TextDelta)]
    assert "".join(deltas) == text
    assert len(deltas) >= 3  # emitted incrementally, not all at the end


def test_utf8_split_inside_ta4_groups(tok: StepAudio2Tokenizer) -> None:
    text = "Grüße 😀!"
    ids = ta4(tok, text, list(range(40))) + [tok.ids.eot]
    events = stream(tok, ids)
    assert all("\ufffd" not in e.text for e in events if isinstance(e, TextDelta))
    assert text_of(events) == text


def test_prefix_of_marker_is_released_when_not_a_marker(tok: StepAudio2Tokenizer) -> None:
    events = stream(tok, tok.encode("a <tool is fine") + [tok.ids.eot])
    assert text_of(events) == "a <tool is fine"


def test_parse_coalesces(tok: StepAudio2Tokenizer) -> None:
    ids = ta4(tok, "Yes.", [9] * 8) + [tok.ids.eot]
    events = TA4Parser(tok).parse(ids)
    assert events[-1] == EndOfTurn()
    assert text_of(events) == "Yes."
    assert codes_of(events) == [9] * 8
    kinds = [type(e) for e in events]
    assert all(a is not b or a is EndOfTurn for a, b in zip(kinds, kinds[1:], strict=False))


def test_stray_control_tokens_and_unused_rows_are_not_text(tok: StepAudio2Tokenizer) -> None:
    im_start = tok.hf.convert_tokens_to_ids("<|im_start|>")
    ids = [*tok.encode("ok"), im_start, tok.ids.audio_patch, 158300, *tok.encode("!"), tok.ids.eot]
    events = stream(tok, ids)
    assert text_of(events) == "ok!"
    assert codes_of(events) == []
    assert events[-1] == EndOfTurn()


def test_other_stop_ids_end_the_turn(tok: StepAudio2Tokenizer) -> None:
    events = stream(tok, [*tok.encode("bye"), 151643, *tok.encode("more")])
    assert text_of(events) == "bye"
    assert events[-1] == EndOfTurn() and events.count(EndOfTurn()) == 1
