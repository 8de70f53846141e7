"""The ``reference`` backend: Step-Audio 2 in plain PyTorch plus our streaming token2wav.

One loaded model and one token2wav are shared by every session. The reference backend does not
batch: responses queue for the model (a single worker thread, ``queue_ms`` is the wait) and each
one decodes alone, while token2wav runs through a ``Token2WavBatcher`` (its own worker thread), so
vocoding overlaps decoding and chunks of concurrent sessions share one flow pass.

Per session (``ReferenceSession``): the ``Conversation`` (history with the exact generated ids of
assistant turns, pending tool calls, loop guard), the open user turn's audio
(``UserAudioBuffer``, mel computed chunk by chunk), the ``KVSession`` that lets the next turn
prefill only the new suffix, and the session config (persona, voice, style, tools, sampling).

A response runs as described in ``responses.py``: the model thread streams token ids through
``TA4Parser``; text and tool calls go straight to the response's event queue, audio codes go to
the vocoder task (batched token2wav ``push`` as codes arrive, ``flush`` at the end). A cancel
stops the decoder within one step.
``ReferenceSession._run_model`` is the one step that touches the decoder: the vLLM backend's
session subclasses ``ReferenceSession`` and overrides only that.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_service.backends.base import (
    Backend,
    BackendEvent,
    SessionConfig,
    SpeechUnsupported,
    TextDelta,
)
from model_service.backends.conversation import Conversation, UserAudioBuffer
from model_service.backends.responses import (
    DEFAULT_MAX_TOOL_CALLS_IN_A_ROW,
    ResponseRun,
    ResponseSession,
    now,
    with_loop_instruction,
)
from model_service.sampling import GREEDY, SamplingParams
from model_service.stepaudio2 import parser as ta4
from model_service.stepaudio2.forced import ForcedSpeech
from model_service.stepaudio2.generate import GenerationStats, Generator, KVSession, PrefixStore
from model_service.stepaudio2.prompt import (
    SUMMARY_SUFFIX_EN,
    AudioPart,
    HumanMessage,
    Prompt,
    PromptBuilder,
    SystemMessage,
    TextPart,
    ToolSchemasMessage,
    system_prompt,
)

log = logging.getLogger(__name__)

#: Voice names with a hand-written description for the system prompt ("talk in ...").
VOICE_DESCRIPTIONS = {
    "default_female": "the default female voice",
    "default_male": "the default male voice",
}


#: Step-Audio 2's task prompt for transcription ("write down the speech you hear").
ASR_PROMPT = "请记录下你所听到的语音内容。"
ASR_MAX_TOKENS = 128
_TAG = re.compile(r"<[^<>]{0,40}>")


#: The persona of a verbatim render's system turn (a session's prompt without a bot persona).
SPEECH_PERSONA = "You are a helpful voice assistant."
#: The instruction turn of a verbatim render; the text slots are forced to the text anyway.
READ_ALOUD = "Read the following text aloud, word for word, and nothing else:\n{text}"


@dataclass
class SpeechRender:
    """What the latest ``render_speech`` decoded (for inspection and tests)."""

    text: str
    voice: str | None
    prompt_ids: list[int]
    ids: list[int]  # generated after <tts_start>, ending with <|EOT|>
    codes: list[int]  # the audio codes token2wav voiced


def clean_transcript(text: str) -> str:
    """Transcript text without special/language tags (e.g. ``<中文>``) and extra spaces."""
    return " ".join(_TAG.sub(" ", text).split())


def voice_description(voice: str | None) -> str | None:
    """How the system prompt names a voice: ``default_female`` → "the default female voice"."""
    if not voice:
        return None
    return VOICE_DESCRIPTIONS.get(voice, f"the {voice.replace('_', ' ').replace('-', ' ')} voice")


# ------------------------------------------------------------------------------ the backends
class StepAudioBackend(Backend):
    """What the reference and vLLM backends share: the voices (token2wav prompts, prepared once
    and cached), one token2wav batcher for all sessions, and the open sessions."""

    vocoder: Any
    t2w_wait_ms: float
    #: audio chunks one prompt may carry (None: no limit); sessions trim history to it
    max_audio_chunks: int | None = None

    def _init_voices(
        self, vocoder: Any | None, voices: dict[str, str | Path] | None, default_voice: str | None
    ) -> None:
        """Set up the voices, their cache, the batcher slot and the session set (``__init__``)."""
        self.vocoder = vocoder
        self.voices: dict[str, Path] = {k: Path(v) for k, v in (voices or {}).items()}
        self.default_voice = default_voice or _pick_default_voice(self.voices)
        if self.default_voice is not None and self.voices and self.default_voice not in self.voices:
            raise ValueError(
                f"default voice {self.default_voice!r} is not among the voices {sorted(self.voices)}"
            )
        self._voice_cache: dict[str, Any] = {}
        self._voice_lock = threading.Lock()
        self._batcher: Any = None
        self._batcher_loop: asyncio.AbstractEventLoop | None = None
        self.sessions: set[ReferenceSession] = set()

    def _new_session(self, config: SessionConfig) -> ReferenceSession:
        """A session of this backend's kind (``open_session`` registers it)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- verbatim speech
    #: Decoding of a render's audio slots: seeded, so a text renders alike every time.
    speech_sampling: SamplingParams = SamplingParams(seed=0)
    #: The latest render (``SpeechRender``), None before the first.
    last_speech: SpeechRender | None = None

    def speech_prompt(self, text: str, voice: str | None, style: str | None) -> Prompt:
        """A render's prompt: the system turn a session with this voice and style would have
        (``system_prompt``), a human turn asking to read ``text`` aloud, ``<tts_start>``."""
        system = system_prompt(
            SPEECH_PERSONA, voice_desc=voice_description(voice), style=style
        )
        messages = [
            SystemMessage(system),
            HumanMessage([TextPart(READ_ALOUD.format(text=text))]),
        ]
        return self.prompts.build(messages, reply="speech")

    async def render_speech(
        self, text: str, *, voice: str | None = None, style: str | None = None
    ) -> np.ndarray:
        """``text`` spoken verbatim in ``voice``: TA4 decoding with the text slots forced to the
        text's tokens (``ForcedSpeech``), the model choosing the audio codes, then token2wav."""
        if self.vocoder is None:
            raise SpeechUnsupported("this checkpoint has no token2wav: it cannot speak")
        voice = voice or self.default_voice
        if voice is None or voice not in self.voices:
            raise ValueError(f"unknown voice {voice!r} (known: {sorted(self.voices)})")
        text = text.strip()
        plan = ForcedSpeech.for_text(self.tok, text)
        prompt = self.speech_prompt(text, voice, style)
        ids = await self._forced_decode(prompt, plan)
        plan.check(ids)
        codes = plan.codes(ids)
        self.last_speech = SpeechRender(text, voice, list(prompt.ids), ids, codes)
        return await self._vocode_codes(codes, voice)

    async def _forced_decode(self, prompt: Prompt, plan: ForcedSpeech) -> list[int]:
        """The render's generated ids (each backend decodes its own way)."""
        raise NotImplementedError

    async def _vocode_codes(self, codes: list[int], voice: str) -> np.ndarray:
        """All of ``codes`` through the shared token2wav batcher, as one 24 kHz array."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._vocoder_exec, self.voice_for, voice)
        state = self.vocoder.new_stream(prepared)
        batcher = self.t2w_batcher()
        pieces = list(await batcher.push(state, codes))
        pieces.append(await batcher.flush(state))
        out = [np.asarray(x, dtype=np.float32).reshape(-1) for x in pieces if x is not None]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    async def open_session(self, config: SessionConfig) -> ReferenceSession:
        if config.voice and config.voice not in self.voices and self.vocoder is not None:
            raise ValueError(f"unknown voice {config.voice!r} (known: {sorted(self.voices)})")
        session = self._new_session(config)
        self.sessions.add(session)
        return session

    async def _close_sessions(self) -> None:
        """Close every session, then the token2wav batcher."""
        for session in list(self.sessions):
            await session.close()
        await close_batcher(self)

    def t2w_batcher(self) -> Any:
        """The ``Token2WavBatcher`` all sessions push codes through (see ``batcher_for``)."""
        return batcher_for(self)

    def voice_for(self, name: str | None) -> Any:
        """The prepared token2wav voice for ``name`` (default voice when None); cached."""
        name = name or self.default_voice
        if self.vocoder is None or name is None:
            return None
        with self._voice_lock:
            if name not in self._voice_cache:
                if name not in self.voices:
                    raise ValueError(f"unknown voice {name!r} (known: {sorted(self.voices)})")
                self._voice_cache[name] = self.vocoder.prepare_voice(self.voices[name])
            return self._voice_cache[name]


class ReferenceBackend(StepAudioBackend):
    """Step-Audio 2 (PyTorch) + token2wav, one response at a time on the model.

    ``loaded`` is a ``stepaudio2.loader.LoadedModel``; ``vocoder`` a ``token2wav.Token2Wav`` or
    None (then responses carry text and codes but no audio). ``voices`` maps voice names to
    prompt files (``.wav`` or ``.npz``); ``default_voice`` is used when a session names none.
    """

    name = "reference"

    def __init__(
        self,
        loaded: Any,
        vocoder: Any | None = None,
        *,
        voices: dict[str, str | Path] | None = None,
        default_voice: str | None = None,
        max_tool_calls_in_a_row: int = DEFAULT_MAX_TOOL_CALLS_IN_A_ROW,
        tool_result_suffix: str = SUMMARY_SUFFIX_EN,
        today: Callable[[], _dt.date] = _dt.date.today,
        max_context: int | None = None,
        context_fill: float = 0.75,
        t2w_wait_ms: float = 5.0,
        prefix_cache_entries: int = 4,
    ) -> None:
        if loaded.tokenizer is None:
            raise ValueError("the reference backend needs the checkpoint's tokenizer")
        if max_tool_calls_in_a_row < 1:
            raise ValueError(f"max_tool_calls_in_a_row must be >= 1, got {max_tool_calls_in_a_row}")
        self.loaded = loaded
        self.model = loaded.model
        self.tok = loaded.tokenizer
        self.model_name = Path(str(loaded.path)).name
        self.generator = Generator(self.model, self.tok.stop_ids, patch_id=self.tok.ids.audio_patch)
        # KV of each bot's system + tool-schema turns, shared by its calls (0 entries: off)
        self.prefix_store = PrefixStore(prefix_cache_entries) if prefix_cache_entries > 0 else None
        self.prompts = PromptBuilder(self.tok)
        self._init_voices(vocoder, voices, default_voice)
        self.max_tool_calls_in_a_row = max_tool_calls_in_a_row
        self.tool_result_suffix = tool_result_suffix
        self.today = today
        model_ctx = int(getattr(self.model.config.text, "max_position_embeddings", 0) or 0)
        self.max_context = int(max_context or model_ctx or 16384)
        if not 0.0 < context_fill <= 1.0:
            raise ValueError(f"context_fill must be in (0, 1], got {context_fill}")
        self.context_fill = context_fill
        # The model queue: one worker, so responses never overlap on the model.
        self._model_exec = ThreadPoolExecutor(1, thread_name_prefix="ref-model")
        self._vocoder_exec = ThreadPoolExecutor(1, thread_name_prefix="ref-token2wav")
        self.t2w_wait_ms = t2w_wait_ms

    def _new_session(self, config: SessionConfig) -> ReferenceSession:
        return ReferenceSession(self, config)

    async def _forced_decode(self, prompt: Prompt, plan: ForcedSpeech) -> list[int]:
        """On the model thread (queued like a response): the ``Generator`` with the plan's
        per-step constraint (``forced`` hook), from a fresh cache."""

        def decode() -> list[int]:
            return list(
                self.generator.stream(
                    prompt.ids,
                    sampling=self.speech_sampling,
                    max_tokens=plan.max_tokens,
                    session=KVSession(),
                    stats=GenerationStats(),
                    forced=plan.allowed,
                )
            )

        return await asyncio.get_running_loop().run_in_executor(self._model_exec, decode)

    async def close(self) -> None:
        await self._close_sessions()
        self._model_exec.shutdown(wait=False, cancel_futures=True)
        self._vocoder_exec.shutdown(wait=False, cancel_futures=True)


def batcher_for(backend: Any) -> Any:
    """The token2wav batcher of ``backend`` for the running event loop.

    One ``Token2WavBatcher`` per backend batches every session's chunks; it belongs to the loop
    it was first used on, so a backend driven from a new loop (tests run one loop per test)
    gets a fresh one. ``backend`` needs ``vocoder``, ``t2w_wait_ms``, ``_batcher`` and
    ``_batcher_loop`` attributes.
    """
    from model_service.token2wav.batcher import Token2WavBatcher

    loop = asyncio.get_running_loop()
    if backend._batcher is None or backend._batcher_loop is not loop:
        _drop_foreign_batcher(backend)
        backend._batcher = Token2WavBatcher(backend.vocoder, max_wait_ms=backend.t2w_wait_ms)
        backend._batcher_loop = loop
    return backend._batcher


def _drop_foreign_batcher(backend: Any) -> None:
    old = backend._batcher
    if old is not None:
        pool = getattr(old, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    backend._batcher = None
    backend._batcher_loop = None


async def close_batcher(backend: Any) -> None:
    """Stop ``backend``'s batcher (awaited when it runs on this loop)."""
    batcher = backend._batcher
    if batcher is None:
        return
    try:
        same_loop = backend._batcher_loop is asyncio.get_running_loop()
    except RuntimeError:
        same_loop = False
    if same_loop:
        backend._batcher = None
        backend._batcher_loop = None
        await batcher.close()
    else:
        _drop_foreign_batcher(backend)


