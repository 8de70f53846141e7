"""The JSON Schema, the loader, the dataclass defaults and SCHEMA.md agree; the examples validate."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.flows.format import load_flow, load_flows, model, schema, validate_command, vocab
from pipeline.flows.format.schema import MISSING, Obj

REPO = Path(__file__).resolve().parents[2]
FLOWS = REPO / "flows"
EXAMPLES = sorted(FLOWS.glob("*.yaml"))

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value: Any, s: dict[str, Any], path: str = "$") -> list[str]:
    """Errors of ``value`` against the JSON Schema subset ``flow.schema.json`` uses.

    ``jsonschema`` is not installed in this project, so this checks the keywords the generated
    schema contains (the test below fails if the schema starts using others).
    """
    if "oneOf" in s:
        matches = [alt for alt in s["oneOf"] if not schema_errors(value, alt, path)]
        return [] if len(matches) == 1 else [f"{path}: matches {len(matches)} of oneOf"]
    errors: list[str] = []
    if "const" in s and value != s["const"]:
        return [f"{path}: expected {s['const']!r}"]
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_is_type(value, t) for t in types):
            return [f"{path}: expected {types}, got {value!r}"]
    if "enum" in s and value not in s["enum"]:
        errors.append(f"{path}: {value!r} not in enum")
    if isinstance(value, str):
        if "pattern" in s and not re.search(s["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {s['pattern']}")
        if len(value) < s.get("minLength", 0):
            errors.append(f"{path}: too short")
    if _is_type(value, "number"):
        if "minimum" in s and value < s["minimum"]:
            errors.append(f"{path}: below minimum")
        if "maximum" in s and value > s["maximum"]:
            errors.append(f"{path}: above maximum")
    if isinstance(value, list) and "items" in s:
        for i, item in enumerate(value):
            errors += schema_errors(item, s["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        props = s.get("properties", {})
        for key in s.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key}")
        if len(value) < s.get("minProperties", 0):
            errors.append(f"{path}: too few properties")
        for key, item in value.items():
            if "propertyNames" in s and not re.search(s["propertyNames"]["pattern"], key):
                errors.append(f"{path}: bad key {key!r}")
            if key in props:
                errors += schema_errors(item, props[key], f"{path}.{key}")
            elif s.get("additionalProperties") is False:
                errors.append(f"{path}: unknown key {key!r}")
            elif isinstance(s.get("additionalProperties"), dict):
                errors += schema_errors(item, s["additionalProperties"], f"{path}.{key}")
    return errors


KNOWN_KEYWORDS = {
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "minProperties",
    "items",
    "enum",
    "const",
    "pattern",
    "minLength",
    "minimum",
    "maximum",
    "oneOf",
}


def _keywords(s: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(s, dict):
        for key, value in s.items():
            if key == "properties":
                for sub in value.values():
                    found |= _keywords(sub)
                found.add(key)
            elif key not in ("default", "enum", "const"):
                found.add(key)
                found |= _keywords(value)
            else:
                found.add(key)
    elif isinstance(s, list):
        for item in s:
            found |= _keywords(item)
    return found


def test_committed_json_schema_is_generated_from_the_declared_format() -> None:
    stored = schema.JSON_SCHEMA_PATH.read_text(encoding="utf-8")
    assert stored == schema.json_schema_text(), (
        "flow.schema.json is stale: run `python -m pipeline.flows.format schema`"
    )
    assert _keywords(json.loads(stored)) <= KNOWN_KEYWORDS


def test_jsonschema_library_agrees_when_installed() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for path in EXAMPLES:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema.json_schema())


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_json_schema(path: Path) -> None:
    assert schema_errors(yaml.safe_load(path.read_text()), schema.json_schema()) == []


BAD_DOCUMENTS = [
    "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\nvoise: a\n",
    "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\nstyle: loud\n",
    "bot: {name: t}\npersona: p\nnodes: {}\n",
    "bot: {name: t}\nnodes: {main: {instructions: x}}\n",
    "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\n"
    "turn_taking: {vad_stop_secs: 2.5}\n",
    "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\n"
    "tools: [{name: w, kind: webhook, description: d, url: 'ftp://x'}]\n",
    "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\n"
    "tools: [{name: w, kind: python, description: d, handler: a.b, url: 'http://x'}]\n",
    "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\nphone_numbers: ['5551234']\n",
    "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\nvariables: {a: strng}\n",
    "bot: {name: t}\npersona: p\nnodes: {Main: {instructions: x}}\n",
]


@pytest.mark.parametrize("text", BAD_DOCUMENTS)
def test_json_schema_and_loader_reject_the_same_structural_errors(
    text: str, tmp_path: Path
) -> None:
    assert schema_errors(yaml.safe_load(text), schema.json_schema()) != []
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(Exception, match="problem"):
        load_flow(path)


def test_minimal_document_passes_both(tmp_path: Path) -> None:
    text = "bot: {name: t}\npersona: p\nnodes: {main: {instructions: x}}\n"
    assert schema_errors(yaml.safe_load(text), schema.json_schema()) == []
    (tmp_path / "ok.yaml").write_text(text)
    assert load_flow(tmp_path / "ok.yaml").name == "t"


@pytest.mark.parametrize(
    ("obj", "cls"),
    [
        (schema.BOT, model.BotInfo),
        (schema.GREETING, model.Greeting),
        (schema.TURN_TAKING, model.TurnTaking),
        (schema.TIMEOUTS, model.Timeouts),
        (schema.RECORDING, model.Recording),
        (schema.NODE, model.NodeSpec),
    ],
)
def test_dataclass_defaults_equal_schema_defaults(obj: Obj, cls: type) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for prop in obj.props:
        assert prop.name in fields, f"{cls.__name__} lacks {prop.name}"
        default = fields[prop.name].default
        if prop.default is MISSING:
            assert default is dataclasses.MISSING, prop.name
        elif isinstance(prop.default, list):
            assert default == tuple(prop.default), prop.name
        else:
            assert default == prop.default, prop.name


def _all_props(t: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(t, schema.Tagged):
        seen: list[schema.Prop] = []
        for kind in t.variants:
            seen += [p for p in t.variant(kind).props if p.name not in [s.name for s in seen]]
        t = Obj(tuple(seen))
    if isinstance(t, schema.Either):
        t = t.long
    if isinstance(t, schema.ListOf):
        return _all_props(t.item, prefix[:-1] + "[].")
    if isinstance(t, schema.MapOf):
        return _all_props(t.value, prefix + "<name>.")
    if isinstance(t, Obj):
        for p in t.props:
            out.append(prefix + p.name)
            out += _all_props(p.type, prefix + p.name + ".")
    return out


def test_schema_md_documents_every_field_and_vocabulary() -> None:
    doc = (FLOWS / "SCHEMA.md").read_text(encoding="utf-8")
    for name in _all_props(schema.FLOW):
        assert f"`{name}`" in doc, f"SCHEMA.md does not document `{name}`"
    for word in (*vocab.STYLES, *vocab.BUILTIN_TOOLS, *vocab.BUILTIN_VOICES, *vocab.VARIABLE_TYPES):
        assert word in doc, f"SCHEMA.md does not mention {word}"


def test_schema_md_example_is_a_valid_flow(tmp_path: Path) -> None:
    doc = (FLOWS / "SCHEMA.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert block is not None
    (tmp_path / "example.yaml").write_text(block.group(1))
    assert load_flow(tmp_path / "example.yaml").nodes


# --- the example flows -----------------------------------------------------------------------


def test_front_desk_example() -> None:
    spec = load_flow(FLOWS / "front_desk.yaml")
    assert spec.name == "front-desk" and list(spec.nodes) == ["reception"]
    assert spec.voice == "default_female" and spec.greeting.bot_speaks_first
    assert {t.builtin for t in spec.node_tools("reception")} == {"end_call", "transfer_call"}
    assert spec.warnings == ()


def test_pizza_order_example() -> None:
    spec = load_flow(FLOWS / "pizza_order.yaml")
    assert spec.initial_node == "greet"
    assert [t.to for t in spec.nodes["confirm"].transitions] == ["goodbye", "take_order"]
    assert spec.nodes["goodbye"].end and spec.node_style("confirm") == "calm"
    kinds = {t.kind for t in spec.tools.values()}
    assert kinds == {"webhook", "python", "builtin"}
    hook = spec.tools["check_delivery_area"]
    assert hook.url.startswith("https://") and hook.retries == 1
    assert hook.function_schema()["function"]["parameters"]["required"] == ["address"]
    assert spec.variables["address"].required and spec.variables["quantity"].type == "integer"
    assert [t.name for t in spec.node_tools("take_order")] == [
        "transfer_call",
        "check_delivery_area",
    ]
    assert spec.warnings == ()


def test_examples_folder_loads_with_unique_numbers() -> None:
    specs = load_flows(FLOWS)
    assert {s.name for s in specs} >= {"front-desk", "pizza-order"}


def test_validate_command_ok_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert validate_command(str(FLOWS / "pizza_order.yaml"), out=out, err=err) == 0
    assert out.getvalue() == f"OK {FLOWS / 'pizza_order.yaml'} (bot 'pizza-order', 4 nodes)\n"
    assert err.getvalue() == ""


def test_validate_command_prints_every_issue(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        "bot: {name: t}\npersona: p\nstyle: loud\nnodes:\n  a: {instructions: x,"
        " transitions: [{to: b, when: w}]}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert validate_command(str(path), out=out, err=err) == 1
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"{path}:3:8: style: 'loud' is not one of")
    assert lines[1] == f"{path}:5:43: nodes.a.transitions[0].to: unknown node 'b' (known: a)"
    assert lines[2] == "2 problems found"


def test_validate_command_missing_path(tmp_path: Path) -> None:
    err = io.StringIO()
    assert validate_command(str(tmp_path / "nope.yaml"), out=io.StringIO(), err=err) == 1
    assert "no such file or folder" in err.getvalue()
