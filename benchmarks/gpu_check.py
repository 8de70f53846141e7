"""One command for a lent GPU: Step-Audio 2 mini's LLM, audio encoder and token2wav at real size.

Usage (from the repo root, nothing installed but torch, transformers and numpy)::

    python benchmarks/gpu_check.py --out gpu_check.jsonl           # real sizes, cuda if present
    python benchmarks/gpu_check.py --tiny                          # tiny sizes on CPU (CI, < 1 min)
    python benchmarks/gpu_check.py --sections llm --budget 120     # one section, shorter budget

No checkpoint files are needed: every network is built from its real config with RANDOM weights
in memory, through our own code (``model_service.stepaudio2`` and ``model_service.token2wav``).
The LLM and the audio encoder are built on the meta device and materialised on the target device
with a random init there (the CPU default init of 8 B parameters would take minutes); token2wav
(flow 156 M + HiFT 21 M parameters) keeps its modules' default init on the CPU and is moved.
Speed does not depend on the weights' values (no data-dependent control flow on these paths), so
the timings are those of the real networks; their outputs are noise.

Each figure is one JSON line on stdout (and in ``--out``)::

    {"figure": "llm_prefill_ms", "tokens": 2048, "p50": ..., "p95": ..., "tok_per_s": ..., ...}

Figures: ``llm_prefill_ms`` (per prompt length), ``llm_decode_token_ms`` (per context, KV cache),
``audio_encoder_ms`` (per audio length), ``token2wav_first_chunk_ms`` and ``token2wav_rtf`` (per
number of concurrent streams); an ``environment`` line comes first. A section that fails prints
``{"figure": SECTION, "error": "..."}`` and the others still run; a section the time budget
(``--budget``, default 450 s) no longer allows prints ``{"figure": ..., "skipped": "..."}``.
Progress goes to stderr. A watchdog ends the process ``HARD_GRACE_S`` after the budget whatever
is running (so the default run never passes 8 minutes).

Exit status: 0 every section ran; 1 a section failed; 3 none failed but the budget skipped some;
4 the watchdog stopped a section that overran.

Import closure: torch, transformers (and what it requires), numpy and the standard library. Our
modules that import anything else at top level are dealt with here: ``model_service.token2wav``
imports ``soundfile`` and ``soxr`` (``voice.py``, only used to read prompt wavs, which this script
never does), so when they are missing ``_stub_missing_modules`` puts placeholder modules in
``sys.modules`` before the import. ``model_service.stepaudio2.generate`` imports
``model_service.sampling`` -> ``stepcall.protocol`` -> pydantic, so the decode loop here calls
``StepAudio2ForCausalLM.forward`` with a KV cache directly, as ``Generator`` does. Nothing reads
or writes safetensors. ``tests/benchmarks/test_gpu_check.py`` runs ``--tiny`` with everything
outside that closure hidden.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_T_START = time.monotonic()  # the budget counts from here: numpy / torch imports included

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_BUDGET_S = 450.0
HARD_GRACE_S = 25.0  # the watchdog fires this long after the budget (450 + 25 < 480 s)
SECTIONS = ("llm", "audio_encoder", "token2wav")
TEXT_TOKENS = 151643  # random prompt ids are drawn below the first special token

# Step-Audio 2 mini's config.json (reference doc, step-audio2-mini.md §1.4).
REAL_LLM_CONFIG: dict[str, Any] = {
    "architectures": ["StepAudio2ForCausalLM"],
    "model_type": "step_audio_2",
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_attention_groups": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 28,
        "max_seq_len": 16384,
        "vocab_size": 158720,
        "rms_norm_eps": 1e-06,
        "eos_token_id": 151643,
        "pad_token_id": 151643,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 16384,
        "rope_scaling": None,
        "torch_dtype": "bfloat16",
    },
    "audio_encoder_config": {
        "n_mels": 128,
        "n_audio_ctx": 1500,
        "n_audio_state": 1280,
        "n_audio_head": 20,
        "n_audio_layer": 32,
        "n_codebook_size": 4096,
        "llm_dim": 3584,
        "kernel_size": 3,
        "adapter_stride": 2,
    },
}

# Modules our code imports at top level that the lent machine lacks and this script never uses.
OPTIONAL_MODULES = ("soundfile", "soxr")


# ------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Plan:
    """What to build and how much to measure."""

    name: str  # "real" | "tiny"
    llm_config: dict[str, Any]
    llm_dtype: torch.dtype
    prefill_tokens: tuple[int, ...]
    prefill_reps: int
    decode_tokens: int
    encoder_seconds: tuple[float, ...]
    encoder_reps: int
    token2wav: Callable[[], Any]  # -> model_service.token2wav.Token2WavConfig
    token2wav_dtype: str  # Token2Wav's dtype argument ("auto" = fp16 on CUDA, fp32 on CPU)
    streams: tuple[int, ...]
    stream_codes: int  # codes per stream (25 = 1 s of audio)
    stream_step: int  # codes delivered per round, as an LLM emits them
    stream_repeats: int
    prompt_codes: int  # voice prompt length in codes


def _real_token2wav() -> Any:
    from model_service.token2wav.config import Token2WavConfig

    return Token2WavConfig()  # the official sizes are its defaults


def _tiny_token2wav() -> Any:
    from harness.checkpoints.tiny_token2wav import TINY_FLOW, TINY_HIFT
    from model_service.token2wav.config import Token2WavConfig

    return Token2WavConfig(flow=TINY_FLOW, hift=TINY_HIFT)


def real_plan() -> Plan:
    return Plan(
        name="real",
        llm_config=REAL_LLM_CONFIG,
        llm_dtype=torch.bfloat16,
        prefill_tokens=(512, 2048),
        prefill_reps=5,
        decode_tokens=64,
        encoder_seconds=(5.0, 25.0),
        encoder_reps=5,
        token2wav=_real_token2wav,
        token2wav_dtype="auto",
        streams=(1, 8, 16, 32, 64),
        stream_codes=200,  # 8 s per stream
        stream_step=5,
        stream_repeats=3,
        prompt_codes=226,  # the shipped default_female.wav is 9.04 s
    )


def tiny_plan() -> Plan:
    from harness.checkpoints.tiny_checkpoint import TINY_CONFIG

    return Plan(
        name="tiny",
        llm_config=TINY_CONFIG,
        llm_dtype=torch.float32,
        prefill_tokens=(32, 128),
        prefill_reps=3,
        decode_tokens=16,
        encoder_seconds=(5.0, 25.0),
        encoder_reps=3,
        token2wav=_tiny_token2wav,
        token2wav_dtype="auto",
        streams=(1, 4),
        stream_codes=50,
        stream_step=5,
        stream_repeats=2,
        prompt_codes=75,
    )


# ------------------------------------------------------------------------------ reporting


class BudgetExhausted(Exception):
    """The time budget does not allow the next measurement."""


class Budget:
    def __init__(self, seconds: float, t0: float | None = None) -> None:
        self.seconds = float(seconds)
        self.t0 = time.monotonic() if t0 is None else t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def check(self, what: str, need_s: float = 0.0) -> None:
        if self.left() <= need_s:
            raise BudgetExhausted(
                f"time budget of {self.seconds:.0f} s used up ({self.elapsed():.0f} s elapsed) "
                f"before {what}"
            )


class Report:
    """Writes JSON lines to stdout and ``--out``, flushed at once (the watchdog may exit hard)."""

    def __init__(self, out: Path | None, budget: Budget) -> None:
        self.budget = budget
        self.lock = threading.Lock()
        self.fh = open(out, "w", encoding="utf-8") if out is not None else None
        self.errors: list[str] = []
        self.skipped: list[str] = []

    def emit(self, **fields: Any) -> None:
        line = json.dumps(fields)
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            if self.fh is not None:
                self.fh.write(line + "\n")
                self.fh.flush()
        if "error" in fields:
            self.errors.append(str(fields.get("figure")))
        if "skipped" in fields:
            self.skipped.append(str(fields.get("figure")))

    def progress(self, msg: str) -> None:
        print(f"[gpu_check {self.budget.elapsed():6.1f}s] {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def percentiles(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
        "n": int(arr.size),
    }


# ------------------------------------------------------------------------------ context


@dataclass
class Context:
    plan: Plan
    device_arg: str
    report: Report
    budget: Budget
    inject_failure: str | None = None
    device_label: str = ""
    _model: Any = None
    _model_error: BaseException | None = None

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_arg)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def emit(self, figure: str, **fields: Any) -> None:
        line: dict[str, Any] = {"figure": figure, **fields}
        line["device"] = self.device_label or self.device_arg
        if self.device.type == "cuda":
            line["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        self.report.emit(**line)

    def step_audio2(self) -> Any:
        """The Step-Audio 2 model of the plan, random weights, built once for two sections."""
        if self._model_error is not None:
            raise RuntimeError(f"model build failed earlier: {self._model_error}")
        if self._model is None:
            try:
                self._model = build_step_audio2(self.plan, self.device, self.report)
            except BaseException as e:
                self._model_error = e
                raise
        return self._model

    def drop_model(self) -> None:
        self._model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@contextlib.contextmanager
def timed(ctx: Context) -> Iterator[list[float]]:
    """``with timed(ctx) as t: ...`` appends the block's wall time in ms (device synchronised)."""
    out: list[float] = []
    ctx.sync()
    t0 = time.perf_counter()
    yield out
    ctx.sync()
    out.append((time.perf_counter() - t0) * 1000.0)


