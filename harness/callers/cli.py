"""``stepcall call``: place a simulated call to a bot (Twilio phone call or WebRTC browser call)
and report latency.

Examples::

    stepcall call ws://127.0.0.1:8080/twilio/stream --param bot=support \\
        --say "Hi, I need to reset my password." --say "My email is ada at example dot com." \\
        --out call.wav --json

    stepcall call --webrtc http://127.0.0.1:8080 --bot support --say "Hi there." --out web.wav
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from harness.callers.report import format_table, to_json
from harness.callers.scripted_call import CallerTurn, CallOptions, CallResult
from harness.callers.twilio_client import run_call
from stepcall.audio.speech import ENGINES, SpeechUnavailableError


class _TurnAction(argparse.Action):
    """Appends (--say TEXT | --dtmf DIGITS) to one ordered list of turns."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        turns = list(getattr(namespace, "turns", None) or [])
        kind = "dtmf" if option_string == "--dtmf" else "say"
        turns.append((kind, values))
        namespace.turns = turns


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param needs key=value, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stepcall call",
        description="Place a simulated call: speak Twilio's Media Streams protocol to a "
        "bot's WebSocket (or, with --webrtc, call the bot server over WebRTC like the browser "
        "widget), say each turn (synthesised speech, real-time 20 ms frames), wait "
        "for the bot's reply, and report voice-to-voice latency per turn.",
    )
    p.add_argument("url", help="the bot's media-stream WebSocket, e.g. ws://HOST:PORT/twilio/stream; "
                   "with --webrtc the bot server's base URL, e.g. http://HOST:PORT")
    p.add_argument("--webrtc", action="store_true",
                   help="call over WebRTC (POST URL/webrtc/offer, Opus audio, data channel)")
    p.add_argument("--bot", help="with --webrtc: the bot to call (default: the server's default)")
    p.add_argument("--token", help="with --webrtc: a widget call token (servers with "
                   "STEPCALL_WIDGET_SECRET; see `stepcall widget-token`)")
    p.add_argument("--say", action=_TurnAction, dest="turns", metavar="TEXT",
                   help="a caller turn (repeat for more turns, in order)")
    p.add_argument("--dtmf", action=_TurnAction, dest="turns", metavar="DIGITS",
                   help="a keypad turn, e.g. 12# (in order with --say)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="start.customParameters entry, e.g. bot=support (repeatable)")
    p.add_argument("--from", dest="from_number", help="caller number (customParameters from_number)")
    p.add_argument("--to", dest="to_number", help="called number (customParameters to_number)")
    p.add_argument("--pause", type=float, default=0.5, metavar="SECS",
                   help="silence before each turn (default 0.5)")
    p.add_argument("--wait", type=float, default=15.0, metavar="SECS",
                   help="max wait for each bot reply to begin (default 15)")
    p.add_argument("--quiet", type=float, default=1.2, metavar="SECS",
                   help="bot silence that ends its reply (default 1.2)")
    p.add_argument("--greeting-wait", type=float, default=2.0, metavar="SECS",
                   help="listen this long for a bot greeting before the first turn (default 2)")
    p.add_argument("--barge-in-after", type=float, metavar="SECS",
                   help="start the next turn this long into the bot's reply (interrupt it)")
    p.add_argument("--engine", choices=ENGINES, help="speech engine (default: best installed)")
    p.add_argument("--out", metavar="WAV", help="write a stereo recording (left caller, right bot)")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 when every turn was answered and no protocol error occurred."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    specs = getattr(args, "turns", None) or []
    if not specs:
        print("stepcall call: give at least one --say TEXT or --dtmf DIGITS", file=sys.stderr)
        return 2
    problem = _mode_problem(args)
    if problem:
        print(f"stepcall call: {problem}", file=sys.stderr)
        return 2
    try:
        turns = [CallerTurn(text=v) if k == "say" else CallerTurn(dtmf=v) for k, v in specs]
        common = dict(
            pause_secs=args.pause, wait_secs=args.wait, quiet_secs=args.quiet,
            greeting_wait_secs=args.greeting_wait, barge_in_after=args.barge_in_after,
            engine=args.engine, record_path=args.out,
        )
        result: CallResult
        if args.webrtc:
            from harness.callers.webrtc_client import WebRTCCallOptions, run_webrtc_call

            web = WebRTCCallOptions(bot=args.bot, token=args.token, **common)
            result = asyncio.run(run_webrtc_call(args.url, turns, web))
        else:
            options = CallOptions(params=dict(args.param), from_number=args.from_number,
                                  to_number=args.to_number, **common)
            result = asyncio.run(run_call(args.url, turns, options))
    except (ValueError, SpeechUnavailableError) as e:
        print(f"stepcall call: {e}", file=sys.stderr)
        return 2
    print(to_json(result) if args.json else format_table(result))
    if args.out and not args.json:
        print(f"recording: {result.record_path}")
    return 0 if result.ok else 1


def _mode_problem(args: argparse.Namespace) -> str | None:
    """Options that belong to the other transport (None when the command line is consistent)."""
    if args.webrtc:
        twilio_only = [name for name, given in (("--param", args.param),
                                                ("--from", args.from_number),
                                                ("--to", args.to_number)) if given]
        if twilio_only:
            return (f"{', '.join(twilio_only)} only apply to Twilio calls; with --webrtc use "
                    "--bot NAME (and --token T)")
        if any(kind == "dtmf" for kind, _ in getattr(args, "turns", None) or []):
            return "--dtmf cannot be used with --webrtc: a browser call has no keypad"
    else:
        web_only = [name for name, given in (("--bot", args.bot), ("--token", args.token))
                    if given]
        if web_only:
            return (f"{', '.join(web_only)} only apply with --webrtc; for a Twilio call pass "
                    "--param bot=NAME")
    return None


if __name__ == "__main__":
    sys.exit(main())
