"""ReferenceBackend on real tiny checkpoints (shaped so greedy decoding follows a script).

Checkpoints are built once per module into a tmp dir by ``build_tiny_checkpoint``:
``speech``: every reply is a TA4 spoken answer; ``tool``: a filler + ``get_weather`` call, and
the spoken answer once a tool call is in the context; ``always_tool``: every reply calls the tool
(its "after tool" marker never occurs), to exercise the loop guard.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    default_script,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.base import (
    AudioChunk,
    ResponseDone,
    ResponseError,
    SamplingParams,
    SessionConfig,
    TextDelta,
    ToolCallEvent,
)
from model_service.backends.conversation import UserAudioBuffer
from model_service.backends.reference import (
    DEFAULT_MAX_TOOL_CALLS_IN_A_ROW,
    ReferenceBackend,
    load_reference_backend,
)
from model_service.stepaudio2 import mel as mel_mod
from model_service.stepaudio2 import parser as ta4
from model_service.stepaudio2.prompt import AssistantMessage, HumanMessage, InputMessage
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=400)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Synthetic 'speech': syllables of a harmonic tone (f0 110-220 Hz) with formant-ish weights."""
    rng = np.random.default_rng(seed)
    sr = 16000
    out = []
    while sum(len(x) for x in out) < seconds * sr:
        n = int(sr * rng.uniform(0.12, 0.25))
        t = np.arange(n) / sr
        f0 = rng.uniform(110, 220)
        sig = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
        env = np.sin(np.pi * np.arange(n) / n) ** 2
        out.append(0.2 * sig * env / 3)
        out.append(np.zeros(int(sr * rng.uniform(0.02, 0.08))))
    return np.concatenate(out)[: int(seconds * sr)].astype(np.float32)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> StepAudio2Tokenizer:
    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    return StepAudio2Tokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def speech_script(tok) -> list[int]:
    return default_script(tok, text="Hello! Thank you for calling the weather line.")


@pytest.fixture(scope="module")
def speech_ckpt(tmp_path_factory, speech_script) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("speech"), script=speech_script)


@pytest.fixture(scope="module")
def tool_scripts(tok) -> tuple[list[int], list[int]]:
    first = tool_call_script(tok)
    return first, after_tool_script(tok, first)


@pytest.fixture(scope="module")
def tool_ckpt(tmp_path_factory, tool_scripts) -> Path:
    first, after = tool_scripts
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tool"), script=first, after_tool_script=after
    )


@pytest.fixture(scope="module")
def always_tool_ckpt(tmp_path_factory, tool_scripts) -> Path:
    first, after = tool_scripts
    # The "after tool" marker is a token our prompts never contain: every reply is a tool call.
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("always_tool"),
        script=first,
        after_tool_script=after,
        marker_token="<|im_start|>",
        token2wav=False,
    )


@pytest.fixture(scope="module")
def speech_backend(speech_ckpt) -> ReferenceBackend:
    return load_reference_backend(speech_ckpt)


@pytest.fixture(scope="module")
def text_backend(speech_backend) -> ReferenceBackend:
    """The same loaded model without token2wav (faster; for tests that don't look at audio)."""
    return ReferenceBackend(speech_backend.loaded, None)


@pytest.fixture(scope="module")
def tool_backend(tool_ckpt) -> ReferenceBackend:
    return load_reference_backend(tool_ckpt)


def config(**kw) -> SessionConfig:
    kw.setdefault("system_prompt", "You are the weather line assistant.")
    kw.setdefault("sampling", GREEDY)
    return SessionConfig(**kw)


async def collect(session, instructions: str | None = None) -> list:
    return [ev async for ev in session.respond(instructions)]


def done_of(events: list) -> ResponseDone:
    dones = [e for e in events if isinstance(e, ResponseDone)]
    assert len(dones) == 1 and events[-1] is dones[0]
    return dones[0]


def script_text(tok, ids) -> str:
    return "".join(e.text for e in ta4.parse(tok, ids) if isinstance(e, ta4.TextDelta))


def audio_codes(tok, ids) -> list[int]:
    return [i - tok.audio_offset for i in ids if tok.audio_offset <= i < tok.audio_offset + 6561]


