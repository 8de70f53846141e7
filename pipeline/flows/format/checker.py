"""Structural validation of a composed YAML document against the declared format (``schema.py``).

Works on PyYAML's node graph (``yaml.compose``) so every value keeps its source position. It
collects every problem instead of stopping at the first, and returns plain Python values with
defaults filled in; an invalid value is replaced by ``INVALID`` so later checks can skip it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from pipeline.flows.format import vocab
from pipeline.flows.format.errors import FlowIssue
from pipeline.flows.format.schema import (
    MISSING,
    Bool,
    Either,
    Int,
    JsonObject,
    ListOf,
    MapOf,
    Num,
    Obj,
    Str,
    Tagged,
)


class _Invalid:
    """Marker for a value that failed validation (already reported)."""

    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Any = _Invalid()

_TAG = "tag:yaml.org,2002:"
_KIND_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "nothing (null)",
    "timestamp": "a date",
    "binary": "binary data",
}


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(node: yaml.Node) -> str:
    """What a YAML node is, for messages: ``a list``, ``an integer 42``, ..."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.removeprefix(_TAG)
    name = _KIND_NAMES.get(kind, f"a {kind}")
    if kind in ("null",):
        return name
    return f"{name} {node.value!r}" if kind != "str" else f"{name} '{node.value}'"


def join(path: str, key: str | int) -> str:
    """Extend a field path with a key or a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def syntax_issue(file: str, error: yaml.MarkedYAMLError) -> FlowIssue:
    """A YAML syntax error at the parser's position, saying where the broken construct began."""
    mark = error.problem_mark or error.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = ": ".join(str(p) for p in (error.context, error.problem) if p)
    start = error.context_mark
    if start is not None and mark is not None and start.line != mark.line:
        message += f" (it started at line {start.line + 1}, column {start.column + 1})"
    return FlowIssue(file, line, col, "", f"YAML syntax error: {message}")


def check_document(text: str, file: str, spec: Any, *, empty: str) -> tuple[Checker, Any]:
    """Compose one YAML document and check it against ``spec``.

    Returns the checker (its ``issues``, and the ``marks`` later checks locate problems by) and
    the checked value: ``INVALID`` when the text is not YAML (one syntax issue), holds nothing
    (one issue saying ``empty``) or does not fit ``spec``.
    """
    loader = yaml.SafeLoader(text)
    checker = Checker(file, loader)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            checker.issues.append(syntax_issue(file, e))
            return checker, INVALID
        if root is None:
            checker.issues.append(FlowIssue(file, 1, 1, "", empty))
            return checker, INVALID
        return checker, checker.check(root, spec, "")
    finally:
        loader.dispose()


