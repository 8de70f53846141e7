"""Voice-to-voice latency of the ``cpu`` backend (Whisper → llama.cpp → Piper) on this machine.

For each question: the question is spoken (Piper, deterministic) and appended as 16 kHz user
audio in real time (20 ms frames), the turn is committed, and a response is requested at once (as the bot does when the
turn ends, after ``VAD_STOP_S`` of silence). Voice-to-voice latency = commit → first bot
audio chunk (the backend's share); ``from_speech_end`` adds the VAD pause. Also reported: ASR time,
LLM first piece, first sentence to TTS, total, and what the bot said. VAD / turn detection and
network time are not included (see benchmarks/pipeline_overhead.py for those).

    .venv/bin/python benchmarks/cpu_backend_latency.py [--llm qwen2.5-1.5b|smollm2-135m]
        [--rounds 2] [--json out.json]

The first turn of a call is measured separately from follow-up turns (follow-ups reuse
llama.cpp's prompt cache).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_service.backends.base import (  # noqa: E402
    AudioChunk,
    ResponseDone,
    SamplingParams,
    SessionConfig,
)

PERSONA = (
    "You are the front desk of Luigi's Pizza in Springfield. We are open from 11 am to 10 pm "
    "every day, we deliver within 5 miles, and a large margherita costs 14 dollars."
)
VAD_STOP_S = 0.3  # silence the caller's pipeline waits for before it commits the turn
QUESTIONS = [
    "What time do you open tomorrow?",
    "Do you deliver to my neighborhood?",
    "How much is a large margherita pizza?",
    "Can I book a table for four people tonight?",
    "What is your address?",
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(np.floor(k)), int(np.ceil(k))
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def run(llm: str | None, rounds: int) -> dict:
    import soxr

    from model_service.backends.cpu import load_cpu_backend

    t = time.perf_counter()
    backend = await asyncio.to_thread(load_cpu_backend, llm)
    load_s = time.perf_counter() - t
    print(f"loaded {backend.model_name} in {load_s:.1f} s", flush=True)
    questions = [
        soxr.resample(backend.tts.synthesize(q), 24000, 16000).astype(np.float32)
        for q in QUESTIONS
    ]
    turns = []
    for r in range(rounds):
        session = await backend.open_session(SessionConfig(
            call_id=f"bench{r}", system_prompt=PERSONA,
            sampling=SamplingParams(temperature=0.0, max_tokens=80),
        ))
        for i, (text, audio) in enumerate(zip(QUESTIONS, questions, strict=True)):
            # The caller speaks in real time: 20 ms frames, so background work (prompt
            # prewarm) overlaps the speech as it does on a call.
            for k in range(0, audio.size, 320):
                await session.append_audio(audio[k : k + 320])
                await asyncio.sleep(0.02)
            t_speech_end = time.perf_counter()
            # The bot commits after VAD hears VAD_STOP_S of silence (stop_secs 0.2 + Smart Turn).
            for _ in range(int(VAD_STOP_S / 0.02)):
                await session.append_audio(np.zeros(320, np.float32))
                await asyncio.sleep(0.02)
            hits = session.early_asr_hits
            t0 = time.perf_counter()
            await session.commit()
            first_audio = None
            done = None
            async for ev in session.respond():
                if isinstance(ev, AudioChunk) and first_audio is None:
                    first_audio = time.perf_counter() - t0
                elif isinstance(ev, ResponseDone):
                    done = ev
            assert done is not None
            row = {
                "round": r, "turn": i, "question": text, "heard": session.transcripts[-1],
                "reply": done.text, "v2v_ms": None if first_audio is None else first_audio * 1e3,
                "from_speech_end_ms": None if first_audio is None
                else (t0 + first_audio - t_speech_end) * 1e3,
                "early_asr": session.early_asr_hits > hits,
                "asr_ms": session.last_asr_ms, "llm_first_ms": done.timings.prefill_ms,
                "first_sentence_ms": done.timings.first_code_ms,
                "total_ms": done.timings.total_ms, "audio_ms": done.audio_ms,
                "prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            }
            turns.append(row)
            print(f"[{r}.{i}] v2v {row['v2v_ms']:.0f} ms, from speech end "
                  f"{row['from_speech_end_ms']:.0f} ms (asr {row['asr_ms']:.0f}, llm first "
                  f"{row['llm_first_ms']:.0f}, sentence {row['first_sentence_ms']:.0f}) "
                  f"heard {row['heard']!r} -> {row['reply']!r}", flush=True)
        await session.close()
    await backend.close()
    v2v = [t["v2v_ms"] for t in turns if t["v2v_ms"] is not None]
    first = [t["v2v_ms"] for t in turns if t["turn"] == 0 and t["v2v_ms"] is not None]
    follow = [t["v2v_ms"] for t in turns if t["turn"] > 0 and t["v2v_ms"] is not None]
    summary = {
        "model": backend.model_name, "load_s": round(load_s, 2), "turns": len(turns),
        "v2v_p50_ms": round(statistics.median(v2v), 1), "v2v_p95_ms": round(_pct(v2v, 0.95), 1),
        "first_turn_p50_ms": round(statistics.median(first), 1) if first else None,
        "follow_up_p50_ms": round(statistics.median(follow), 1) if follow else None,
        "from_speech_end_p50_ms": round(
            statistics.median(t["from_speech_end_ms"] for t in turns if t["v2v_ms"]), 1),
        "early_asr_turns": sum(t["early_asr"] for t in turns),
        "asr_p50_ms": round(statistics.median(t["asr_ms"] for t in turns), 1),
        "llm_first_p50_ms": round(statistics.median(t["llm_first_ms"] for t in turns), 1),
    }
    return {"summary": summary, "turns": turns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llm", default=None, help="qwen2.5-1.5b (default) or smollm2-135m")
    ap.add_argument("--rounds", type=int, default=2, help="calls of 5 questions each")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = ap.parse_args()
    result = asyncio.run(run(args.llm, args.rounds))
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
