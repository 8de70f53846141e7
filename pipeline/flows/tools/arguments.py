"""Check a tool call's arguments against the tool's JSON Schema before the tool runs.

Models get arguments wrong (a string where a number belongs, a missing field); the tool must
then answer with a clear error the model can act on, never crash. This covers the JSON Schema
subset flow files may use: ``type`` (one or a list), ``enum``, ``properties``, ``required``,
``items`` and ``additionalProperties: false``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TYPE_CHECKS: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, Mapping),
    "null": lambda v: v is None,
}


class ToolArgumentError(ValueError):
    """Arguments that do not match the tool's schema; ``problems`` lists each mismatch."""

    def __init__(self, tool: str, problems: list[str]) -> None:
        self.tool = tool
        self.problems = problems
        super().__init__(f"invalid arguments for {tool}: " + "; ".join(problems))


def argument_problems(schema: Mapping[str, Any], arguments: Any, path: str = "") -> list[str]:
    """Every way ``arguments`` violates ``schema`` (empty when valid), each naming the field."""
    where = path or "arguments"
    problems: list[str] = []
    expected = schema.get("type")
    if expected is not None:
        types = expected if isinstance(expected, list) else [expected]
        known = [t for t in types if t in _TYPE_CHECKS]
        if known and not any(_TYPE_CHECKS[t](arguments) for t in known):
            return [f"{where}: expected {' or '.join(known)}, got {_type_name(arguments)}"]
    if "enum" in schema and arguments not in schema["enum"]:
        choices = ", ".join(repr(c) for c in schema["enum"])
        problems.append(f"{where}: {arguments!r} is not one of {choices}")
    if isinstance(arguments, Mapping):
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in arguments or arguments[name] is None:
                problems.append(f"{_join(path, name)}: required argument missing")
        for name, value in arguments.items():
            sub = props.get(name)
            if sub is None:
                if schema.get("additionalProperties") is False:
                    problems.append(
                        f"{_join(path, name)}: unknown argument "
                        f"(known: {', '.join(props) or 'none'})"
                    )
                continue
            if value is None and name not in (schema.get("required") or []):
                continue  # models send null for optional arguments they do not use
            problems += argument_problems(sub, value, _join(path, name))
    if isinstance(arguments, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(arguments):
            problems += argument_problems(schema["items"], item, f"{where}[{i}]")
    return problems


def validate_arguments(tool: str, schema: Mapping[str, Any], arguments: Any) -> dict[str, Any]:
    """Return ``arguments`` as a dict when valid; raise ``ToolArgumentError`` otherwise."""
    if arguments is None:
        arguments = {}
    problems = argument_problems({**schema, "type": "object"}, arguments)
    if problems:
        raise ToolArgumentError(tool, problems)
    return dict(arguments)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_name(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPE_CHECKS[name](value):
            return name
    return type(value).__name__