def _fmt(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


class Checker:
    """Validates YAML nodes of one file; collects ``issues`` and the ``marks`` of every value."""

    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self._loader = loader
        self.issues: list[FlowIssue] = []
        self.marks: dict[str, tuple[int, int]] = {}
        self.key_marks: dict[str, tuple[int, int]] = {}

    # -- reporting --------------------------------------------------------------------------

    def report(self, where: yaml.Node | tuple[int, int], path: str, message: str) -> None:
        """Record a problem at a node (or a ``(line, column)`` pair, 1-based)."""
        if isinstance(where, yaml.Node):
            line, col = where.start_mark.line + 1, where.start_mark.column + 1
        else:
            line, col = where
        self.issues.append(FlowIssue(self.file, line, col, path, message))

    def mark(self, path: str) -> tuple[int, int]:
        """Position of the value at ``path`` (the nearest recorded parent if unknown)."""
        while path not in self.marks and path:
            parent = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", path)
            path = "" if parent == path else parent
        return self.marks.get(path, (1, 1))

    # -- walking ----------------------------------------------------------------------------

    def check(self, node: yaml.Node, spec: Any, path: str) -> Any:
        """Validate ``node`` against ``spec``; return its Python value or ``INVALID``."""
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(spec, Obj):
            return self._check_obj(node, spec, path)
        if isinstance(spec, Tagged):
            return self._check_tagged(node, spec, path)
        if isinstance(spec, ListOf):
            return self._check_list(node, spec, path)
        if isinstance(spec, MapOf):
            return self._check_map(node, spec, path)
        if isinstance(spec, Either):
            long_node = yaml.SequenceNode if isinstance(spec.long, ListOf) else yaml.MappingNode
            if isinstance(node, long_node):
                return self.check(node, spec.long, path)
            return self.check(node, spec.short, path)
        if isinstance(spec, JsonObject):
            if not isinstance(node, yaml.MappingNode):
                self.report(node, path, f"expected a mapping, got {describe(node)}")
                return INVALID
            self._mark_tree(node, path)
            return self._loader.construct_object(node, deep=True)
        return self._check_scalar(node, spec, path)

    def _mark_tree(self, node: yaml.Node, path: str) -> None:
        """Record the marks of every value under a free-form node (for later messages)."""
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    self._mark_tree(value, join(path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._mark_tree(item, join(path, i))

    def _scalar_kind(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            return None
        return node.tag.removeprefix(_TAG)

    def _check_scalar(self, node: yaml.Node, spec: Any, path: str) -> Any:
        kind = self._scalar_kind(node)
        if isinstance(spec, Str):
            if kind == "int" and spec.unquoted_ints:
                kind = "str"  # checked as the text written (node.value), not the number read
            if kind != "str":
                hint = ""
                if kind in ("int", "float", "bool", "timestamp"):
                    hint = f"; put it in quotes: '{node.value}'"
                self.report(node, path, f"expected a string, got {describe(node)}{hint}")
                return INVALID
            value = node.value
            if spec.enum is not None and value not in spec.enum:
                self.report(
                    node,
                    path,
                    f"'{value}' is not one of {', '.join(spec.enum)}{did_you_mean(value, spec.enum)}",
                )
                return INVALID
            if spec.pattern is not None and not vocab.full_match(spec.pattern, value):
                self.report(node, path, f"expected {spec.hint or 'a valid value'}, got '{value}'")
                return INVALID
            if len(value.strip()) < spec.min_length:
                self.report(node, path, "must not be empty")
                return INVALID
            return value
        if isinstance(spec, Bool):
            if kind != "bool":
                self.report(node, path, f"expected true or false, got {describe(node)}")
                return INVALID
            return self._loader.construct_object(node)
        if isinstance(spec, Int | Num):
            allowed = ("int",) if isinstance(spec, Int) else ("int", "float")
            if kind not in allowed:
                want = "an integer" if isinstance(spec, Int) else "a number"
                self.report(node, path, f"expected {want}, got {describe(node)}")
                return INVALID
            value = self._loader.construct_object(node)
            value = value if isinstance(spec, Int) else float(value)
            low, high = spec.minimum, spec.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                if low is not None and high is not None:
                    rule = f"must be between {_fmt(low)} and {_fmt(high)}"
                elif low is not None:
                    rule = f"must be at least {_fmt(low)}"
                else:
                    rule = f"must be at most {_fmt(high)}"  # type: ignore[arg-type]
                self.report(node, path, f"{rule}, got {node.value}")
                return INVALID
            return value
        raise TypeError(f"unknown schema type {spec!r}")

    def _pairs(self, node: yaml.MappingNode, path: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """Key/value pairs with string keys; reports non-string and duplicate keys.

        YAML merge keys (``<<: *anchor``) are applied; a key written in the mapping itself
        overrides a merged one without counting as a duplicate.
        """
        own = {id(k) for k, _ in node.value if k.tag != _TAG + "merge"}
        try:
            self._loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as e:
            self.report(node, path, f"invalid merge: {e.problem}")
            return []
        pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if self._scalar_kind(key_node) != "str":
                self.report(key_node, path, f"keys must be strings, got {describe(key_node)}")
                continue
            key = key_node.value
            if key in pairs and id(key_node) in own and id(pairs[key][0]) in own:
                first = pairs[key][0].start_mark.line + 1
                self.report(
                    key_node, path, f"duplicate key '{key}' (first defined on line {first})"
                )
                continue
            pairs[key] = (key_node, value_node)
        return [(key, k, v) for key, (k, v) in pairs.items()]

    def _check_obj(
        self, node: yaml.Node, spec: Obj, path: str, what: str = ""
    ) -> dict[str, Any] | Any:
        if not isinstance(node, yaml.MappingNode):
            self.report(node, path, f"expected a mapping, got {describe(node)}")
            return INVALID
        props = {p.name: p for p in spec.props}
        out: dict[str, Any] = {}
        for key, key_node, value_node in self._pairs(node, path):
            sub = join(path, key)
            self.key_marks[sub] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            prop = props.get(key)
            if prop is None:
                where = f" {what}" if what else ("" if path else " at top level")
                self.report(
                    key_node,
                    path,
                    f"unknown key '{key}'{where}"
                    + (did_you_mean(key, list(props)) or f" (allowed: {', '.join(props)})"),
                )
                continue
            if self._scalar_kind(value_node) == "null" and not prop.required and prop.nullable:
                if prop.default is None or isinstance(prop.default, dict | list):
                    self.marks[sub] = (
                        value_node.start_mark.line + 1,
                        value_node.start_mark.column + 1,
                    )
                    out[key] = self._default(prop, sub)
                    continue
            out[key] = self.check(value_node, prop.type, sub)
        for prop in spec.props:
            if prop.name in out:
                continue
            if prop.required:
                self.report(node, path, f"missing required key '{prop.name}'")
                out[prop.name] = INVALID
            else:
                out[prop.name] = self._default(prop, join(path, prop.name))
        return out

    def _default(self, prop: Any, path: str) -> Any:
        """A fresh copy of a default; an object's default is its keys' defaults."""
        if prop.default is MISSING:
            return INVALID
        if isinstance(prop.type, Obj) and isinstance(prop.default, dict):
            return {p.name: self._default(p, join(path, p.name)) for p in prop.type.props}
        if isinstance(prop.default, dict | list):
            return type(prop.default)(prop.default)
        return prop.default

    def _check_tagged(self, node: yaml.Node, spec: Tagged, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.report(node, path, f"expected a mapping, got {describe(node)}")
            return INVALID
        tag_node = next(
            (v for k, v in node.value if self._scalar_kind(k) == "str" and k.value == spec.tag),
            None,
        )
        kinds = list(spec.variants)
        if tag_node is None:
            self.report(
                node, path, f"missing required key '{spec.tag}' (one of {', '.join(kinds)})"
            )
            return INVALID
        kind = self.check(tag_node, Str(enum=tuple(kinds)), join(path, spec.tag))
        if kind is INVALID:
            return INVALID
        return self._check_obj(node, spec.variant(kind), path, what=f"for a {kind} {spec.noun}")

    def _check_list(self, node: yaml.Node, spec: ListOf, path: str) -> Any:
        if not isinstance(node, yaml.SequenceNode):
            self.report(node, path, f"expected a list, got {describe(node)}")
            return INVALID
        items = [self.check(item, spec.item, join(path, i)) for i, item in enumerate(node.value)]
        if len(items) < spec.min_items:
            n = spec.min_items
            self.report(node, path, f"needs at least {n} item{'' if n == 1 else 's'}")
        return items

    def _check_map(self, node: yaml.Node, spec: MapOf, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.report(node, path, f"expected a mapping, got {describe(node)}")
            return INVALID
        out: dict[str, Any] = {}
        pairs = self._pairs(node, path)
        for key, key_node, value_node in pairs:
            sub = join(path, key)
            self.key_marks[sub] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not vocab.full_match(spec.key_pattern, key):
                self.report(key_node, sub, f"invalid name '{key}': expected {spec.key_hint}")
                continue
            out[key] = self.check(value_node, spec.value, sub)
        if len(node.value) < spec.min_items:
            self.report(
                node,
                path,
                f"needs at least {spec.min_items} entr{'y' if spec.min_items == 1 else 'ies'}",
            )
        return out
