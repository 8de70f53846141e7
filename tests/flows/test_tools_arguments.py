"""Tool arguments are checked against the tool's JSON Schema before the tool runs."""

from __future__ import annotations

import pytest

from pipeline.flows.tools.arguments import (
    ToolArgumentError,
    argument_problems,
    validate_arguments,
)

PIZZA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "size": {"type": "string", "enum": ["small", "medium", "large"]},
                    "quantity": {"type": "integer"},
                },
                "required": ["size"],
            },
        },
        "note": {"type": ["string", "null"]},
        "tip": {"type": "number"},
        "express": {"type": "boolean"},
    },
    "required": ["items"],
}


def test_valid_arguments_pass() -> None:
    args = {"items": [{"size": "large", "quantity": 2}], "tip": 2, "express": False, "note": None}
    assert validate_arguments("price", PIZZA, args) == args
    assert argument_problems(PIZZA, {"items": [], "tip": 1.5}) == []


def test_every_problem_is_named() -> None:
    problems = argument_problems(
        PIZZA,
        {"items": [{"size": "huge", "quantity": "2"}, {}], "tip": "1", "express": 1},
    )
    assert problems == [
        "items[0].size: 'huge' is not one of 'small', 'medium', 'large'",
        "items[0].quantity: expected integer, got string",
        "items[1].size: required argument missing",
        "tip: expected number, got string",
        "express: expected boolean, got integer",
    ]


def test_missing_required_and_wrong_top_level() -> None:
    with pytest.raises(ToolArgumentError) as e:
        validate_arguments("price", PIZZA, {})
    assert str(e.value) == "invalid arguments for price: items: required argument missing"
    with pytest.raises(ToolArgumentError, match="arguments: expected object, got array"):
        validate_arguments("price", PIZZA, [1])
    assert validate_arguments("none", {"type": "object", "properties": {}}, None) == {}


def test_booleans_are_not_integers_and_unknown_arguments() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "additionalProperties": False,
    }
    assert argument_problems(schema, {"n": True}) == ["n: expected integer, got boolean"]
    assert argument_problems(schema, {"n": 1, "m": 2}) == ["m: unknown argument (known: n)"]
    assert argument_problems({"type": "object", "properties": {}}, {"extra": 1}) == []
