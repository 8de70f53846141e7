"""Flow definitions: YAML files in ``flows/`` that define a bot without writing Python.

``load_flow(path) -> FlowSpec`` validates one file and ``load_flows(folder)`` a folder; both raise
``FlowValidationError`` whose ``issues`` list every problem as
``flows/x.yaml:12:5: nodes.greet.transitions[0].to: unknown node 'checkout' (known: greet, order)``.
The format is declared in ``schema.py`` (rendered to ``flow.schema.json``) and documented in
``flows/SCHEMA.md``.
"""

from __future__ import annotations

from pipeline.flows.format.cli import validate_command
from pipeline.flows.format.errors import FlowIssue, FlowValidationError
from pipeline.flows.format.loader import load_flow, load_flows, parse_flow
from pipeline.flows.format.model import (
    BotInfo,
    FlowSpec,
    Greeting,
    NodeSpec,
    Recording,
    Timeouts,
    ToolSpec,
    Transition,
    TurnTaking,
    Variable,
)
from pipeline.flows.format.schema import json_schema
from pipeline.flows.format.vocab import BUILTIN_TOOLS, BUILTIN_VOICES, STYLES

__all__ = [
    "BUILTIN_TOOLS",
    "BUILTIN_VOICES",
    "STYLES",
    "BotInfo",
    "FlowIssue",
    "FlowSpec",
    "FlowValidationError",
    "Greeting",
    "NodeSpec",
    "Recording",
    "Timeouts",
    "ToolSpec",
    "Transition",
    "TurnTaking",
    "Variable",
    "json_schema",
    "load_flow",
    "load_flows",
    "parse_flow",
    "validate_command",
]
