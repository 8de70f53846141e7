"""Eval results as a terminal table and as JUnit XML (one test case per scenario) for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from harness.evals.runner import ScenarioResult


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def format_table(results: list[ScenarioResult]) -> str:
    """One row per scenario (result, checks, latencies) and the reasons of every failure."""
    rows = [("eval", "scenario", "result", "checks", "v2v ms per turn", "secs")]
    for r in results:
        lats = [_ms(t.latency_ms) for t in r.turns]
        passed = sum(c.ok for c in r.checks)
        rows.append((
            Path(r.scenario.file).stem, r.scenario.name,
            "PASS" if r.ok else ("ERROR" if r.error else "FAIL"),
            f"{passed}/{len(r.checks)}", " ".join(lats) or "-", f"{r.secs:.1f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(v2v: greeting first, from the stream start; then each caller turn)")
    for r in results:
        if r.ok:
            continue
        lines.append("")
        lines.append(f"{r.scenario.file}:{r.scenario.line}: {r.scenario.name}")
        if r.error:
            lines.append(f"  ERROR {r.error}")
        for c in r.failures:
            lines.append(f"  FAIL {c.what}: got {c.detail}")
    failed = sum(not r.ok for r in results)
    lines.append("")
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


def junit_xml(results: list[ScenarioResult]) -> str:
    """JUnit XML: a testsuite per eval file, a testcase per scenario."""
    suites = ET.Element("testsuites", name="stepcall eval")
    by_file: dict[str, list[ScenarioResult]] = defaultdict(list)
    for r in results:
        by_file[r.scenario.file].append(r)
    total_fail = total_err = 0
    for file, rs in by_file.items():
        failures = sum(1 for r in rs if not r.ok and not r.error)
        errors = sum(1 for r in rs if r.error)
        total_fail += failures
        total_err += errors
        suite = ET.SubElement(
            suites, "testsuite", name=Path(file).stem, file=file, tests=str(len(rs)),
            failures=str(failures), errors=str(errors), time=f"{sum(r.secs for r in rs):.3f}",
        )
        for r in rs:
            case = ET.SubElement(
                suite, "testcase", classname=f"evals.{Path(file).stem}", name=r.scenario.name,
                file=file, line=str(r.scenario.line), time=f"{r.secs:.3f}",
            )
            if r.error:
                ET.SubElement(case, "error", message=r.error).text = r.error
            elif r.failures:
                text = "\n".join(f"{c.what}: got {c.detail}" for c in r.failures)
                ET.SubElement(case, "failure", message=r.failures[0].what).text = text
            out = [f"{'ok ' if c.ok else 'FAIL'} {c.what}: {c.detail}" for c in r.checks]
            for t in r.turns:
                heard = f" | asr: {t.heard!r}" if t.heard is not None else ""
                out.append(f"turn {t.index} [{t.label}] v2v={_ms(t.latency_ms)} ms "
                           f"text={t.text!r}{heard} tools={[n for n, _, _ in t.tools]} "
                           f"nodes={t.nodes}")
            ET.SubElement(case, "system-out").text = "\n".join(out)
    suites.set("tests", str(len(results)))
    suites.set("failures", str(total_fail))
    suites.set("errors", str(total_err))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")
