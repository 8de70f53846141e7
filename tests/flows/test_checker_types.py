"""The Checker's generic options (used by the eval format): list lengths, a list as the long form
of an ``Either``, unquoted integers read as text, keys whose null is an error; and the shared
YAML syntax-error issue."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pipeline.flows.format.checker import INVALID, Checker, syntax_issue
from pipeline.flows.format.schema import MISSING, Either, ListOf, Obj, Prop, Str, _render


def check(text: str, spec: Any) -> tuple[Any, list[str]]:
    loader = yaml.SafeLoader(text)
    try:
        checker = Checker("f.yaml", loader)
        value = checker.check(loader.get_single_node(), spec, "")
    finally:
        loader.dispose()
    return value, [str(i) for i in checker.issues]


def test_a_list_can_need_at_least_some_items() -> None:
    spec = Obj((Prop("xs", ListOf(Str(), min_items=1), "x", required=True),))
    assert check("xs: [a]\n", spec) == ({"xs": ["a"]}, [])
    assert check("xs: []\n", spec)[1] == ["f.yaml:1:5: xs: needs at least 1 item"]
    assert _render(ListOf(Str(), min_items=2))["minItems"] == 2


def test_either_takes_a_list_as_its_long_form() -> None:
    spec = Either(short=Str(min_length=1), long=ListOf(Str(min_length=1)))
    assert check("a\n", spec) == ("a", [])
    assert check("[a, b]\n", spec) == (["a", "b"], [])
    value, issues = check("[a, '']\n", spec)
    assert issues == ["f.yaml:1:5: [1]: must not be empty"]
    assert check("{a: 1}\n", spec)[1] == ["f.yaml:1:1: expected a string, got a mapping"]


def test_unquoted_integers_can_stand_for_their_text() -> None:
    digits = Str(pattern="[0-9#]+", hint="digits", unquoted_ints=True)
    assert check("0123\n", digits) == ("0123", [])  # as written, not YAML 1.1's octal 83
    assert check("'1#'\n", digits) == ("1#", [])
    assert check("1.5\n", digits)[1] == [
        "f.yaml:1:1: expected a string, got a number '1.5'; put it in quotes: '1.5'"
    ]
    assert check("12\n", Str())[0] is INVALID  # off by default
    assert _render(digits)["type"] == ["string", "integer"]


@pytest.mark.parametrize(("nullable", "expected"), [(True, ({"k": None}, [])), (False, None)])
def test_a_null_value_is_the_default_unless_the_key_says_otherwise(
    nullable: bool, expected: Any
) -> None:
    spec = Obj((Prop("k", Str(), "k", default=None, nullable=nullable),))
    value, issues = check("k:\n", spec)
    if expected is not None:
        assert (value, issues) == expected
    else:
        assert issues == ["f.yaml:1:3: k: expected a string, got nothing (null)"]
    assert check("{}\n", spec) == ({"k": None}, [])
    rendered = _render(spec)["properties"]["k"]["type"]
    assert rendered == (["string", "null"] if nullable else "string")
    assert Prop("r", Str(), "r", required=True).default is MISSING


def test_syntax_issue_says_where_the_broken_construct_began() -> None:
    with pytest.raises(yaml.MarkedYAMLError) as err:
        yaml.compose("a: [1\nb: 2\n", Loader=yaml.SafeLoader)
    issue = syntax_issue("f.yaml", err.value)
    assert (issue.file, issue.path) == ("f.yaml", "")
    assert str(issue).startswith("f.yaml:2:2: YAML syntax error: while parsing a flow sequence")
    assert str(issue).endswith("(it started at line 1, column 4)")
