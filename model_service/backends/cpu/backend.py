"""The ``cpu`` backend: an offline cascade (Whisper ASR → llama.cpp LLM → Piper TTS) on a CPU.

Step-Audio 2 cannot run in real time without a GPU, so this backend speaks the same session
protocol (``base.py``) with three small real models instead: faster-whisper tiny.en transcribes
the committed user turn, a GGUF instruction model (Qwen2.5-1.5B by default) writes the reply,
and a Piper voice speaks it sentence by sentence while the LLM is still writing, so the first
audio comes early. Model files come from ``model_service.backends.cpu.model_files``.

Threads: one ASR thread, one LLM thread (llama.cpp with 2 threads) and one TTS thread, shared
by all sessions; nothing heavy runs on the event loop. A response runs as described in
``model_service/backends/responses.py``: LLM pieces are handed to the loop, split into spoken
text (``TextDelta``, straight away) and ``<tool_call>`` blocks (``ToolCallEvent``), whole
sentences go to the TTS task (``AudioChunk``). A cancel stops the LLM at its next piece and TTS
after the current sentence.

Timings (``ResponseTimings``, ms from the ``respond`` call): ``queue_ms`` until the LLM starts
(includes waiting for the user's transcript), ``prefill_ms`` first LLM piece, ``first_code_ms``
first sentence handed to TTS, ``first_audio_ms`` first audio, ``total_ms`` the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_service.backends.base import (
    INPUT_RATE,
    OUTPUT_RATE,
    Backend,
    BackendEvent,
    SessionConfig,
    TextDelta,
)
from model_service.backends.cpu.chat import (
    ChatHistory,
    SpokenSentence,
    normalize_tools,
    render_chatml,
    tool_names,
)
from model_service.backends.cpu.llm import CompletionStats
from model_service.backends.cpu.text import (
    BadToolCall,
    ParsedToolCall,
    SentenceSplitter,
    SpokenText,
    ToolCallExtractor,
    day_facts,
    speakable,
)
from model_service.backends.responses import (
    DEFAULT_MAX_TOOL_CALLS_IN_A_ROW,
    ResponseRun,
    ResponseSession,
    now,
    with_loop_instruction,
)
from stepcall.settings import Settings

log = logging.getLogger(__name__)

#: Added to every persona: the reply is spoken on a phone line.
VOICE_RULES = (
    "You are speaking with a caller on the phone. Reply in one to three short sentences of "
    "plain spoken English: no lists, no markdown, no emoji, no code."
)
#: Added after the persona: small models otherwise fill gaps with plausible inventions.
GROUNDING_RULES = (
    "Only the text above is true about you and this business: your name, opening hours, "
    "prices, services and policies. Answer from it; never invent or guess a fact it does not "
    "state. If the text does not answer the question, say you don't know and offer to take a "
    "message. When the caller asks who they are speaking to, say your own name and role."
)
TOOL_RULES = (
    "When a tool can do what the caller asks, call it: reply with only "
    '<tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call> and nothing else. '
    "Never describe a tool call in words. If no tool fits, just answer."
)
#: What a user turn becomes when Whisper hears no words in it.
INAUDIBLE = "[inaudible]"
AUDIO_CHUNK_MS = 500  # bot audio is handed out in pieces this long
SPEECH_RMS = 0.01  # a user audio frame louder than this (about -40 dBFS) counts as speech
EARLY_ASR_SILENCE_S = 0.15  # pause after speech that starts an early transcription
#: The reply's first words are voiced as soon as this many have been written (then sentences):
#: at ~10 tokens/s on 2 cores a whole first sentence costs ~1 s more before the caller hears
#: anything. Piper voices the short piece in ~0.1 s and the next piece follows it seamlessly.
FIRST_WORDS = 4
#: Sampling temperatures above this are lowered to it: a 1.5B model at the default 0.7 states
#: the persona's facts (hours, its own name) wrongly or wanders off in some replies.
MAX_TEMPERATURE = 0.3
CHARS_PER_TOKEN = 3.5  # prompt-size estimate for the context budget


# ------------------------------------------------------------------------------ the backend
class CpuBackend(Backend):
    """Whisper + llama.cpp + Piper, shared by every session (one job per model at a time).

    ``asr`` needs ``transcribe(pcm16k) -> str``, ``llm`` is a ``LlamaEngine`` (or anything
    with its ``complete`` method and ``n_ctx``), ``tts`` needs ``synthesize(text) -> pcm24k``.
    ``voices`` names the TTS voices (the first is the default); a session asking for a voice
    this backend does not have (e.g. a Step-Audio 2 voice name) gets the default one.
    """

    name = "cpu"

    def __init__(
        self,
        asr: Any,
        llm: Any,
        tts: Any,
        *,
        model_name: str = "cpu",
        voices: tuple[str, ...] = ("joe",),
        max_tool_calls_in_a_row: int = DEFAULT_MAX_TOOL_CALLS_IN_A_ROW,
        max_reply_tokens: int = 256,
        max_temperature: float = MAX_TEMPERATURE,
        today: Callable[[], _dt.date] = _dt.date.today,
    ) -> None:
        if max_tool_calls_in_a_row < 1:
            raise ValueError(f"max_tool_calls_in_a_row must be >= 1, got {max_tool_calls_in_a_row}")
        if not voices:
            raise ValueError("the cpu backend needs at least one voice name")
        self.asr = asr
        self.llm = llm
        self.tts = tts
        self.model_name = model_name
        self.voices = tuple(voices)
        self.default_voice = self.voices[0]
        self.max_tool_calls_in_a_row = max_tool_calls_in_a_row
        self.max_reply_tokens = max_reply_tokens
        self.max_temperature = max_temperature
        self.today = today
        self.n_ctx = int(getattr(llm, "n_ctx", 4096))
        self._asr_exec = ThreadPoolExecutor(1, thread_name_prefix="cpu-asr")
        self._llm_exec = ThreadPoolExecutor(1, thread_name_prefix="cpu-llm")
        self._tts_exec = ThreadPoolExecutor(1, thread_name_prefix="cpu-tts")
        self.sessions: set[CpuSession] = set()

    async def open_session(self, config: SessionConfig) -> CpuSession:
        normalize_tools(config.tools)  # bad tool lists fail here, naming the tool
        session = CpuSession(self, config)
        self.sessions.add(session)
        session.prewarm()
        return session

    async def render_speech(
        self, text: str, *, voice: str | None = None, style: str | None = None
    ) -> np.ndarray:
        """``text`` spoken by Piper on the TTS thread (the same voice rule as a session: an
        unknown voice speaks with the default). Piper has no styles: ``style`` is ignored."""
        text = text.strip()
        if not text:
            raise ValueError("nothing to say: the text is empty")
        if voice is not None and voice not in self.voices:
            log.info("cpu backend has no voice %r; rendering with %r", voice, self.default_voice)
        loop = asyncio.get_running_loop()
        pcm = await loop.run_in_executor(self._tts_exec, self.tts.synthesize, text)
        return np.asarray(pcm, dtype=np.float32).reshape(-1)

    async def close(self) -> None:
        for session in list(self.sessions):
            await session.close()
        for ex in (self._asr_exec, self._llm_exec, self._tts_exec):
            ex.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.llm, "close", None)
        if close is not None:
            close()


def load_cpu_backend(
    llm: str | None = None,
    *,
    threads: int = 2,
    n_ctx: int = 4096,
    settings: Settings | None = None,
) -> CpuBackend:
    """Find (and if needed assemble and verify) the model files, load all three models.

    ``llm``: a key of ``model_files.LLM_MODELS`` (default ``STEPCALL_CPU_LLM`` or Qwen2.5-1.5B);
    ``settings``: where the model files are looked up (default ``Settings.from_env()``).
    Raises ``model_files.MissingModelError`` naming the pip packages when something is missing.
    """
    from model_service.backends.cpu.asr import WhisperASR
    from model_service.backends.cpu.llm import LlamaEngine
    from model_service.backends.cpu.model_files import resolve_cpu_models
    from model_service.backends.cpu.tts import PiperTTS

    paths = resolve_cpu_models(llm, settings)
    log.info("cpu backend models: %s", paths)
    asr = WhisperASR(paths.asr_dir, cpu_threads=threads)
    engine = LlamaEngine(paths.llm_path, n_ctx=n_ctx, n_threads=threads)
    tts = PiperTTS(paths.tts_voice, threads=threads)
    # First runs of ONNX / CTranslate2 are slow: pay that now, not on the first call.
    warm = tts.synthesize("Hello.")
    asr.transcribe(np.concatenate([np.zeros(INPUT_RATE // 4, np.float32),
                                   warm[:: OUTPUT_RATE // INPUT_RATE] if warm.size else warm]))
    voice = Path(paths.tts_voice).name.removesuffix(".onnx")  # en_US-joe-medium
    asr_name = "tiny.en" if paths.sources["asr"].startswith("package") else Path(paths.asr_dir).name
    llm_name = paths.llm_key if not paths.sources["llm"].startswith("STEPCALL") else paths.llm_path.stem
    name = f"cpu: whisper {asr_name} + {llm_name} + piper {voice}"
    short_voice = voice.split("-")[1] if voice.count("-") >= 2 else voice
    return CpuBackend(asr, engine, tts, model_name=name, voices=(short_voice,))


def _log_prewarm_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("cpu backend: prompt prewarm failed: %s", future.exception())


# ------------------------------------------------------------------------------ one response
@dataclass
class _Run(ResponseRun):
    """One response in flight: the LLM text's parsers, its sentences on their way to TTS."""

    to_speak: asyncio.Queue = field(default_factory=asyncio.Queue)
    extractor: ToolCallExtractor = field(default_factory=ToolCallExtractor)
    splitter: SentenceSplitter = field(
        default_factory=lambda: SentenceSplitter(first_clause_chars=8, first_words=FIRST_WORDS)
    )
    sentences: list[SpokenSentence] = field(default_factory=list)
    stats: CompletionStats = field(default_factory=CompletionStats)
    prompt: str = ""

    def token_counts(self) -> tuple[int, int]:
        return self.stats.prompt_tokens, self.stats.completion_tokens