# ------------------------------------------------------------------------------ tests
async def test_two_turn_conversation_with_audio(speech_backend, tok, speech_script):
    session = await speech_backend.open_session(config(call_id="two-turn"))
    for piece in np.array_split(speech_like(1.6), 8):  # streamed while the user speaks
        await session.append_audio(piece)
    await session.commit()
    events = await collect(session)
    done = done_of(events)
    assert done.status == "completed"
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == done.text == script_text(tok, speech_script)
    assert text.startswith("Hello! Thank you for calling")
    assert done.prompt_tokens == len(session.last_prompt_ids)
    assert done.completion_tokens == len(speech_script)

    # history: the user audio turn, then the exact generated ids (stop id dropped)
    msgs = session.conversation.messages
    assert isinstance(msgs[0], HumanMessage) and isinstance(msgs[1], AssistantMessage)
    assert list(msgs[1].ids) == speech_script[:-1]

    # bot audio: 24 kHz float32 chunks, 960 samples per code, reported in audio_ms
    chunks = [e.pcm for e in events if isinstance(e, AudioChunk)]
    if speech_backend.vocoder is not None:
        assert chunks and all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
        n_codes = len(audio_codes(tok, speech_script))
        assert sum(len(c) for c in chunks) == n_codes * 960
        assert done.audio_ms == pytest.approx(n_codes * 40.0)

    # second turn: the prompt replays turn 1 verbatim and the KV cache covers it
    first_prompt = list(session.last_prompt_ids)
    await session.append_audio(speech_like(1.0, seed=1))
    await session.commit()
    events2 = await collect(session)
    assert done_of(events2).status == "completed"
    prompt2 = session.last_prompt_ids
    replay = [*speech_script[:-1], tok.ids.eot]  # first_prompt ends with <tts_start>
    assert first_prompt[-1] == tok.ids.tts_start
    assert prompt2[: len(first_prompt)] == first_prompt
    assert prompt2[len(first_prompt) : len(first_prompt) + len(replay)] == replay
    assert session.last_stats.reused_tokens >= len(first_prompt)
    assert session.last_stats.prefill_tokens < len(prompt2) - len(first_prompt) + 1
    assert len(session.conversation.messages) == 4
    await session.close()


async def test_timings_present_and_ordered(speech_backend):
    session = await speech_backend.open_session(config())
    await session.append_audio(speech_like(1.0))
    await session.commit()
    done = done_of(await collect(session))
    t = done.timings
    assert None not in (t.queue_ms, t.prefill_ms, t.first_code_ms, t.total_ms)
    assert 0 <= t.queue_ms <= t.prefill_ms <= t.first_code_ms <= t.total_ms
    if speech_backend.vocoder is not None:
        assert t.first_code_ms <= t.first_audio_ms <= t.total_ms
    await session.close()


async def test_queue_ms_measures_waiting_for_the_model(text_backend):
    a = await text_backend.open_session(config())
    b = await text_backend.open_session(config())
    for s in (a, b):
        await s.append_text("What is the weather?")
    ev_a, ev_b = await asyncio.gather(collect(a), collect(b))
    da, db = done_of(ev_a), done_of(ev_b)
    # b waited for a's whole generation on the single model worker
    assert db.timings.queue_ms >= da.timings.prefill_ms
    await a.close()
    await b.close()


async def test_tool_call_round_trip(tool_backend, tool_scripts, tok):
    first, after = tool_scripts
    session = await tool_backend.open_session(config(tools=TOOLS))
    await session.append_audio(speech_like(1.2))
    await session.commit()
    events = await collect(session)
    done = done_of(events)
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    assert done.status == "tool_call"
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].arguments == {"city": "Paris"}
    assert calls[0].call_id.startswith("call_")
    assert done.text == "One moment, let me check."
    # the tools turn and the tools sentence are in the prompt
    assert "tool_json_schemas" in tok.decode(session.last_prompt_ids)
    assert list(session.conversation.messages[-1].ids) == first[:-1]

    # barge-in during the filler: the spoken part is cut, the tool call (already sent) stays
    await session.cancel(heard_ms=80)
    kept = list(session.conversation.messages[-1].ids)
    assert len(audio_codes(tok, kept)) == 2
    tail = first[first.index(tok.ids.tts_end) : -1]  # <tts_end><tool_call>...</tool_call>
    assert kept[-len(tail) :] == tail

    with pytest.raises(ValueError, match="call_nope"):
        await session.add_tool_result("call_nope", "x")
    await session.add_tool_result(calls[0].call_id, '{"temp_c": 18, "sky": "sunny"}')
    result = session.conversation.messages[-1]
    assert isinstance(result, InputMessage) and "temp_c" in result.result
    with pytest.raises(ValueError, match=calls[0].call_id):  # a result is taken only once
        await session.add_tool_result(calls[0].call_id, "again")

    events2 = await collect(session)
    done2 = done_of(events2)
    assert done2.status == "completed"
    assert not any(isinstance(e, ToolCallEvent) for e in events2)
    assert "18 degrees" in done2.text
    assert list(session.conversation.messages[-1].ids) == after[:-1]
    await session.close()


