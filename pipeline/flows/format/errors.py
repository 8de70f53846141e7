"""Flow validation problems: one ``FlowIssue`` per problem, all raised together."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class FlowIssue:
    """One problem in a flow file, located by file, 1-based line/column and field path.

    ``path`` is the dotted field path (``nodes.greet.transitions[0].to``); empty for problems
    that belong to the file as a whole (YAML syntax, empty file).
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class FlowValidationError(ValueError):
    """A flow (or a folder of flows) failed validation; ``issues`` lists every problem found."""

    def __init__(self, issues: Iterable[FlowIssue]) -> None:
        self.issues: list[FlowIssue] = sorted(issues)
        count = len(self.issues)
        lines = "\n".join(str(issue) for issue in self.issues)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in flow definition:\n{lines}")
