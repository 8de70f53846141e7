"""Model-service protocol: parsing and encoding typical messages, the old code against the new.

The model service parses every text message of every call session on its event loop, and the
client parses every event. This times ``stepcall.protocol`` of the working tree against the one
of an older revision (``--old``, by default the last one with the hand-written field checks,
before the pydantic message models), read with ``git show`` into a temporary module, in
interleaved rounds (a change in the machine's speed hits both alike). Per message: p50 / p95 µs
of ``parse_*`` and of ``*_to_json``, and new / old of the p50s.

Messages: ``session.start`` with 6 tools, ``response.create``, the ``text.delta`` and
``response.done`` events, and ``turn.check`` with 8 s of audio at 16 kHz (the bot's rate) and at
48 kHz (the largest one accepted: 1.0 MB of base64; the 1.5 MiB cap on its size is above it).

    .venv/bin/python benchmarks/protocol_parse.py [--old REV] [--rounds 20]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The last revision whose protocol.py checked fields by hand (dataclasses).
HAND_WRITTEN = "7a7c0d0cd845e9b18fb1e1f12e1a8d442661d3af"


def _old_module(rev: str, workdir: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:stepcall/protocol.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = workdir / "old_protocol.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_protocol", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_protocol"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tool(name: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Look up {name} for the caller.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "what to look for"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 10},
                },
                "required": ["query"],
            },
        },
    }


def _turn_check(rate: int) -> str:
    pcm = np.random.default_rng(0).integers(-3000, 3000, 8 * rate, dtype=np.int16).tobytes()
    audio = base64.b64encode(pcm).decode("ascii")
    return json.dumps({"type": "turn.check", "check_id": 7, "sample_rate": rate, "audio": audio})


#: (name, direction, wire text, iterations per round)
MESSAGES = [
    (
        "session.start (6 tools)",
        "client",
        json.dumps(
            {
                "type": "session.start",
                "protocol": 1,
                "call_id": "CA0123456789abcdef",
                "system_prompt": "You are the front desk of a small hotel. " * 20,
                "voice": "alice",
                "tools": [_tool(f"tool_{i}") for i in range(6)],
                "input_sample_rate": 8000,
                "output_sample_rate": 8000,
                "max_response_tokens": 300,
                "sampling": {"temperature": 0.7, "top_p": 0.9, "seed": 7},
                "input_transcription": True,
            }
        ),
        500,
    ),
    ("response.create", "client", json.dumps({"type": "response.create"}), 2000),
    (
        "text.delta",
        "server",
        json.dumps(
            {
                "type": "text.delta",
                "session_id": "sess_0123456789ab",
                "response_id": "resp_0123456789ab",
                "text": "Our check-in starts at three in the afternoon.",
            },
            ensure_ascii=False,
        ),
        2000,
    ),
    (
        "response.done",
        "server",
        json.dumps(
            {
                "type": "response.done",
                "session_id": "sess_0123456789ab",
                "response_id": "resp_0123456789ab",
                "status": "completed",
                "text": "Our check-in starts at three in the afternoon.",
                "audio_ms": 2880.0,
                "timings": {
                    "queue_ms": 0.2,
                    "prefill_ms": 41.5,
                    "first_code_ms": 80.1,
                    "first_audio_ms": 150.3,
                    "total_ms": 900.0,
                },
                "usage": {"prompt_tokens": 812, "completion_tokens": 96},
            }
        ),
        1000,
    ),
    ("turn.check (8 s at 16 kHz)", "client", _turn_check(16000), 200),
    ("turn.check (8 s at 48 kHz)", "client", _turn_check(48000), 100),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=HAND_WRITTEN, help="git revision of the old protocol.py")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    args = ap.parse_args(argv)

    from stepcall import protocol as new

    with tempfile.TemporaryDirectory() as tmp:
        old = _old_module(args.old, Path(tmp))
    codes = {"old": old, "new": new}
    ops = {}  # (message, op) -> {code: callable}
    for name, direction, text, _ in MESSAGES:
        for label, module in codes.items():
            if direction == "client":
                parse, encode = module.parse_client_message, module.message_to_json
            else:
                parse, encode = module.parse_server_event, module.event_to_json
            parsed = parse(text)
            assert encode(parsed) == old_encode(old, direction, text)  # the same wire text
            ops.setdefault((name, "parse"), {})[label] = (parse, text)
            ops.setdefault((name, "encode"), {})[label] = (encode, parsed)
    times: dict[tuple[str, str, str], list[float]] = {}
    loops = {name: n for name, _, _, n in MESSAGES}
    for _ in range(args.rounds):
        for (name, op), by_code in ops.items():
            for label, (fn, arg) in by_code.items():
                ts = times.setdefault((name, op, label), [])
                for _ in range(max(1, loops[name] // args.rounds)):
                    t = time.perf_counter()
                    fn(arg)
                    ts.append(time.perf_counter() - t)

    print(f"stepcall.protocol, old ({args.old[:7]}) vs new (working tree), µs per call:")
    print(f"  {'message':28s} {'op':7s} {'old p50':>9s} {'p95':>9s} {'new p50':>9s} {'p95':>9s}"
          f" {'new/old':>8s}")
    for name, op in ops:
        row = {}
        for label in codes:
            us = np.asarray(times[(name, op, label)]) * 1e6
            row[label] = (np.percentile(us, 50), np.percentile(us, 95))
        ratio = row["new"][0] / row["old"][0]
        print(f"  {name:28s} {op:7s} {row['old'][0]:9.1f} {row['old'][1]:9.1f} "
              f"{row['new'][0]:9.1f} {row['new'][1]:9.1f} {ratio:8.2f}")
    return 0


def old_encode(old: ModuleType, direction: str, text: str) -> str:
    """The old code's encoding of ``text`` (the new one must write the same JSON)."""
    if direction == "client":
        return old.message_to_json(old.parse_client_message(text))
    return old.event_to_json(old.parse_server_event(text))


if __name__ == "__main__":
    raise SystemExit(main())
