"""The ``stepcall`` command line: serve, model, call, dial, flows validate, eval, load,
widget-token, dashboard-url."""

from __future__ import annotations

import argparse
import sys

from stepcall.settings import Settings


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the bot web server (Twilio webhook + media streams)",
        description="Run the bot web server. Every option also has a STEPCALL_* env var "
        "(see stepcall/settings.py).",
    )
    p.add_argument("--host", help="bind address (STEPCALL_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (STEPCALL_PORT, default 8080)")
    p.add_argument("--flows", dest="flows_dir", help="folder of YAML flows (STEPCALL_FLOWS_DIR)")
    p.add_argument("--model-url", help="model service session URL (STEPCALL_MODEL_URL)")
    p.add_argument("--public-url", help="public base URL for Twilio (STEPCALL_PUBLIC_URL)")
    p.set_defaults(func=_cmd_serve)


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="run the model service (Step-Audio 2 speech-to-speech)",
        description="Run the model service: one WebSocket session per call (protocol v1, "
        "stepcall/PROTOCOL.md).",
    )
    p.add_argument("--model", dest="model_path", help="checkpoint dir or hub id (STEPCALL_MODEL_PATH)")
    p.add_argument(
        "--backend",
        dest="model_backend",
        choices=["auto", "reference", "vllm", "cpu"],
        help="backend (STEPCALL_MODEL_BACKEND, default auto: chosen from what the machine has)",
    )
    p.add_argument("--device", dest="model_device", help="cpu, cuda or auto (STEPCALL_MODEL_DEVICE)")
    p.add_argument("--dtype", dest="model_dtype", help="float32, bfloat16, float16 or auto")
    p.add_argument("--host", dest="model_host", help="bind address (STEPCALL_MODEL_HOST)")
    p.add_argument("--port", dest="model_port", type=int, help="port (STEPCALL_MODEL_PORT, 8090)")
    p.add_argument("--max-sessions", type=int, help="admission limit (STEPCALL_MAX_SESSIONS)")
    p.add_argument(
        "--tiny-checkpoint",
        metavar="DIR",
        help="build the tiny test checkpoint into DIR (if missing) and serve it: for demos and "
        "tests on machines without the real weights",
    )
    p.set_defaults(func=_cmd_model)


def _add_call(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "call",
        help="place a simulated call to a bot (Twilio Media Streams, or WebRTC with --webrtc)",
        add_help=False,
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_call)


def _add_dial(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dial",
        help="place a real outbound phone call through Twilio to a bot",
        description="Ask Twilio to call a number; when answered, the call is connected to the bot "
        "served by `stepcall serve` at STEPCALL_PUBLIC_URL. Needs TWILIO_ACCOUNT_SID and "
        "TWILIO_AUTH_TOKEN.",
    )
    p.add_argument("to", help="the number to call, E.164 (e.g. +15551234567)")
    p.add_argument("--flow", required=True, help="the bot: a flow YAML file or a bot name")
    p.add_argument("--from", dest="from_number",
                   help="caller ID (default: the flow's first phone number, else TWILIO_FROM_NUMBER)")
    p.add_argument("--public-url", help="public base URL of the bot server (STEPCALL_PUBLIC_URL)")
    p.add_argument("--json", action="store_true", help="print the created call as JSON")
    p.set_defaults(func=_cmd_dial)


