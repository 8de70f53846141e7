"""Scripted conversation evals (``stepcall eval evals/``): YAML scenarios run as real calls.

``spec.py`` parses and validates ``evals/*.yaml``; ``runner.py`` runs each scenario against a
bot server on loopback with the caller simulator; ``report.py`` prints the table and writes
JUnit XML; ``cli.py`` is the command line.
"""

from __future__ import annotations

from harness.evals.spec import EvalFile, EvalSpecError, load_evals

__all__ = ["EvalFile", "EvalSpecError", "load_evals"]