def _pick_default_voice(voices: dict[str, Path]) -> str | None:
    for name in ("default", "default_female"):
        if name in voices:
            return name
    return next(iter(sorted(voices)), None)


def find_voices(*folders: Path) -> dict[str, Path]:
    """Voice prompts (``*.wav`` / ``*.npz``) in ``folders``, by file stem; first folder wins.

    A wav with a same-named ``.npz`` beside it is listed once, as the wav (token2wav reads the
    npz when present).
    """
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix in (".wav", ".npz") and p.stem not in found:
                wav = p.with_suffix(".wav")
                found[p.stem] = wav if wav.exists() else p
    return found


def checkpoint_voice_folders(model_dir: Path, token2wav_dir: Path | None = None) -> list[Path]:
    """Where a checkpoint's voices may live: ``assets/``, ``token2wav/voices/`` (and the loaded
    token2wav directory's ``voices/`` when it differs)."""
    folders = [model_dir / "assets", model_dir / "token2wav" / "voices"]
    if token2wav_dir is not None and token2wav_dir / "voices" not in folders:
        folders.append(token2wav_dir / "voices")
    return folders


def load_reference_backend(
    model_path: str | Path, device: str = "cpu", dtype: str = "auto", **kwargs: Any
) -> ReferenceBackend:
    """Load the checkpoint (and its ``token2wav/`` when present) into a ``ReferenceBackend``.

    ``kwargs`` go to ``ReferenceBackend`` (``voices``, ``default_voice``,
    ``max_tool_calls_in_a_row``, ``tool_result_suffix``).
    """
    from model_service.stepaudio2.loader import load_model

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(model_path, dtype=dtype, device=device)
    vocoder = None
    t2w_dir = loaded.path / "token2wav"
    if t2w_dir.is_dir():
        from model_service.token2wav.engine import Token2Wav

        vocoder = Token2Wav.load(t2w_dir, device=device)
    if "voices" not in kwargs:
        voices = find_voices(
            *checkpoint_voice_folders(loaded.path, vocoder.dir if vocoder is not None else None)
        )
        kwargs["voices"] = voices
    return ReferenceBackend(loaded, vocoder, **kwargs)