class CpuSession(ResponseSession):
    """One call's conversation on a ``CpuBackend``."""

    _log = log
    _produce_failed = "cpu response failed in session %s"
    _output_failed = "cpu TTS failed in session %s"

    def __init__(self, backend: CpuBackend, config: SessionConfig) -> None:
        self.backend = backend
        self.config = config
        self.history = ChatHistory()
        self.date = backend.today()
        self._audio: list[np.ndarray] = []
        self._samples = 0  # samples in the open user turn
        self._voiced_end = 0  # sample index where the latest speech-loud frame ended
        self._early: tuple[int, asyncio.Future, float] | None = None  # (voiced_end, job, t)
        self.early_asr_hits = 0  # commits whose transcript came from the early pass
        self._asr_tail: asyncio.Future | None = None  # the latest transcription (chained)
        self._run: _Run | None = None
        self._closed = False
        self._warned_voice = False
        #: The user's turns as Whisper heard them (in order), and the latest one's ASR time.
        self.transcripts: list[str] = []
        self._commits = 0  # user turns committed
        self._prewarm_gen = 0  # the newest prewarm (older ones are skipped or stopped)
        self._transcripts_taken = 0  # of which take_transcripts handed out the text
        self.last_asr_ms: float | None = None

    @property
    def last_prompt(self) -> str | None:
        """The prompt text of the latest response (for inspection)."""
        return self._run.prompt if self._run is not None else None

    @property
    def last_stats(self) -> CompletionStats | None:
        return self._run.stats if self._run is not None else None

    # ----------------------------------------------------------------- user input
    async def append_audio(self, pcm16k: np.ndarray) -> None:
        """Add user audio. Once the user has paused for ``EARLY_ASR_SILENCE_S``, Whisper starts
        on the turn so far: if the turn is committed with no new speech after that, the
        transcript is already (being) made when ``commit`` comes."""
        self._check_open()
        arr = np.asarray(pcm16k)
        if arr.ndim != 1:
            raise ValueError(f"user audio must be mono [samples], got shape {arr.shape}")
        if arr.dtype == np.int16:
            arr = arr.astype(np.float32) / 32768.0
        if not arr.size:
            return
        arr = arr.astype(np.float32, copy=True)
        self._audio.append(arr)
        self._samples += arr.size
        if float(np.sqrt(np.mean(arr * arr))) > SPEECH_RMS:
            self._voiced_end = self._samples
        self._maybe_start_early_asr()

    def _maybe_start_early_asr(self) -> None:
        if self._voiced_end == 0 or (self._early is not None and self._early[0] == self._voiced_end):
            return  # no speech yet, or this pause is already being transcribed
        if self._samples - self._voiced_end < int(EARLY_ASR_SILENCE_S * INPUT_RATE):
            return
        if self._early is not None and not self._early[1].done():
            return  # one early pass at a time
        audio = np.concatenate(self._audio)
        self._audio = [audio]
        future = asyncio.get_running_loop().run_in_executor(
            self.backend._asr_exec, self.backend.asr.transcribe, audio
        )
        self._early = (self._voiced_end, future, now())

    async def clear_audio(self) -> None:
        self._check_open()
        self._reset_audio()

    def _reset_audio(self) -> None:
        self._audio = []
        self._samples = 0
        self._voiced_end = 0
        self._early = None

    async def commit(self) -> None:
        """Close the user turn; Whisper transcribes it on the ASR thread while ``commit``
        returns at once (the next ``respond`` waits for the text). A transcript started in the
        user's last pause is reused when no speech came after it."""
        self._check_open()
        if not self._audio:
            raise ValueError("commit with no user audio")
        early = self._early
        if early is not None and early[0] == self._voiced_end:
            job: Any = early[1]
            started = early[2]
            self.early_asr_hits += 1
        else:
            audio = np.concatenate(self._audio)
            job = asyncio.get_running_loop().run_in_executor(
                self.backend._asr_exec, self.backend.asr.transcribe, audio
            )
            started = now()
        self._reset_audio()
        self._commits += 1
        previous = self._asr_tail
        self._asr_tail = asyncio.ensure_future(self._transcribe_in_order(job, started, previous))

    async def _transcribe_in_order(
        self, job: asyncio.Future, started: float, previous: asyncio.Future | None
    ) -> None:
        committed = now()
        text = await job
        if previous is not None:
            await asyncio.shield(previous)  # turns enter the history in commit order
        #: ms from the commit until the transcript was ready (0 when the early pass had it).
        self.last_asr_ms = round((now() - committed) * 1000.0, 3)
        log.info("session %s heard: %r (ASR %.0f ms after commit, %.0f ms in all)",
                 self.config.call_id, text, self.last_asr_ms, (now() - started) * 1000.0)
        self.transcripts.append(text)
        if not self._closed:
            self.history.add_user(text or INAUDIBLE)

    async def take_transcripts(self) -> list[str]:
        """Whisper's text of the turns committed since the last call (already made at commit)."""
        tail, upto = self._asr_tail, self._commits
        if tail is not None:
            await asyncio.shield(tail)
        texts = self.transcripts[self._transcripts_taken : upto]
        self._transcripts_taken = max(self._transcripts_taken, upto)
        return texts

    async def wait_transcripts(self) -> None:
        """Wait until every committed user turn is in the history."""
        tail = self._asr_tail
        if tail is not None:
            await asyncio.shield(tail)

    async def append_text(self, text: str, role: str = "human") -> None:
        self._check_open()
        await self.wait_transcripts()  # keep the order the caller gave
        self.history.add_text(text, role)

    async def add_tool_result(self, call_id: str, output: str) -> None:
        self._check_open()
        self.history.add_tool_result(call_id, output)

    async def update(self, config: SessionConfig) -> None:
        self._check_open()
        normalize_tools(config.tools)
        self.config = config
        self.prewarm()

    def prewarm(self) -> None:
        """Put the system turn (persona, tools) into llama.cpp's prompt cache in the background,
        so the first reply only has to read the user's words."""
        prefill = getattr(self.backend.llm, "prefill", None)
        if prefill is None or self.history.turns:
            return
        prefix = render_chatml(self.system_text(), [], self.config.tools, tool_rules=TOOL_RULES,
                               closing=self.closing_text())
        prefix = prefix.removesuffix("<|im_start|>assistant\n")
        # Only the newest system turn is worth warming: a flow sends its persona and tools as a
        # few updates in a row, and each full prefill costs seconds on a CPU. An older prewarm
        # that has not started is skipped; one that has is stopped at its next batch.
        self._prewarm_gen += 1
        gen = self._prewarm_gen

        def stale() -> bool:
            return gen != self._prewarm_gen

        def job() -> Any:
            if stale():
                return None
            return prefill(prefix, cancelled=stale)

        future = asyncio.get_running_loop().run_in_executor(self.backend._llm_exec, job)
        future.add_done_callback(_log_prewarm_failure)

    def _free(self) -> None:
        self._reset_audio()

    # ----------------------------------------------------------------- prompt
    def voice(self) -> str:
        """The TTS voice this session speaks with (the default for unknown names)."""
        want = self.config.voice
        if want and want not in self.backend.voices:
            if not self._warned_voice:
                log.warning(
                    "cpu backend has no voice %r (has %s); using %r",
                    want, list(self.backend.voices), self.backend.default_voice,
                )
                self._warned_voice = True
            return self.backend.default_voice
        return want or self.backend.default_voice

    def system_text(self) -> str:
        """Persona + phone-reply rules + date + style (the tool rules follow the tool block)."""
        cfg = self.config
        parts = [cfg.system_prompt.strip() or "You are a helpful voice assistant.",
                 GROUNDING_RULES, VOICE_RULES]
        parts.append(f"Today is {self.date.strftime('%A, %B %d, %Y').replace(' 0', ' ')}.")
        if cfg.style:
            parts.append(f"Speaking style: {cfg.style}.")
        return "\n".join(parts)

    def closing_text(self) -> str:
        """What ends the system turn: the persona's open and closed days (``day_facts``)."""
        return day_facts(self.config.system_prompt)

    def build_prompt(self, instructions: str | None = None) -> str:
        return render_chatml(self.system_text(), self.history.turns, self.config.tools,
                             instructions, tool_rules=TOOL_RULES, closing=self.closing_text())

    def _fit_context(self, instructions: str | None) -> tuple[str, int]:
        """The prompt, dropping the oldest turns when it would not leave room for the reply."""
        want = max(1, min(self.config.sampling.max_tokens, self.backend.max_reply_tokens))
        budget_chars = int((self.backend.n_ctx - want) * CHARS_PER_TOKEN * 0.8)
        prompt = self.build_prompt(instructions)
        while len(prompt) > budget_chars and len(self.history.turns) > 1:
            self.history.drop_oldest(1)
            prompt = self.build_prompt(instructions)
        return prompt, want

    # ----------------------------------------------------------------- respond
    def respond(self, instructions: str | None = None) -> AsyncIterator[BackendEvent]:
        self._check_idle()
        run = _Run(t0=now(), loop=asyncio.get_running_loop())
        return self._start(run, lambda: self._produce(run, instructions))

    async def _produce(self, run: _Run, instructions: str | None) -> None:
        """The user's transcript, the prompt, the LLM (on its thread), the last sentences."""
        backend = self.backend
        await self.wait_transcripts()
        guard = self.history.tool_call_streak >= backend.max_tool_calls_in_a_row
        if guard:
            instructions = with_loop_instruction(instructions)
        prompt, max_tokens = self._fit_context(instructions)
        run.prompt = prompt
        log.debug("session %s prompt: %r", self.config.call_id, prompt)
        run.history_len = len(self.history.turns)
        tools = tool_names(self.config.tools)
        if not run.cancel.is_set():
            run.stats = await run.loop.run_in_executor(
                backend._llm_exec, self._generate, run, prompt, max_tokens
            )
        if not run.cancel.is_set():
            for ev in run.extractor.finish():
                self._on_extracted(run, ev, tools, guard)
        for sentence in run.splitter.finish():
            self._queue_sentence(run, sentence)

    def _output(self, run: _Run) -> Coroutine[Any, Any, None]:
        return self._speak(run)

    def _end_output(self, run: _Run) -> None:
        run.to_speak.put_nowait(None)

    def _record(self, run: _Run, cancelled: bool) -> None:
        if not (run.sentences or run.calls or run.refused_calls):
            return
        self.history.add_reply(
            run.sentences,
            [] if cancelled else run.calls,
            tool_call_attempted=run.refused_calls > 0,
            at=run.history_len,
        )
        if cancelled:
            self.history.truncate_last_reply(
                run.heard_ms if run.heard_ms is not None else float("inf")
            )

    # ----------------------------------------------------------------- LLM thread
    def _generate(self, run: _Run, prompt: str, max_tokens: int) -> CompletionStats:
        """On the LLM thread: stream the completion, handing each piece to the event loop."""
        run.t_start = now()
        tools = tool_names(self.config.tools)
        guard = self.history.tool_call_streak >= self.backend.max_tool_calls_in_a_row

        def on_piece(text: str) -> bool:
            if run.cancel.is_set():
                return True
            if run.t_prefill is None:
                run.t_prefill = now()
            run.loop.call_soon_threadsafe(self._on_piece, run, text, tools, guard)
            return False

        sampling = self.config.sampling
        if sampling.temperature > self.backend.max_temperature:
            sampling = dataclasses.replace(sampling, temperature=self.backend.max_temperature)
        return self.backend.llm.complete(
            prompt,
            sampling,
            on_piece,
            max_tokens=max_tokens,
            cancelled=run.cancel.is_set,
        )

    def _on_piece(self, run: _Run, text: str, tools: set[str], guard: bool) -> None:
        if run.cancel.is_set():
            return
        for ev in run.extractor.feed(text):
            self._on_extracted(run, ev, tools, guard)

    def _on_extracted(self, run: _Run, ev: Any, tools: set[str], guard: bool) -> None:
        if isinstance(ev, SpokenText):
            if not run.text and not ev.text.strip():
                return  # leading whitespace/newlines
            text = ev.text if run.text else ev.text.lstrip()
            run.text.append(text)
            run.events.put_nowait(TextDelta(text))
            for sentence in run.splitter.feed(text):
                self._queue_sentence(run, sentence)
        elif isinstance(ev, ParsedToolCall):
            limit = self.backend.max_tool_calls_in_a_row
            run.events.put_nowait(run.screen_tool_call(ev.name, ev.arguments, tools, guard, limit))
        elif isinstance(ev, BadToolCall):
            run.events.put_nowait(run.bad_tool_call(ev.message))

    def _queue_sentence(self, run: _Run, text: str) -> None:
        sentence = SpokenSentence(text)
        run.sentences.append(sentence)
        if run.t_first_code is None:
            run.t_first_code = now()
        run.to_speak.put_nowait(sentence)

    # ----------------------------------------------------------------- TTS task
    async def _speak(self, run: _Run) -> None:
        """Voice each sentence as it arrives (on the TTS thread); stops on cancel."""
        backend = self.backend
        loop = run.loop
        chunk = OUTPUT_RATE * AUDIO_CHUNK_MS // 1000
        while True:
            sentence = await run.to_speak.get()
            if sentence is None:
                return
            if run.cancel.is_set():
                continue
            words = speakable(sentence.text)
            if not words:
                sentence.audio_ms = 0.0
                continue
            try:
                pcm = await loop.run_in_executor(backend._tts_exec, backend.tts.synthesize, words)
            except BaseException:
                run.cancel.set()
                raise
            if run.cancel.is_set():
                continue
            pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
            sentence.audio_ms = pcm.size * 1000.0 / OUTPUT_RATE
            for i in range(0, pcm.size, chunk):
                run.add_audio(pcm[i : i + chunk])

    # ----------------------------------------------------------------- barge-in
    def _cut_last_reply(self, heard_ms: float) -> None:
        self.history.truncate_last_reply(heard_ms)


__all__ = [
    "DEFAULT_MAX_TOOL_CALLS_IN_A_ROW",
    "INAUDIBLE",
    "CpuBackend",
    "CpuSession",
    "load_cpu_backend",
]
