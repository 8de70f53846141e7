"""``stepcall flows validate FILE|DIR``: print OK lines or every problem, as file:line:col."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from pipeline.flows.format.errors import FlowIssue, FlowValidationError
from pipeline.flows.format.loader import load_flow, load_flows
from pipeline.flows.format.model import FlowSpec


def _ok_line(spec: FlowSpec) -> str:
    count = len(spec.nodes)
    return f"OK {spec.path} (bot '{spec.name}', {count} node{'s' if count != 1 else ''})"


def validate_command(path: str, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate a flow file or a folder of flows; return 0 when valid, 1 otherwise.

    Prints ``OK <file> (bot 'name', N nodes)`` per valid flow to stdout, warnings as
    ``<file>:<line>:<col>: warning: ...`` and each problem on its own line to stderr.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    target = Path(path)
    if not target.exists():
        print(f"{path}: no such file or folder", file=err)
        return 1
    try:
        specs = load_flows(target) if target.is_dir() else [load_flow(target)]
    except FlowValidationError as e:
        for issue in e.issues:
            print(str(issue), file=err)
        count = len(e.issues)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=err)
        return 1
    if not specs:
        print(f"{path}: no flow files (*.yaml, *.yml)", file=err)
        return 1
    for spec in specs:
        for warning in spec.warnings:
            print(_warning_line(warning), file=err)
        print(_ok_line(spec), file=out)
    return 0


def _warning_line(issue: FlowIssue) -> str:
    where = f"{issue.file}:{issue.line}:{issue.column}"
    return f"{where}: warning: {issue.path}: {issue.message}"
