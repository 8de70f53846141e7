"""Benchmark the PyTorch reference path (Step-Audio 2 mini): prefill and decode speed.

Prints prefill tokens/s, decode tokens/s with p50/p95 per-token latency, and the time from
the request to the first audio code (audio encode + prefill + decode up to the first
``<audio_N>`` token). By default it builds the tiny *shaped* CPU checkpoint (which speaks a
scripted TA4 reply); pass ``--model PATH`` for a real checkpoint directory.

    python benchmarks/reference_backend.py                       # tiny, CPU
    python benchmarks/reference_backend.py --model /models/Step-Audio-2-mini \\
        --device cuda --dtype bfloat16 --audio-secs 5 --max-tokens 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_service.sampling import greedy as Sampling  # noqa: E402
from model_service.stepaudio2.generate import GenerationStats, Generator  # noqa: E402
from model_service.stepaudio2.loader import load_model  # noqa: E402
from model_service.stepaudio2.mel import audio_token_count, log_mel_spectrogram  # noqa: E402


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return float(np.percentile(np.asarray(xs), q))


def _synthetic_speechlike(secs: float, seed: int = 0) -> np.ndarray:
    """Deterministic voiced-ish audio (harmonics + noise with a syllable envelope), 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(secs * 16000)) / 16000
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.08 * voiced * env + 0.005 * rng.standard_normal(t.shape)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint dir (default: build the tiny shaped checkpoint)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--audio-secs", type=float, default=3.0, help="user audio length (0 = none)")
    ap.add_argument("--system", default="You are a helpful voice assistant on a phone line.")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0)
    args = ap.parse_args(argv)

    tmp = None
    if args.model:
        path = Path(args.model)
    else:
        from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint, default_script
        from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
        from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

        tmp = tempfile.TemporaryDirectory(prefix="sa2-bench-")
        build_tiny_tokenizer(Path(tmp.name) / "tok")
        tk0 = StepAudio2Tokenizer.from_pretrained(Path(tmp.name) / "tok")
        path = build_tiny_checkpoint(
            Path(tmp.name) / "ckpt", script=default_script(tk0), token2wav=False
        )

    t0 = time.perf_counter()
    lm = load_model(path, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - t0
    tk, model = lm.tokenizer, lm.model
    ids = tk.ids

    audio = []
    human = [ids.bot, *tk.encode("human\n")]
    if args.audio_secs > 0:
        mel = log_mel_spectrogram(_synthetic_speechlike(args.audio_secs))
        audio.append(mel)
        human += [
            ids.audio_start,
            *[ids.audio_patch] * audio_token_count(mel.shape[1]),
            ids.audio_end,
        ]
    else:
        human += tk.encode("Hello, what can you do for me?")
    prompt = (
        [ids.bot, *tk.encode(f"system\n{args.system}"), ids.eot]
        + human
        + [ids.eot]
        + [ids.bot, *tk.encode("assistant\n"), ids.tts_start]
    )
    sampling = Sampling(temperature=args.temperature, top_p=0.9, repetition_penalty=1.05, seed=0)
    gen = Generator(model, tk.stop_ids)

    def sync() -> None:
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()

    print(f"model: {path}  device: {args.device}  dtype: {model.dtype}  load: {load_s:.2f}s")
    print(
        f"prompt: {len(prompt)} tokens ({args.audio_secs:g} s audio)  max_tokens: {args.max_tokens}"
    )
    list(gen.stream(prompt, audio, sampling, max_tokens=4))  # warm-up
    rows = []
    for run in range(args.runs):
        stats = GenerationStats()
        sync()
        start = time.perf_counter()
        first_audio_ms = None
        n = 0
        for tok in gen.stream(prompt, audio, sampling, max_tokens=args.max_tokens, stats=stats):
            n += 1
            if first_audio_ms is None and tk.is_audio(tok):
                sync()
                first_audio_ms = (time.perf_counter() - start) * 1000
        sync()
        total = time.perf_counter() - start
        decode_s = sum(stats.token_ms) / 1000
        rows.append((stats, first_audio_ms, total))
        print(
            f"run {run}: prefill {stats.prefill_tokens} tok in {stats.prefill_ms:.1f} ms "
            f"({stats.prefill_tokens / max(stats.prefill_ms, 1e-9) * 1000:.0f} tok/s), "
            f"audio encode {stats.audio_encode_ms:.1f} ms, decode {len(stats.token_ms)} tok "
            f"({len(stats.token_ms) / max(decode_s, 1e-9):.1f} tok/s, "
            f"p50 {_percentile(stats.token_ms, 50):.2f} ms, p95 {_percentile(stats.token_ms, 95):.2f} ms), "
            f"first audio code {first_audio_ms if first_audio_ms is None else round(first_audio_ms, 1)} ms, "
            f"{n} tokens, stop={stats.stop_reason}"
        )
    all_tok = [ms for s, _, _ in rows for ms in s.token_ms]
    fa = [f for _, f, _ in rows if f is not None]
    print("summary:")
    print(
        f"  prefill tok/s  : {statistics.median(s.prefill_tokens / s.prefill_ms * 1000 for s, _, _ in rows):.0f}"
    )
    print(f"  decode tok/s   : {1000 / statistics.mean(all_tok) if all_tok else float('nan'):.1f}")
    print(
        f"  per-token ms   : p50 {_percentile(all_tok, 50):.2f}  p95 {_percentile(all_tok, 95):.2f}"
    )
    print(f"  first audio ms : {statistics.median(fa) if fa else float('nan'):.1f}")
    print("  realtime needs ~31.25 tok/s per stream (25 audio + 6.25 text/pad)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
