"""``stepcall eval PATH``: run scripted conversation evals and report (exit 1 on any failure).

Example::

    stepcall eval evals/ --junit eval-results.xml
    stepcall eval evals/front_desk.yaml --model-url ws://gpu-box:8090/v1/session --record out/
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stepcall eval",
        description="Run YAML eval scenarios (evals/*.yaml) as real simulated phone calls against "
        "a bot server on loopback, check every expectation, print a table; exit 1 on failure.",
    )
    p.add_argument("path", help="an eval YAML file or a folder of them")
    p.add_argument("--junit", metavar="XML", help="write JUnit XML results here (for CI)")
    p.add_argument("--model-url", help="use this model service for every scenario instead of "
                   "the scenario's tiny checkpoint / canned stand-in")
    p.add_argument("--record", metavar="DIR", help="save each call's stereo WAV into DIR")
    p.add_argument("--cache", metavar="DIR", help="tiny checkpoint cache (default "
                   "$STEPCALL_EVAL_CACHE or ~/.cache/stepcall/evals)")
    p.add_argument("--timeout", type=float, default=180.0, metavar="SECS",
                   help="per-scenario time limit (default 180)")
    p.add_argument("-k", dest="select", metavar="TEXT",
                   help="only scenarios whose name contains TEXT")
    p.add_argument("-v", "--verbose", action="store_true", help="show the servers' INFO logs")
    return p


def _configure_logging(verbose: bool) -> None:
    from loguru import logger

    logger.remove()
    logger.configure(extra={"call_id": "-"})
    logger.add(sys.stderr, level="INFO" if verbose else "ERROR",
               format="{time:HH:mm:ss.SSS} | {level: <7} | {extra[call_id]} | {name} - {message}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 all passed, 1 a scenario failed, 2 bad input."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from dataclasses import replace

    from harness.evals.report import format_table, junit_xml
    from harness.evals.runner import EvalRunner
    from harness.evals.spec import EvalSpecError, load_evals

    try:
        evals = load_evals(args.path)
    except EvalSpecError as e:
        print(f"stepcall eval: {e}", file=sys.stderr)
        return 2
    if args.select:
        evals = [replace(ev, scenarios=tuple(s for s in ev.scenarios if args.select in s.name))
                 for ev in evals]
    if not any(ev.scenarios for ev in evals):
        print("stepcall eval: no scenarios selected", file=sys.stderr)
        return 2
    _configure_logging(args.verbose)
    runner = EvalRunner(model_url=args.model_url, record_dir=args.record,
                        cache_dir=Path(args.cache) if args.cache else None,
                        timeout_secs=args.timeout)

    def progress(res) -> None:  # noqa: ANN001
        mark = "PASS" if res.ok else "FAIL"
        print(f"[{mark}] {Path(res.scenario.file).stem} :: {res.scenario.name} "
              f"({res.secs:.1f} s)", file=sys.stderr, flush=True)

    results = asyncio.run(runner.run(evals, progress=progress))
    print(format_table(results))
    if args.junit:
        out = Path(args.junit)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(junit_xml(results), encoding="utf-8")
        print(f"JUnit XML: {out}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
