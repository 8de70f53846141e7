"""Human-readable per-turn table and JSON summary of a simulated call (Twilio or WebRTC)."""

from __future__ import annotations

import json
from typing import Any

from harness.callers.scripted_call import CallResult, TurnResult


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _said(t: TurnResult, width: int = 38) -> str:
    s = t.text if t.text is not None else (f"DTMF {t.dtmf}" if t.dtmf else "(greeting)")
    return s if len(s) <= width else s[: width - 1] + "…"


def format_table(result: CallResult) -> str:
    """A per-turn table: what was said, latency, bot audio, flags."""
    rows = [("turn", "caller", "v2v ms", "bot audio s", "played s", "notes")]
    # v2v ms: end of the caller's speech -> first audible bot media (greeting: from stream start)
    turns = ([result.greeting] if result.greeting else []) + result.turns
    for t in turns:
        notes = [n for n, on in (("no reply", t.expect_reply and not t.replied and not t.skipped),
                                 ("timeout", t.timed_out), ("barge-in", t.barged_in),
                                 (f"clear x{t.clears}", t.clears), ("skipped", t.skipped)) if on]
        rows.append((str(t.index) if t.kind != "greeting" else "0",
                     _said(t), _fmt_ms(t.latency_ms), f"{t.bot_audio_secs:.2f}",
                     f"{t.bot_played_secs:.2f}", ", ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if getattr(result, "transport", "twilio") == "webrtc":
        lines.extend(_webrtc_footer(result))
    else:
        lines.extend(_twilio_footer(result))
    for e in result.errors:
        lines.append(f"ERROR: {e}")
    lines.append("result: OK" if result.ok else
                 f"result: FAILED (unanswered turns: {result.unanswered_turns or 'none'})")
    return "\n".join(lines)


def _twilio_footer(result: CallResult) -> list[str]:
    lines = []
    sids = ", ".join(result.stream_sids_seen) or "(none)"
    lines.append("")
    lines.append(f"streamSid {result.stream_sid}; seen on bot messages: {sids}")
    hung_up = result.hung_up_by or "-"
    if result.hung_up_by == "bot":
        hung_up += f" (close code {result.close_code}{', ' + result.close_reason if result.close_reason else ''})"
    lines.append(f"marks: {len(result.marks)} received, "
                 f"{sum(m.echoed_ms is not None for m in result.marks)} echoed; "
                 f"hung up by: {hung_up}; "
                 f"max frame lag {result.max_send_lag_ms:.1f} ms")
    return lines


def _webrtc_footer(result: CallResult) -> list[str]:
    """Footer of a browser call (``harness.callers.webrtc_client.WebRTCCallResult``)."""
    r: Any = result
    said = " ".join(t.bot_text.strip() for t in ([r.greeting] if r.greeting else []) + r.turns
                    if t.bot_text.strip())
    hung_up = r.hung_up_by or "-"
    if r.hung_up_by == "bot" and r.close_reason:
        hung_up += f" ({r.close_reason})"
    return [
        "",
        f"WebRTC call {r.call_id or '-'} to bot {r.bot or '(server default)'}; "
        f"bot-ready: {'yes' if r.bot_ready else 'no'}; "
        f"data channel: {len(r.messages)} messages",
        f"bot said: {said or '(no transcript)'}",
        f"hung up by: {hung_up}; max frame lag {r.max_send_lag_ms:.1f} ms",
    ]


def to_json(result: CallResult, with_events: bool = True) -> str:
    """The JSON summary (``--json``)."""
    d = result.to_dict()
    if not with_events:
        d.pop("events", None)
    return json.dumps(d, indent=2)