async def test_tool_loop_guard(always_tool_ckpt):
    backend = load_reference_backend(always_tool_ckpt, max_tool_calls_in_a_row=2)
    assert DEFAULT_MAX_TOOL_CALLS_IN_A_ROW == 3
    assert load_reference_backend(always_tool_ckpt).max_tool_calls_in_a_row == 3
    session = await backend.open_session(config(tools=TOOLS))
    await session.append_text("Weather in Paris?")
    for _ in range(2):
        events = await collect(session)
        assert done_of(events).status == "tool_call"
        call = next(e for e in events if isinstance(e, ToolCallEvent))
        await session.add_tool_result(call.call_id, "sunny")
    events = await collect(session)  # third tool call in a row: refused
    done = done_of(events)
    assert done.status == "completed"
    assert not any(isinstance(e, ToolCallEvent) for e in events)
    errors = [e for e in events if isinstance(e, ResponseError)]
    assert [e.code for e in errors] == ["tool_call_limit"]
    assert "Do not call any tool" in backend.tok.decode(session.last_prompt_ids)
    assert not session.conversation.pending_calls
    # still refused without user input (the refused attempt keeps the streak going)
    events = await collect(session)
    assert [e.code for e in events if isinstance(e, ResponseError)] == ["tool_call_limit"]
    # user input resets the guard
    await session.append_text("And tomorrow?")
    assert done_of(await collect(session)).status == "tool_call"
    await session.close()


async def test_cancel_mid_response_truncates_history(speech_backend, tok, speech_script):
    session = await speech_backend.open_session(config())
    await session.append_audio(speech_like(1.0))
    await session.commit()
    events = []
    async for ev in session.respond():
        events.append(ev)
        n_text = sum(isinstance(e, TextDelta) for e in events)
        if isinstance(ev, TextDelta) and n_text == 3:  # >= 3 TA4 groups (>= 8 codes) generated
            await session.cancel(heard_ms=130)  # 3 codes (25 Hz, floored)
    done = done_of(events)
    assert done.status == "cancelled"
    assert done.completion_tokens < len(speech_script)  # stopped early
    assert session.last_stats.stop_reason == "cancelled"
    kept = list(session.conversation.messages[-1].ids)
    # the heard part: up to and including the 3rd code, closed with <tts_end>
    third_code_at = [i for i, t in enumerate(speech_script) if tok.is_audio(t)][2]
    assert kept == [*speech_script[: third_code_at + 1], tok.ids.tts_end]
    assert len(audio_codes(tok, kept)) == 3
    # audio stops with the generation (never more than the codes generated)
    audio_samples = sum(len(e.pcm) for e in events if isinstance(e, AudioChunk))
    assert audio_samples == done.audio_ms * 24
    assert done.audio_ms <= 40.0 * len(audio_codes(tok, speech_script[: done.completion_tokens]))

    # the next turn continues after the truncated reply
    await session.append_text("Go on.")
    events2 = await collect(session)
    assert done_of(events2).status == "completed"
    prompt = session.last_prompt_ids
    replay = [tok.ids.tts_start, *kept, tok.ids.eot]
    assert any(prompt[i : i + len(replay)] == replay for i in range(len(prompt)))
    await session.close()


async def test_cancel_after_done_truncates_last_reply(text_backend, tok, speech_script):
    """Barge-in while the finished reply is still playing on the caller's side."""
    session = await text_backend.open_session(config())
    await session.append_text("Hi")
    assert done_of(await collect(session)).status == "completed"
    await session.cancel(heard_ms=200)  # 5 codes heard
    kept = list(session.conversation.messages[-1].ids)
    assert len(audio_codes(tok, kept)) == 5 and kept[-1] == tok.ids.tts_end
    assert kept[:-1] == speech_script[: len(kept) - 1]
    await session.close()


