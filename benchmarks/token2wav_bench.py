"""token2wav benchmark: real-time factor and first-chunk latency for N concurrent sessions.

Usage:
    python benchmarks/token2wav_bench.py                       # tiny random weights, CPU
    python benchmarks/token2wav_bench.py --config official     # official sizes, random weights
    python benchmarks/token2wav_bench.py --config sizes.json --device cuda --dtype float16

Each session gets the same response length of random codes, fed to all sessions together in
steps of ``--step`` codes (as an LLM would emit them), through ``Token2Wav.push_many`` (one
batched flow pass per round) and ``flush_many``. Codes arrive instantly, so the numbers are pure
synthesis cost:

* first-chunk latency: wall time of the ``push_many`` call in which a session's first audio came
  out (its first 10 + 3 codes had just arrived); p50/p95 over sessions x repeats;
* RTF: total wall time / seconds of audio per session (< 1 means all N sessions keep up with
  real time on this machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.checkpoints.tiny_token2wav import build_tiny_token2wav  # noqa: E402
from model_service.token2wav import ChunkSchedule, Token2Wav, Token2WavConfig, Voice  # noqa: E402
from model_service.token2wav.flow import CausalMaskedDiffWithXvec  # noqa: E402
from model_service.token2wav.hift import HiFTGenerator  # noqa: E402


def _engine(
    config: str | None, device: str, dtype: torch.dtype, tmp: Path
) -> tuple[Token2Wav, Voice]:
    tiny = Token2Wav.load(build_tiny_token2wav(tmp), device="cpu")
    voice = tiny.prepare_voice(tiny.default_voice_path())
    if config is None:
        return Token2Wav.load(tmp / "token2wav", device=device, dtype=dtype), voice
    if config == "official":
        cfg = Token2WavConfig()
    else:
        cfg = Token2WavConfig.from_dict(json.loads(Path(config).read_text()))
    torch.manual_seed(0)
    eng = Token2Wav(
        cfg, CausalMaskedDiffWithXvec(cfg.flow), HiFTGenerator(cfg.hift), device=device, dtype=dtype
    )
    return eng, voice


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(
    eng: Token2Wav,
    voice: Voice,
    n: int,
    codes_per_session: int,
    step: int,
    device: str,
    schedule: ChunkSchedule,
) -> tuple[list[float], float, float]:
    rng = np.random.default_rng(n)
    codes = [rng.integers(0, 6561, codes_per_session).tolist() for _ in range(n)]
    states = [eng.new_stream(voice, schedule) for _ in range(n)]
    first: list[float | None] = [None] * n
    t_start = time.perf_counter()
    samples = [0] * n
    for i in range(0, codes_per_session, step):
        t0 = time.perf_counter()
        res = eng.push_many([(st, c[i : i + step]) for st, c in zip(states, codes, strict=False)])
        _sync(device)
        dt = time.perf_counter() - t0
        for k, chunks in enumerate(res):
            if chunks and first[k] is None:
                first[k] = dt
            samples[k] += sum(len(a) for a in chunks)
    for k, tail in enumerate(eng.flush_many(states)):
        samples[k] += len(tail)
    _sync(device)
    wall = time.perf_counter() - t_start
    audio_s = samples[0] / eng.sample_rate
    return [f for f in first if f is not None], wall / audio_s, audio_s


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config", default=None, help="'official' or a JSON {flow:{..}, hift:{..}}; default tiny"
    )
    ap.add_argument("--sessions", default="1,4,16")
    ap.add_argument("--codes", type=int, default=100, help="codes per session (25 = 1 s)")
    ap.add_argument("--step", type=int, default=5, help="codes delivered per round")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--first-chunk", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    schedule = ChunkSchedule(first_chunk=args.first_chunk, chunk=args.chunk)
    with tempfile.TemporaryDirectory() as tmp:
        eng, voice = _engine(args.config, args.device, dtype, Path(tmp))
        label = args.config or "tiny"
        print(
            f"token2wav bench: config={label} device={args.device} dtype={args.dtype} "
            f"threads={args.threads} prompt={len(voice.codes)} codes, response={args.codes} codes "
            f"({args.codes / 25:.1f} s), step={args.step}, schedule={args.first_chunk}/{args.chunk}+3"
        )
        run(eng, voice, 1, 20, args.step, args.device, schedule)  # warm-up
        print(
            f"{'sessions':>8} {'first p50 ms':>13} {'first p95 ms':>13} {'RTF':>7} {'audio s/s':>10}"
        )
        for n in [int(s) for s in args.sessions.split(",")]:
            firsts: list[float] = []
            rtfs: list[float] = []
            for _ in range(args.repeats):
                f, rtf, _audio = run(eng, voice, n, args.codes, args.step, args.device, schedule)
                firsts += f
                rtfs.append(rtf)
            firsts.sort()
            p50 = statistics.median(firsts) * 1000
            p95 = firsts[min(len(firsts) - 1, int(round(0.95 * (len(firsts) - 1))))] * 1000
            rtf = statistics.median(rtfs)
            print(f"{n:>8} {p50:>13.1f} {p95:>13.1f} {rtf:>7.3f} {n / rtf:>10.2f}")


if __name__ == "__main__":
    main()