# ------------------------------------------------------------------------------ models


@torch.no_grad()
def random_init_(module: torch.nn.Module, seed: int = 0) -> None:
    """In-place random weights on the parameters' own device: N(0, 0.02) matrices, unit norms."""
    for i, (name, p) in enumerate(module.named_parameters()):
        gen = torch.Generator(device=p.device)
        gen.manual_seed(seed + i)
        if p.dim() >= 2:
            p.normal_(0.0, 0.02, generator=gen)
        elif name.endswith("bias"):
            p.zero_()
        else:  # LayerNorm / RMSNorm scales
            p.fill_(1.0)


def step_audio2_on_meta(plan: Plan) -> Any:
    """``StepAudio2ForCausalLM`` of the plan's config on the meta device (no memory, no init)."""
    from model_service.stepaudio2.config import StepAudio2Config
    from model_service.stepaudio2.modeling import StepAudio2ForCausalLM

    cfg = StepAudio2Config.from_dict(plan.llm_config)
    with torch.device("meta"):
        model = StepAudio2ForCausalLM(cfg)
    return model.to(dtype=plan.llm_dtype)


def build_step_audio2(plan: Plan, device: torch.device, report: Report) -> Any:
    # loader's own helper recreates the rotary buffers the meta build leaves empty and checks
    # that no meta tensor is left; loader imports safetensors only inside its file readers.
    from model_service.stepaudio2.loader import _rebuild_buffers

    t0 = time.perf_counter()
    model = step_audio2_on_meta(plan)
    n_params = sum(p.numel() for p in model.parameters())
    report.progress(
        f"building Step-Audio 2 ({plan.name}, {n_params / 1e9:.3f} B params, "
        f"{str(plan.llm_dtype).removeprefix('torch.')}) on {device}"
    )
    model.to_empty(device=device)
    random_init_(model)
    _rebuild_buffers(model, device)
    model.eval()
    model.requires_grad_(False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report.progress(f"built in {time.perf_counter() - t0:.1f} s")
    return model


# ------------------------------------------------------------------------------ sections


def section_llm(ctx: Context) -> None:
    """Prefill ms / tok/s per prompt length; per-token decode ms after each prefill (KV cache)."""
    plan = ctx.plan
    model = ctx.step_audio2()
    dev = ctx.device
    gen = torch.Generator().manual_seed(1)
    dtype = str(plan.llm_dtype).removeprefix("torch.")

    def prefill(ids: torch.Tensor) -> tuple[Any, int]:
        # as Generator._run: embeddings (no audio here), one forward over the prompt, last logits
        cache = model.new_cache()
        embeds = model.embed(ids)
        logits, cache = model(inputs_embeds=embeds, past_key_values=cache, logits_to_keep=1)
        return cache, int(torch.argmax(logits[0, -1]).item())

    def decode_step(cache: Any, token: int) -> int:
        step = torch.tensor([[token]], dtype=torch.long, device=dev)
        logits, _ = model(input_ids=step, past_key_values=cache, logits_to_keep=1)
        return int(torch.argmax(logits[0, -1]).item())

    with torch.inference_mode():
        for n_tok in plan.prefill_tokens:
            ctx.budget.check(f"llm prefill {n_tok}")
            ids = torch.randint(0, TEXT_TOKENS, (1, n_tok), generator=gen).to(dev)
            ctx.report.progress(f"llm: prefill {n_tok} tokens x {plan.prefill_reps} (+1 warm-up)")
            cache, token = prefill(ids)  # warm-up
            del cache
            times: list[float] = []
            for _ in range(plan.prefill_reps):
                ctx.budget.check(f"llm prefill {n_tok}")
                with timed(ctx) as t:
                    cache, token = prefill(ids)
                times += t
            stats = percentiles(times)
            ctx.emit(
                "llm_prefill_ms",
                tokens=n_tok,
                **stats,
                tok_per_s=round(n_tok / (stats["p50"] / 1000.0), 1),
                dtype=dtype,
            )
            ctx.report.progress(f"llm: decode {plan.decode_tokens} tokens after {n_tok}")
            for _ in range(3):  # warm-up steps (not counted)
                token = decode_step(cache, token)
            steps: list[float] = []
            for _ in range(plan.decode_tokens):
                ctx.budget.check(f"llm decode at {n_tok}")
                with timed(ctx) as t:
                    token = decode_step(cache, token)
                steps += t
            stats = percentiles(steps)
            ctx.emit(
                "llm_decode_token_ms",
                context=n_tok,
                **stats,
                tok_per_s=round(1000.0 / stats["p50"], 1),
                dtype=dtype,
            )
            del cache


def section_audio_encoder(ctx: Context) -> None:
    """``encode_audio`` (encoder + adapter) on one chunk of random mels per audio length."""
    from model_service.stepaudio2.mel import SAMPLE_RATE, audio_token_count, mel_frame_count

    plan = ctx.plan
    model = ctx.step_audio2()
    gen = torch.Generator().manual_seed(2)
    dtype = str(plan.llm_dtype).removeprefix("torch.")
    try:
        for secs in plan.encoder_seconds:
            ctx.budget.check(f"audio encoder {secs:g} s")
            frames = mel_frame_count(int(secs * SAMPLE_RATE))
            # log-mel after Whisper normalisation lies around [-1.5, 1.5]
            mel = torch.randn(128, frames, generator=gen) * 0.5
            ctx.report.progress(
                f"audio encoder: {secs:g} s ({frames} mel frames) x {plan.encoder_reps}"
            )
            with torch.inference_mode():
                model.encode_audio([mel])  # warm-up
                times: list[float] = []
                for _ in range(plan.encoder_reps):
                    ctx.budget.check(f"audio encoder {secs:g} s")
                    with timed(ctx) as t:
                        model.encode_audio([mel])
                    times += t
            ctx.emit(
                "audio_encoder_ms",
                audio_s=secs,
                mel_frames=frames,
                audio_tokens=audio_token_count(frames),
                **percentiles(times),
                dtype=dtype,
            )
    finally:
        ctx.drop_model()  # its last user: free the LLM's memory before token2wav


def _random_voice(n_codes: int, seed: int) -> Any:
    from model_service.token2wav.config import MEL_BINS, N_CODES
    from model_service.token2wav.voice import Voice

    rng = np.random.default_rng(seed)
    return Voice(
        name="random",
        codes=rng.integers(0, N_CODES, n_codes).astype(np.int64),
        embedding=rng.standard_normal(192).astype(np.float32),
        mel=(rng.standard_normal((2 * n_codes, MEL_BINS)) - 5.0).astype(np.float32),
    )


def section_token2wav(ctx: Context) -> None:
    """Streaming token2wav at N concurrent streams: first-chunk latency and RTF.

    Driven by ``benchmarks/token2wav_bench.run`` (``Token2Wav.push_many`` / ``flush_many``, every
    stream's ready chunk in one batched flow pass per round, as ``Token2WavBatcher`` does).
    """
    _stub_missing_modules()  # model_service.token2wav.voice imports soundfile and soxr
    from benchmarks.token2wav_bench import run as bench_run
    from model_service.token2wav import ChunkSchedule, Token2Wav
    from model_service.token2wav.flow import CausalMaskedDiffWithXvec
    from model_service.token2wav.hift import HiFTGenerator

    plan = ctx.plan
    cfg = plan.token2wav()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # Token2Wav takes the modules themselves: random weights in memory, no flow.pt / hift.pt
    eng = Token2Wav(
        cfg,
        CausalMaskedDiffWithXvec(cfg.flow),
        HiFTGenerator(cfg.hift),
        device=ctx.device,
        dtype=plan.token2wav_dtype,
    )
    n_params = sum(p.numel() for p in eng.flow.parameters()) + sum(
        p.numel() for p in eng.hift.parameters()
    )
    ctx.report.progress(
        f"token2wav ({plan.name}, {n_params / 1e6:.1f} M params, flow "
        f"{str(eng.dtype).removeprefix('torch.')}) built in {time.perf_counter() - t0:.1f} s"
    )
    voice = _random_voice(plan.prompt_codes, seed=3)
    schedule = ChunkSchedule()
    device = str(ctx.device)
    common = {
        "codes_per_stream": plan.stream_codes,
        "step": plan.stream_step,
        "prompt_codes": plan.prompt_codes,
        "schedule": f"{schedule.first_chunk}/{schedule.chunk}+{eng.lookahead}",
        "dtype": str(eng.dtype).removeprefix("torch."),
    }
    with torch.inference_mode():
        bench_run(eng, voice, 1, 20, plan.stream_step, device, schedule)  # warm-up
        last: tuple[int, float] | None = None  # (streams, seconds) of the previous count
        for n in plan.streams:
            need = 0.0 if last is None else last[1] * n / last[0]
            if ctx.budget.left() <= need:
                msg = (
                    f"time budget: {ctx.budget.left():.0f} s left, {n} streams would need "
                    f"~{need:.0f} s"
                )
                for fig in ("token2wav_first_chunk_ms", "token2wav_rtf"):
                    ctx.emit(fig, streams=n, skipped=msg)
                continue
            ctx.report.progress(
                f"token2wav: {n} streams x {plan.stream_codes} codes x {plan.stream_repeats}"
            )
            t_n = time.perf_counter()
            bench_run(eng, voice, n, 2 * plan.stream_step + 13, plan.stream_step, device, schedule)
            firsts: list[float] = []
            rtfs: list[float] = []
            audio_s = 0.0
            for _ in range(plan.stream_repeats):
                f, rtf, audio_s = bench_run(
                    eng, voice, n, plan.stream_codes, plan.stream_step, device, schedule
                )
                firsts += [x * 1000.0 for x in f]
                rtfs.append(rtf)
            last = (n, time.perf_counter() - t_n)
            ctx.emit("token2wav_first_chunk_ms", streams=n, **percentiles(firsts), **common)
            rtf_stats = percentiles(rtfs)
            ctx.emit(
                "token2wav_rtf",
                streams=n,
                **rtf_stats,
                audio_s_per_stream=round(audio_s, 3),
                audio_s_per_wall_s=round(n / rtf_stats["p50"], 2),
                **common,
            )


SECTION_FUNCS: dict[str, Callable[[Context], None]] = {
    "llm": section_llm,
    "audio_encoder": section_audio_encoder,
    "token2wav": section_token2wav,
}


# ------------------------------------------------------------------------------ environment


class _MissingModule(types.ModuleType):
    """Stands in for an optional module that is not installed; any use raises."""

    __gpu_check_stub__ = True

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(
            f"{self.__name__} is not installed (gpu_check put a placeholder in its place); "
            f"{self.__name__}.{attr} is unavailable"
        )


def _stub_missing_modules() -> list[str]:
    """Placeholders for ``OPTIONAL_MODULES`` that cannot be imported; returns their names."""
    stubbed = []
    for name in OPTIONAL_MODULES:
        mod = sys.modules.get(name)
        if mod is not None:
            if getattr(mod, "__gpu_check_stub__", False):
                stubbed.append(name)
            continue
        try:
            importlib.import_module(name)
        except (ImportError, OSError):  # OSError: soundfile without its libsndfile
            sys.modules[name] = _MissingModule(name)
            stubbed.append(name)
    return stubbed


def describe_environment(ctx: Context) -> None:
    import transformers

    dev = ctx.device
    label = str(dev)
    extra: dict[str, Any] = {}
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        label = f"cuda:{idx} {props.name}"
        extra = {
            "gpu_mem_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
        }
    elif dev.type == "cpu":
        label = f"cpu ({torch.get_num_threads()} threads)"
    ctx.device_label = label
    ctx.report.emit(
        figure="environment",
        mode=ctx.plan.name,
        device=label,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        numpy=np.__version__,
        stubbed_modules=_stub_missing_modules(),
        budget_s=ctx.budget.seconds,
        **extra,
    )


# ------------------------------------------------------------------------------ main


def _start_watchdog(ctx: Context, sections: list[str], at: list[int]) -> None:
    """End the process ``HARD_GRACE_S`` after the budget; ``at[0]``: the running section's index."""
    limit = ctx.budget.seconds + HARD_GRACE_S

    def fire() -> None:
        time.sleep(max(0.0, limit - ctx.budget.elapsed()))
        i = at[0]
        ctx.report.emit(
            figure=sections[i] if i >= 0 else "environment",
            error=f"hard time limit of {limit:.0f} s reached while this section ran; aborted",
        )
        for name in sections[i + 1 :]:
            ctx.report.emit(figure=name, skipped=f"not run: hard time limit of {limit:.0f} s")
        ctx.report.progress("watchdog: aborting")
        os._exit(4)

    threading.Thread(target=fire, name="gpu-check-watchdog", daemon=True).start()


def run(ctx: Context, sections: list[str]) -> int:
    at = [-1]
    _start_watchdog(ctx, sections, at)
    try:
        describe_environment(ctx)
    except Exception as e:  # noqa: BLE001 - reported, the sections still run
        ctx.report.emit(figure="environment", error=f"{type(e).__name__}: {e}")
        traceback.print_exc()
    for i, name in enumerate(sections):
        at[0] = i
        if ctx.budget.left() <= 0:
            ctx.report.emit(
                figure=name,
                skipped=f"time budget of {ctx.budget.seconds:.0f} s used up "
                f"({ctx.budget.elapsed():.0f} s elapsed)",
            )
            continue
        ctx.report.progress(f"section {name}")
        t0 = time.perf_counter()
        try:
            if ctx.inject_failure == name:
                raise RuntimeError(f"injected failure (--inject-failure {name})")
            if ctx.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(ctx.device)  # cuda_peak_gib: this section's
            SECTION_FUNCS[name](ctx)
        except BudgetExhausted as e:
            ctx.report.emit(figure=name, skipped=str(e))
        except Exception as e:  # noqa: BLE001 - one failing section must not stop the others
            ctx.report.emit(figure=name, error=f"{type(e).__name__}: {e}"[:2000])
            traceback.print_exc()
        finally:
            gc.collect()
            if ctx.device_arg.startswith("cuda") and torch.cuda.is_available():
                torch.cuda.empty_cache()
        ctx.report.progress(f"section {name} done in {time.perf_counter() - t0:.1f} s")
    ctx.report.progress(
        f"finished in {ctx.budget.elapsed():.1f} s: {len(ctx.report.errors)} error(s), "
        f"{len(ctx.report.skipped)} skipped"
    )
    if ctx.report.errors:
        return 1
    if ctx.report.skipped:
        return 3
    return 0


def main(argv: list[str] | None = None, start: float | None = None) -> int:
    """Run the check; ``start`` (monotonic) is when the budget began (default: now)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU by default), for CI")
    ap.add_argument(
        "--device", default=None, help="torch device (default cuda if present; cpu with --tiny)"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON lines to FILE")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds (default 450)")
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (--tiny: 1)")
    ap.add_argument(
        "--inject-failure", default=None, metavar="SECTION", help="make SECTION raise (tests)"
    )
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    threads = args.threads if args.threads is not None else (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    budget = Budget(args.budget, start)
    report = Report(args.out, budget)
    try:
        plan = tiny_plan() if args.tiny else real_plan()
        ctx = Context(
            plan=plan,
            device_arg=args.device,
            report=report,
            budget=budget,
            inject_failure=args.inject_failure,
        )
        return run(ctx, sections)
    finally:
        report.close()


if __name__ == "__main__":
    sys.exit(main(start=_T_START))