async def test_interleaved_sessions_are_independent(text_backend, tok, speech_script):
    a = await text_backend.open_session(config(call_id="a"))
    b = await text_backend.open_session(config(call_id="b", system_prompt="You are Bob."))
    wav_a, wav_b = speech_like(1.0, seed=3), speech_like(2.0, seed=4)
    for pa, pb in zip(np.array_split(wav_a, 4), np.array_split(wav_b, 4), strict=True):
        await a.append_audio(pa)
        await b.append_audio(pb)
    await asyncio.gather(a.commit(), b.commit())
    ev_a, ev_b = await asyncio.gather(collect(a), collect(b))
    assert done_of(ev_a).status == done_of(ev_b).status == "completed"
    # b's second turn runs while a's first history stays as it was
    await b.append_text("Thanks")
    await collect(b)
    assert len(a.conversation.messages) == 2 and len(b.conversation.messages) == 4
    mel_a = a.conversation.messages[0].parts[0].mel
    mel_b = b.conversation.messages[0].parts[0].mel
    assert mel_a.shape[1] == mel_mod.mel_frame_count(len(wav_a))
    assert mel_b.shape[1] == mel_mod.mel_frame_count(len(wav_b))
    assert "Bob" in tok.decode(b.last_prompt_ids) and "Bob" not in tok.decode(a.last_prompt_ids)
    # each session's KV cache holds its own prompt, not the other's
    assert b.kv.keys[: len(b.last_prompt_ids)] != a.kv.keys[: len(b.last_prompt_ids)]
    for s in (a, b):
        assert list(s.conversation.messages[1].ids) == speech_script[:-1]
        await s.close()


async def test_respond_does_not_block_the_event_loop(speech_backend):
    session = await speech_backend.open_session(config())
    await session.append_audio(speech_like(1.0))
    await session.commit()
    stamps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    done = done_of(await collect(session))
    t1 = time.perf_counter()
    stop.set()
    await task
    during = [s for s in stamps if t0 <= s <= t1]
    gaps = np.diff([t0, *during, t1])
    assert done.timings.total_ms > 100  # long enough to matter
    assert len(during) >= 10
    assert gaps.max() < 0.5 * (t1 - t0)
    await session.close()


async def test_update_changes_persona_voice_style_tools_for_next_response(text_backend, tok):
    session = await text_backend.open_session(config(system_prompt="You are Ann."))
    assert "You are Ann." in session.system_text()
    await session.update(config(system_prompt="You are Zed.", style="Speak slowly.", tools=TOOLS))
    text = tok.decode(session.build_prompt().ids)
    assert "You are Zed." in text and "Speak slowly." in text and "You are Ann." not in text
    assert "get_weather" in text and "call tools" in text
    await session.append_text("Hi")
    await collect(session)
    assert "You are Zed." in tok.decode(session.last_prompt_ids)
    await session.close()


async def test_voices_are_validated(speech_backend):
    assert "default" in speech_backend.voices  # the tiny token2wav's test voice
    with pytest.raises(ValueError, match="nobody"):
        await speech_backend.open_session(config(voice="nobody"))
    session = await speech_backend.open_session(config(voice="default"))
    assert "the default voice" in session.system_text()
    with pytest.raises(ValueError, match="nobody"):
        await session.update(config(voice="nobody"))
    await session.close()


async def test_append_text_roles_and_one_shot_instructions(text_backend, tok):
    session = await text_backend.open_session(config())
    await session.append_text("1 2 3 #")
    await session.append_text("The caller pressed digits.", role="system")
    with pytest.raises(ValueError, match="role"):
        await session.append_text("x", role="robot")
    await collect(session, instructions="Read the digits back.")
    text = tok.decode(session.last_prompt_ids)
    assert "human\n1 2 3 #" in text and "system\nThe caller pressed digits." in text
    assert "Read the digits back." in text
    # one-shot: not kept in the history
    assert "Read the digits back." not in tok.decode(session.build_prompt().ids)
    await session.close()


async def test_second_respond_while_running_is_refused(text_backend):
    session = await text_backend.open_session(config())
    await session.append_text("Hi")
    first = session.respond()
    with pytest.raises(RuntimeError, match="already running"):
        session.respond()
    events = [e async for e in first]
    assert done_of(events).status == "completed"
    await session.close()