def _add_flows(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flows", help="work with YAML flow files")
    fsub = p.add_subparsers(dest="flows_cmd", required=True)
    v = fsub.add_parser(
        "validate",
        help="validate a flow file or a folder of flows",
        description="Validate YAML flows; problems are printed as file:line:col: message.",
    )
    v.add_argument("path", help="a flow YAML file or a folder of them")
    v.set_defaults(func=_cmd_flows_validate)


def _add_widget_token(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "widget-token",
        help="print a short-lived call token for the browser widget",
        description="Mint a widget call token for BOT with STEPCALL_WIDGET_SECRET (put it in the "
        "widget's data-token attribute).",
    )
    p.add_argument("bot", help="the bot the token may call")
    p.add_argument("--ttl", type=int, help="lifetime in seconds (STEPCALL_WIDGET_TOKEN_TTL_SECS)")
    p.set_defaults(func=_cmd_widget_token)


def _cmd_widget_token(args: argparse.Namespace) -> int:
    from bots.webrtc.tokens import widget_token_command

    settings = Settings.from_env()
    return widget_token_command(
        args.bot, args.ttl, settings.widget_secret, settings.widget_token_ttl_secs
    )


def _add_dashboard_url(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard-url",
        help="print the call-records dashboard's URL with its token (as `make demo` does)",
        description="Print http://HOST:PORT/dashboard?token=... from STEPCALL_HOST, STEPCALL_PORT "
        "and STEPCALL_DASHBOARD_TOKEN; fails when the token is unset or call records are off.",
    )
    p.set_defaults(func=_cmd_dashboard_url)


def dashboard_url(settings: Settings) -> str:
    """The dashboard's URL on this machine with the ``?token=`` the dashboard accepts.

    Raises ``ValueError`` when the dashboard is off: no ``STEPCALL_DASHBOARD_TOKEN``, or call
    records off (``STEPCALL_DATABASE_URL=none``)."""
    from urllib.parse import quote

    if not settings.dashboard_token:
        raise ValueError("STEPCALL_DASHBOARD_TOKEN is not set: the dashboard is off")
    if not settings.database_url:
        raise ValueError("call records are off (STEPCALL_DATABASE_URL=none): no dashboard")
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.port}/dashboard?token={quote(settings.dashboard_token)}"


def _cmd_dashboard_url(args: argparse.Namespace) -> int:
    try:
        print(dashboard_url(Settings.from_env()))
    except ValueError as e:
        print(f"stepcall dashboard-url: {e}", file=sys.stderr)
        return 1
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    keys = [
        "host", "port", "flows_dir", "model_url", "public_url", "model_path", "model_backend",
        "model_device", "model_dtype", "model_host", "model_port", "max_sessions",
    ]
    changes = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    return Settings.from_env().replace(**changes)


def _configure_logging(settings: Settings) -> None:
    from loguru import logger

    logger.remove()
    fmt = (
        "<green>{time:HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        "{extra[call_id]} | {name}:{line} - <level>{message}</level>"
    )
    logger.configure(extra={"call_id": "-"})
    logger.add(sys.stderr, level=settings.log_level.upper(), format=fmt)


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings)
    from bots.server import run_server

    run_server(settings)
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logging(settings)
    if args.tiny_checkpoint:
        from pathlib import Path

        from harness.checkpoints.demo_checkpoint import build_demo_checkpoint

        target = Path(args.tiny_checkpoint)
        if not (target / "config.json").exists():
            build_demo_checkpoint(target)
        settings = settings.replace(model_path=str(target))
    from model_service.server import run_model_service

    run_model_service(settings)
    return 0


def _cmd_call(args: argparse.Namespace) -> int:
    from harness.callers.cli import main as call_main

    return call_main(args.args)


def _cmd_dial(args: argparse.Namespace) -> int:
    from bots.twilio.dial import dial_command

    return dial_command(args.to, args.flow, args.from_number, _settings(args), args.json)


def _cmd_flows_validate(args: argparse.Namespace) -> int:
    from pipeline.flows.format import validate_command

    return validate_command(args.path)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stepcall``."""
    parser = argparse.ArgumentParser(
        prog="stepcall",
        description="Voice bots for phone hotlines and WebRTC widgets on Step-Audio 2 mini.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_model(sub)
    _add_call(sub)
    _add_dial(sub)
    _add_flows(sub)
    # `stepcall eval` / `stepcall load` hand their arguments to their own parsers (see main)
    sub.add_parser("eval", help="run YAML conversation evals (evals/*.yaml) as simulated calls")
    sub.add_parser("load", help="load-test a bot server with N concurrent simulated calls")
    _add_widget_token(sub)
    _add_dashboard_url(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``stepcall``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `stepcall call ...` hands every argument (including --help) to the caller's own parser.
    if argv[:1] == ["call"]:
        from harness.callers.cli import main as call_main

        return call_main(argv[1:])
    if argv[:1] == ["eval"]:
        from harness.evals.cli import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["load"]:
        from harness.loadtest import main as load_main

        return load_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
