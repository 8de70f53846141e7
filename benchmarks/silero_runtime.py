"""Silero VAD per window: NumPy (stepcall.audio.silero) against ONNX Runtime (Pipecat's model).

Two cadences: windows back to back, and one window after each pause of ``--pause-ms`` (a call's
cadence: a window every 32 ms, other work in between; on a shared VM a window after a pause runs
on cold caches and costs several times more). Same window, same model file, interleaved rounds.
Each runtime scores the window from 16-bit PCM as the VAD does: NumPy through ``score_pcm16``,
ONNX Runtime after Pipecat's conversion to float.

    .venv/bin/python benchmarks/silero_runtime.py [--rate 8000] [--windows 300] [--pause-ms 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, choices=[8000, 16000], default=8000)
    ap.add_argument("--windows", type=int, default=300, help="windows per runtime and cadence")
    ap.add_argument("--pause-ms", type=float, default=20.0)
    args = ap.parse_args(argv)
    if args.windows < 10:
        ap.error("--windows must be >= 10")

    from loguru import logger
    from pipecat.audio.vad.silero import SileroOnnxModel

    from stepcall.audio.inference import SILERO_MODEL, _model_path, limit_blas_threads
    from stepcall.audio.silero import SileroNumpyModel

    limit_blas_threads()  # as in a bot process
    logger.remove()
    path = _model_path(*SILERO_MODEL)
    models = {"numpy": SileroNumpyModel(path), "onnxruntime": SileroOnnxModel(path)}
    n = 512 if args.rate == 16000 else 256
    window = np.random.default_rng(0).normal(0, 0.05, n).astype(np.float32)
    pcm = (window * 32768).astype(np.int16).tobytes()

    def onnx_score(model, rate):  # Pipecat's SileroVADAnalyzer.voice_confidence
        return model(np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0, rate)

    score = {"numpy": lambda model, rate: model.score_pcm16(pcm, rate), "onnxruntime": onnx_score}
    times: dict[tuple[str, str], list[float]] = {(r, c): [] for r in models for c in ("hot", "paused")}
    rounds = 10
    for _ in range(rounds):  # interleaved, so a change in the VM's speed hits both alike
        for name, model in models.items():
            for _ in range(args.windows // rounds):
                t = time.perf_counter()
                score[name](model, args.rate)
                times[(name, "hot")].append(time.perf_counter() - t)
            for _ in range(args.windows // rounds):
                time.sleep(args.pause_ms / 1000.0)
                t = time.perf_counter()
                score[name](model, args.rate)
                times[(name, "paused")].append(time.perf_counter() - t)

    print(f"Silero VAD, one window ({n} samples at {args.rate} Hz), µs per window:")
    p50 = {}
    for (name, cadence), ts in times.items():
        us = np.asarray(ts) * 1e6
        p50[(name, cadence)] = float(np.percentile(us, 50))
        label = "back to back" if cadence == "hot" else f"after a {args.pause_ms:g} ms pause"
        print(f"  {name:12s} {label:24s} p50 {p50[(name, cadence)]:7.1f}  "
              f"p95 {np.percentile(us, 95):7.1f}")
    for cadence in ("hot", "paused"):
        ratio = p50[("numpy", cadence)] / p50[("onnxruntime", cadence)]
        print(f"  numpy / onnxruntime ({cadence}): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