def test_user_audio_buffer_chunks_like_split_audio():
    wav = speech_like(52.5, seed=5)  # 25 s + 25 s + 2.5 s
    buf = UserAudioBuffer()
    for piece in np.array_split(wav, 70):
        buf.append(piece)
    assert len(buf._mels) == 2  # two 25 s chunks finished while "speaking"
    mels = buf.finish()
    expected = [mel_mod.log_mel_spectrogram(c) for c in mel_mod.split_audio(wav)]
    assert len(mels) == len(expected) == 3
    for got, want in zip(mels, expected, strict=True):
        assert got.shape == want.shape
        assert np.allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert buf.total_samples == 0 and buf.finish() == []


async def test_tool_call_to_unknown_tool_is_refused(tool_backend):
    session = await tool_backend.open_session(config(tools=[]))  # the model calls get_weather
    await session.append_text("Weather?")
    events = await collect(session)
    assert done_of(events).status == "completed"
    assert not any(isinstance(e, ToolCallEvent) for e in events)
    errors = [e for e in events if isinstance(e, ResponseError)]
    assert [e.code for e in errors] == ["bad_tool_call"] and "get_weather" in errors[0].message
    assert not session.conversation.pending_calls
    await session.close()


async def test_internal_error_ends_the_response_with_status_error(speech_backend):
    backend = ReferenceBackend(
        speech_backend.loaded, speech_backend.vocoder, voices={"ghost": "/nonexistent/ghost.wav"}
    )
    session = await backend.open_session(config(voice="ghost"))
    await session.append_text("Hi")
    events = await collect(session)
    assert done_of(events).status == "error"
    errors = [e for e in events if isinstance(e, ResponseError)]
    assert errors and errors[0].code == "internal" and "ghost" in errors[0].message
    assert len(session.conversation.messages) == 1  # nothing recorded for the failed reply
    await session.close()


async def test_close_stops_a_running_response(text_backend):
    session = await text_backend.open_session(config())
    await session.append_text("Hi")
    stream = session.respond()
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    await session.close()
    rest = [e async for e in stream]
    assert done_of(rest).status == "cancelled"
    with pytest.raises(RuntimeError, match="closed"):
        await session.append_text("again")


async def test_user_turn_committed_during_a_reply_lands_after_it(text_backend, speech_script):
    session = await text_backend.open_session(config())
    await session.append_text("Hi")
    stream = session.respond()
    assert isinstance(await anext(stream), TextDelta)
    await session.append_audio(speech_like(0.8))  # the caller talks over the bot
    await session.commit()
    assert done_of([e async for e in stream]).status == "completed"
    msgs = session.conversation.messages
    assert [type(m).__name__ for m in msgs] == ["HumanMessage", "AssistantMessage", "HumanMessage"]
    assert list(msgs[1].ids) == speech_script[:-1]
    await session.cancel(heard_ms=40)  # the barge-in arrives after the commit
    assert len(msgs[1].ids) < len(speech_script) - 1 and isinstance(msgs[2], HumanMessage)
    await session.close()


async def test_old_turns_are_dropped_to_fit_the_context(speech_backend, speech_script):
    backend = ReferenceBackend(speech_backend.loaded, None, max_context=500)
    sampling = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=80)
    session = await backend.open_session(config(sampling=sampling))
    for turn in range(6):
        await session.append_text(f"Question number {turn}?")
        done = done_of(await collect(session))
        assert done.status == "completed" and done.completion_tokens == len(speech_script)
        assert done.prompt_tokens + 80 <= 500
    msgs = session.conversation.messages
    assert len(msgs) < 12  # some of the 12 turns were dropped ...
    assert msgs[-1].ids is not None and list(msgs[-1].ids) == speech_script[:-1]
    texts = [m.parts[0].text for m in msgs if isinstance(m, HumanMessage)]
    assert "Question number 0?" not in texts and texts[-1] == "Question number 5?"  # ... oldest
    await session.close()


async def test_length_stop_closes_the_tts_section_in_history(text_backend, tok, speech_script):
    sampling = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=12)
    session = await text_backend.open_session(config(sampling=sampling))
    await session.append_text("Hi")
    done = done_of(await collect(session))
    assert done.status == "completed" and done.completion_tokens == 12
    assert session.last_stats.stop_reason == "length"
    assert list(session.conversation.messages[-1].ids) == [*speech_script[:12], tok.ids.tts_end]
    await session.close()


async def test_commit_without_audio_is_an_error(text_backend):
    session = await text_backend.open_session(config())
    with pytest.raises(ValueError, match="no user audio"):
        await session.commit()
    await session.append_audio(speech_like(0.5))
    await session.clear_audio()
    with pytest.raises(ValueError, match="no user audio"):
        await session.commit()
    await session.close()
