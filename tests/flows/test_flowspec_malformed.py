"""The malformed flow files in ``tests/flows/malformed/``: each has one mistake and is reported
with the exact ``file:line:column`` and message its header promises.

Each file starts with one or more ``# expect: LINE:COL: TEXT`` comment lines; the loader must
report exactly that many problems, in that order, each at ``LINE:COL`` of that file and with
``TEXT`` in its ``field.path: message``. The command-line validator prints the same lines.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from pipeline.flows.format import FlowValidationError, load_flow, validate_command

MALFORMED = Path(__file__).resolve().parent / "malformed"
FILES = sorted(MALFORMED.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$")


def expectations(path: Path) -> list[tuple[int, int, str]]:
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = EXPECT.match(line)
        if not match:
            break
        found.append((int(match[1]), int(match[2]), match[3]))
    return found


def test_there_are_at_least_twenty_malformed_files() -> None:
    assert len(FILES) >= 20
    for path in FILES:
        assert expectations(path), f"{path.name} has no '# expect: LINE:COL: message' header"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_malformed_flow_reports_the_expected_problem(path: Path) -> None:
    expected = expectations(path)
    with pytest.raises(FlowValidationError) as info:
        load_flow(path)
    issues = info.value.issues
    got = [(i.line, i.column, f"{i.path}: {i.message}" if i.path else i.message) for i in issues]
    assert len(got) == len(expected), got
    for (line, col, text), issue, (got_line, got_col, got_text) in zip(
        expected, issues, got, strict=True
    ):
        assert issue.file == str(path)
        assert (got_line, got_col) == (line, col), got_text
        assert text in got_text

    out, err = io.StringIO(), io.StringIO()
    assert validate_command(str(path), out=out, err=err) == 1
    printed = err.getvalue().splitlines()
    for line, col, text in expected:
        assert any(p.startswith(f"{path}:{line}:{col}: ") and text in p for p in printed), printed