# ------------------------------------------------------------------------------ one response
@dataclass
class _Run(ResponseRun):
    """One response in flight: the decoder's ids and stats, the codes on their way to token2wav."""

    codes: asyncio.Queue = field(default_factory=asyncio.Queue)
    ids: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    prompt_ids: list[int] = field(default_factory=list)

    def post_codes(self, codes: list[int] | None) -> None:
        self.loop.call_soon_threadsafe(self.codes.put_nowait, codes)

    def token_counts(self) -> tuple[int, int]:
        return len(self.prompt_ids), len(self.ids)


class ReferenceSession(ResponseSession):
    """One call's conversation on a ``ReferenceBackend``."""

    _log = log
    _output_failed = "token2wav failed in session %s"

    def __init__(self, backend: ReferenceBackend, config: SessionConfig) -> None:
        self.backend = backend
        self.config = config
        self.conversation = Conversation(backend.tok, backend.tool_result_suffix)
        self.audio = UserAudioBuffer()
        self.kv = KVSession()
        self.date = backend.today()
        self._run: _Run | None = None
        self._closed = False
        self._asr_pending: list[list[Any]] = []  # mels of turns to transcribe

    @property
    def last_stats(self) -> GenerationStats | None:
        """Decoder statistics of the latest response (reused / prefilled tokens, stop reason)."""
        return self._run.stats if self._run is not None else None

    @property
    def last_prompt_ids(self) -> list[int] | None:
        """Prompt ids of the latest response."""
        return self._run.prompt_ids if self._run is not None else None

    # ----------------------------------------------------------------- user input
    async def append_audio(self, pcm16k: np.ndarray) -> None:
        self._check_open()
        # Appending is a copy; a finished 25 s chunk also gets its mel (tens of ms): off-loop.
        if self.audio.completes_chunk(len(pcm16k)):
            await asyncio.get_running_loop().run_in_executor(None, self.audio.append, pcm16k)
        else:
            self.audio.append(pcm16k)

    async def clear_audio(self) -> None:
        self._check_open()
        self.audio.clear()

    async def commit(self) -> None:
        self._check_open()
        if self.audio.total_samples == 0:
            raise ValueError("commit with no user audio")
        mels = await asyncio.get_running_loop().run_in_executor(None, self.audio.finish)
        self.conversation.add_user_audio(mels)
        if self.config.input_transcription:
            self._asr_pending.append(list(mels))

    async def take_transcripts(self) -> list[str]:
        """Step-Audio 2's own transcript of each pending user turn: a separate greedy text-only
        pass with the model's ASR task prompt, queued on the model thread after the response."""
        pending, self._asr_pending = self._asr_pending, []
        if not pending:
            return []
        loop = asyncio.get_running_loop()
        return [
            await loop.run_in_executor(self.backend._model_exec, self._transcribe, mels)
            for mels in pending
        ]

    def asr_prompt(self, mels: list[Any]) -> Any:
        """The transcription prompt of one user turn: ASR task prompt + its audio, text reply."""
        messages = [SystemMessage(ASR_PROMPT), HumanMessage([AudioPart(mel=m) for m in mels])]
        return self.backend.prompts.build(messages, reply="text")

    def transcript_text(self, ids: list[int], stop_ids: frozenset[int]) -> str:
        """Generated ids → transcript (stop, special and audio tokens dropped, tags removed)."""
        tok = self.backend.tok
        return clean_transcript(
            tok.decode([i for i in ids if i not in stop_ids and not tok.is_audio(i)])
        )

    def _transcribe(self, mels: list[Any]) -> str:
        """On the model thread: ASR prompt + the turn's audio → text."""
        generator = self.backend.generator
        prompt = self.asr_prompt(mels)
        ids = list(
            generator.stream(
                prompt.ids,
                audio=[slot.mel for slot in prompt.audios],
                sampling=GREEDY,
                max_tokens=ASR_MAX_TOKENS,
                session=KVSession(),
                audio_kind="mel",
                stats=GenerationStats(),
            )
        )
        return self.transcript_text(ids, generator.stop_ids)

    async def append_text(self, text: str, role: str = "human") -> None:
        self._check_open()
        self.conversation.add_text(text, role)

    async def add_tool_result(self, call_id: str, output: str) -> None:
        self._check_open()
        self.conversation.add_tool_result(call_id, output)

    async def update(self, config: SessionConfig) -> None:
        self._check_open()
        if config.voice and config.voice != self.config.voice and self.backend.vocoder is not None:
            if config.voice not in self.backend.voices:
                raise ValueError(
                    f"unknown voice {config.voice!r} (known: {sorted(self.backend.voices)})"
                )
        self.config = config

    def _free(self) -> None:
        self.kv.reset()
        self.audio.clear()

    # ----------------------------------------------------------------- prompt
    def system_text(self) -> str:
        """The system prompt: persona + tools sentence + date + style + voice."""
        cfg = self.config
        voice = cfg.voice or self.backend.default_voice
        return system_prompt(
            cfg.system_prompt or "You are a helpful voice assistant.",
            voice_desc=voice_description(voice),
            style=cfg.style,
            date=self.date,
            tools=bool(cfg.tools),
        )

    def prompt_messages(self, instructions: str | None = None) -> list[Any]:
        """What the next response's prompt is rendered from (system, tools, history, extra)."""
        return self.conversation.prompt_messages(
            self.system_text(), self.config.tools, instructions
        )

    def shared_prefix_len(self) -> int:
        """Tokens of the prompt every call of this bot starts with: the system turn and the
        tool-schema turn (the history and one-shot instructions come after them)."""
        system = self.system_text()
        head: list[Any] = [SystemMessage(system)] if system else []
        if self.config.tools:
            head.append(ToolSchemasMessage(list(self.config.tools)))
        return len(self.backend.prompts.build(head, reply="none").ids) if head else 0

    def build_prompt(self, instructions: str | None = None) -> Any:
        """The next response's ``prompt.Prompt`` (ids and audio slots), for inspection."""
        return self.backend.prompts.build(self.prompt_messages(instructions), reply="speech")

    def tool_names(self) -> set[str]:
        names = set()
        for tool in self.config.tools:
            fn = tool.get("function", tool) if isinstance(tool, dict) else {}
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.add(fn["name"])
        return names

    # ----------------------------------------------------------------- respond
    def respond(self, instructions: str | None = None) -> AsyncIterator[BackendEvent]:
        self._check_idle()
        run = _Run(t0=now(), loop=asyncio.get_running_loop())
        guard_tripped = self.conversation.tool_call_streak >= self.backend.max_tool_calls_in_a_row
        if guard_tripped:
            instructions = with_loop_instruction(instructions)
        prompt, max_tokens = self._fit_context(instructions)
        run.prompt_ids = prompt.ids
        run.history_len = len(self.conversation.messages)
        return self._start(run, lambda: self._run_model(run, prompt, max_tokens, guard_tripped))

    def _fit_context(self, instructions: str | None) -> tuple[Any, int]:
        """Build the prompt, dropping the oldest history turns when it would not leave room for
        ``max_tokens`` inside the model's context, or carries more audio chunks than the backend
        takes in one prompt (``backend.max_audio_chunks``, vLLM's ``limit_mm_per_prompt``).
        Trims to ``context_fill`` of either budget so it happens rarely (each trim costs one full
        prefill). Returns (prompt, max_tokens)."""
        backend = self.backend
        prompt = self.build_prompt(instructions)
        max_ctx = backend.max_context
        want = self.config.sampling.max_tokens
        max_chunks = backend.max_audio_chunks
        too_long = len(prompt.ids) + want > max_ctx
        too_many = max_chunks is not None and len(prompt.audios) > max_chunks
        if (too_long or too_many) and self.conversation.messages:
            parts = [backend.prompts.build([m], reply="none") for m in self.conversation.messages]
            excess = len(prompt.ids) - int((max_ctx - want) * backend.context_fill)
            excess_chunks = (
                len(prompt.audios) - max(1, int(max_chunks * backend.context_fill))
                if max_chunks is not None
                else 0
            )
            drop = 0
            # always keep the newest turn
            while drop < len(parts) - 1 and (
                (too_long and excess > 0) or (too_many and excess_chunks > 0)
            ):
                excess -= len(parts[drop].ids)
                excess_chunks -= len(parts[drop].audios)
                drop += 1
            if drop:
                log.info(
                    "session %s: dropping %d oldest turns (%s)",
                    self.config.call_id,
                    drop,
                    "context length" if too_long else f"over {max_chunks} audio chunks",
                )
                self.conversation.drop_oldest(drop)
                prompt = self.build_prompt(instructions)
        if max_chunks is not None and len(prompt.audios) > max_chunks:
            raise ValueError(
                f"one turn carries {len(prompt.audios)} audio chunks; the model takes at most "
                f"{max_chunks} in a prompt (STEPCALL_VLLM_MAX_AUDIO_CHUNKS)"
            )
        room = max_ctx - len(prompt.ids)
        if room < 1:
            raise ValueError(
                f"prompt of {len(prompt.ids)} tokens does not fit the model context ({max_ctx})"
            )
        return prompt, max(1, min(want, room))

    # ----------------------------------------------------------------- response steps
    def _output(self, run: _Run) -> Coroutine[Any, Any, None]:
        return self._vocode(run, self.config.voice or self.backend.default_voice)

    def _end_output(self, run: _Run) -> None:
        run.post_codes(None)  # after every code the model thread posted

    def _on_error(self, run: _Run) -> None:
        self.kv.reset()  # the decoder's cache may not match the history any more

    def _record(self, run: _Run, cancelled: bool) -> None:
        """Put the generated turn in the history (cut to what was heard when cancelled)."""
        if not run.ids:
            return
        conv = self.conversation
        conv.add_reply(
            run.ids,
            [] if cancelled else run.calls,
            tool_call_attempted=run.refused_calls > 0,
            at=run.history_len,
        )
        if cancelled:
            # heard_ms None: keep everything generated before the stop.
            conv.truncate_last_reply(run.heard_ms if run.heard_ms is not None else float("inf"))
        elif run.stats.stop_reason == "length":
            conv.truncate_last_reply(float("inf"))  # close the cut-off <tts_start> section

    # ----------------------------------------------------------------- model thread
    async def _run_model(
        self, run: _Run, prompt: Any, max_tokens: int, guard_tripped: bool
    ) -> None:
        """Decode the response: tokens go through ``TA4Parser`` into ``_on_parsed``.

        Here the PyTorch model runs on the backend's single model thread; backends with their
        own engine (vLLM) override this method and reuse everything else.
        """
        await run.loop.run_in_executor(
            self.backend._model_exec, self._generate, run, prompt, max_tokens, guard_tripped
        )

    def _generate(self, run: _Run, prompt: Any, max_tokens: int, guard_tripped: bool) -> None:
        """Runs on the model worker thread: prompt → tokens → parser events."""
        run.t_start = now()
        if run.cancel.is_set():
            return
        backend = self.backend
        audio = [slot.mel for slot in prompt.audios]
        parser = ta4.TA4Parser(backend.tok)
        tools = self.tool_names()
        sampling = self.config.sampling
        for token in backend.generator.stream(
            prompt.ids,
            audio=audio,
            sampling=sampling,
            cancel=run.cancel,
            max_tokens=max_tokens,
            session=self.kv,
            audio_kind="mel",
            stats=run.stats,
            prefix_store=backend.prefix_store,
            shared_prefix=self.shared_prefix_len() if self.kv.cache is None else 0,
        ):
            if run.t_prefill is None:
                run.t_prefill = now()
            run.ids.append(token)
            for ev in parser.feed(token):
                self._on_parsed(run, ev, tools, guard_tripped)
        if run.t_prefill is None and not run.cancel.is_set():
            run.t_prefill = now()
        for ev in parser.finish():
            self._on_parsed(run, ev, tools, guard_tripped)

    def _on_parsed(self, run: _Run, ev: Any, tools: set[str], guard_tripped: bool) -> None:
        if isinstance(ev, ta4.AudioCodes):
            if run.t_first_code is None:
                run.t_first_code = now()
            run.post_codes(list(ev.codes))
        elif isinstance(ev, ta4.TextDelta):
            if ev.text:
                run.text.append(ev.text)
                run.post(TextDelta(ev.text))
        elif isinstance(ev, ta4.ToolCall):
            limit = self.backend.max_tool_calls_in_a_row
            run.post(run.screen_tool_call(ev.name, ev.arguments, tools, guard_tripped, limit))
        elif isinstance(ev, ta4.ToolCallError):
            run.post(run.bad_tool_call(ev.message))

    # ----------------------------------------------------------------- vocoder task
    async def _vocode(self, run: _Run, voice_name: str | None) -> None:
        """Turn codes into 24 kHz audio as they arrive; flush at the end unless cancelled.

        The voice is prepared here (cached after the first use) while the model already
        decodes. A failure stops the generation too (the response ends with ``error``).
        """
        try:
            await self._vocode_loop(run, voice_name)
        except BaseException:
            run.cancel.set()  # codes posted from now on are simply never read
            raise

    async def _vocode_loop(self, run: _Run, voice_name: str | None) -> None:
        backend = self.backend
        vocoder = backend.vocoder
        loop = run.loop
        state = None
        batcher = None
        if vocoder is not None and voice_name is not None:
            voice = await loop.run_in_executor(backend._vocoder_exec, backend.voice_for, voice_name)
            state = vocoder.new_stream(voice)
            batcher = backend.t2w_batcher()  # concurrent sessions' chunks share a flow pass
        while True:
            batch: list[int] = []
            item = await run.codes.get()
            done = item is None
            if item is not None:
                batch.extend(item)
            while not done and not run.codes.empty():  # take everything already waiting
                more = run.codes.get_nowait()
                if more is None:
                    done = True
                else:
                    batch.extend(more)
            if state is None or run.cancel.is_set():
                if done:
                    return
                continue
            if batch:
                chunks = await batcher.push(state, batch)
                self._emit_audio(run, chunks)
            if done:
                if not run.cancel.is_set():
                    chunks = await batcher.flush(state)
                    self._emit_audio(run, chunks)
                return

    def _emit_audio(self, run: _Run, chunks: Any) -> None:
        if run.cancel.is_set() or chunks is None:
            return
        if isinstance(chunks, np.ndarray):
            chunks = [chunks]
        for pcm in chunks:
            pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
            if pcm.size == 0:
                continue
            run.add_audio(pcm)

    # ----------------------------------------------------------------- barge-in
    def _cut_last_reply(self, heard_ms: float) -> None:
        self.conversation.truncate_last_reply(heard_ms)


__all__ = [
    "DEFAULT_MAX_TOOL_CALLS_IN_A_ROW",
    "ReferenceBackend",
    "ReferenceSession",
    "SpeechRender",
    "StepAudioBackend",
    "batcher_for",
    "checkpoint_voice_folders",
    "close_batcher",
    "find_voices",
    "load_reference_backend",
    "voice_description",
]
