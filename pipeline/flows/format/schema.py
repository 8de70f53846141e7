"""The flow file format, declared once as data.

``FLOW`` describes every key of a flow file: its type, whether it is required, its default, its
allowed values or range, and a one-line meaning. The loader (``loader.py``) validates YAML against
it, ``json_schema()`` renders it as a JSON Schema (``flow.schema.json``), and ``flows/SCHEMA.md``
documents the same fields (a test keeps all three in sync).

Run ``python -m pipeline.flows.format schema`` to rewrite ``flow.schema.json`` after changing ``FLOW``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.flows.format import vocab


class _Missing:
    """Marker for "this key has no default" (distinct from a default of ``None``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Str:
    """A string, optionally limited to ``enum`` values or a full-match ``pattern``."""

    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    hint: str = ""  # what the pattern means, for messages ("an E.164 number like +15551234567")
    min_length: int = 0
    unquoted_ints: bool = False  # an unquoted integer stands for its text as written (`dtmf: 12`)


@dataclass(frozen=True)
class Int:
    """An integer (booleans are not integers here), optionally within a closed range."""

    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class Num:
    """A number (integer or float), optionally within a closed range."""

    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Bool:
    """``true`` or ``false``."""


@dataclass(frozen=True)
class JsonObject:
    """A free-form mapping (checked further by the loader, e.g. a tool's ``parameters``)."""


@dataclass(frozen=True)
class Prop:
    """One key of an object: its type, whether required, default and meaning."""

    name: str
    type: Any
    doc: str
    required: bool = False
    default: Any = MISSING
    # a null value (``key:`` or ``key: ~``) stands for a default of None, {} or []; False: an error
    nullable: bool = True


@dataclass(frozen=True)
class Obj:
    """A mapping with a fixed set of keys."""

    props: tuple[Prop, ...]
    doc: str = ""

    def names(self) -> list[str]:
        """The allowed keys, in declaration order."""
        return [p.name for p in self.props]


@dataclass(frozen=True)
class ListOf:
    """A list whose items all have type ``item``."""

    item: Any
    min_items: int = 0


@dataclass(frozen=True)
class MapOf:
    """A mapping from names (matching ``key_pattern``) to values of type ``value``."""

    value: Any
    key_pattern: str
    key_hint: str
    min_items: int = 0


@dataclass(frozen=True)
class Either:
    """A short form (a scalar) or a long form (a mapping, or a list if ``long`` is a ``ListOf``)."""

    short: Any
    long: Any


@dataclass(frozen=True)
class Tagged:
    """A mapping whose allowed keys depend on the value of its ``tag`` key (e.g. a tool's kind)."""

    tag: str
    tag_doc: str
    common: tuple[Prop, ...]
    variants: dict[str, tuple[Prop, ...]] = field(default_factory=dict)
    noun: str = "item"  # what one of these is called in messages ("a python tool")

    def variant(self, kind: str) -> Obj:
        """The full object type of one variant (common keys + the tag + the variant's keys)."""
        tag_prop = Prop(self.tag, Str(enum=tuple(self.variants)), self.tag_doc, required=True)
        return Obj((*self.common[:1], tag_prop, *self.common[1:], *self.variants[kind]))


_E164_HINT = "an E.164 phone number like '+15551234567' (quoted)"

BOT = Obj(
    (
        Prop(
            "name",
            Str(pattern=vocab.SLUG, hint="a slug like 'front-desk' (lowercase, digits, - and _)"),
            "Unique bot name (a slug); calls and the CLI select the bot by it.",
            required=True,
        ),
        Prop("description", Str(), "One line saying what the bot is for.", default=""),
    ),
    doc="Who the bot is.",
)

GREETING = Obj(
    (
        Prop(
            "who_speaks_first",
            Str(enum=("bot", "caller")),
            "'bot': the bot opens the call; 'caller': the bot waits for the caller.",
            default="bot",
        ),
        Prop(
            "text",
            Str(),
            "Instruction for the bot's opening line (not read verbatim), e.g. 'Greet the caller "
            "and offer help'. Empty: the bot greets in its own words.",
            default=None,
        ),
        Prop(
            "say",
            Str(min_length=1),
            "The bot's opening line, spoken word for word in its voice, e.g. 'Hello, this is "
            "the Stepcall hotline. How can I help?'. Rendered once when the server starts and "
            "played the moment a call connects (no model response to wait for). Needs "
            "who_speaks_first: bot; use either say or text.",
            default=None,
        ),
    ),
    doc="How the call opens.",
)

TURN_TAKING = Obj(
    (
        Prop(
            "vad_stop_secs",
            Num(0.05, 2.0),
            "Silence (seconds) after speech before the caller's turn may end.",
            default=0.2,
        ),
        Prop(
            "smart_turn",
            Bool(),
            "Use the Smart Turn model to decide whether the caller finished speaking.",
            default=True,
        ),
        Prop(
            "min_interrupt_words",
            Int(minimum=0),
            "Words the caller must say before the bot stops talking (0: any speech interrupts).",
            default=0,
        ),
        Prop(
            "min_interrupt_secs",
            Num(0.0, 10.0),
            "Seconds the caller must speak before the bot stops talking (0: at once); "
            "backchannels such as 'mm-hm' are shorter than the default.",
            default=0.6,
        ),
        Prop(
            "mute_during_greeting",
            Bool(),
            "Ignore the caller while the bot speaks its greeting.",
            default=False,
        ),
    ),
    doc="When the caller's turn ends and when the caller may interrupt the bot.",
)

TIMEOUTS = Obj(
    (
        Prop(
            "silence_secs",
            Num(1.0, 300.0),
            "Seconds of silence from the caller before the bot re-prompts.",
            default=10.0,
        ),
        Prop(
            "reprompt",
            Str(min_length=1),
            "Instruction for the re-prompt after silence.",
            default="Ask whether the caller is still there.",
        ),
        Prop(
            "max_reprompts",
            Int(0, 10),
            "Re-prompts before giving up (then the 'then' action happens).",
            default=2,
        ),
        Prop(
            "then",
            Str(enum=("end", "transfer")),
            "What happens after the last re-prompt: 'end' the call or 'transfer' it.",
            default="end",
        ),
        Prop(
            "transfer_to",
            Str(pattern=vocab.E164, hint=_E164_HINT),
            "Number to transfer to when then is 'transfer' (required then).",
            default=None,
        ),
    ),
    doc="What the bot does when the caller goes silent.",
)

_TOOL_NAME = Str(pattern=vocab.IDENTIFIER, hint="an identifier like 'check_stock'")
_PARAMETERS_DOC = (
    "JSON Schema of the tool's arguments: {type: object, properties: {...}, required: [...]}."
)

TOOL = Tagged(
    tag="kind",
    noun="tool",
    tag_doc="How the tool runs: 'webhook' (HTTP call), 'python' (a handler function) or "
    "'builtin' (" + ", ".join(vocab.BUILTIN_TOOLS) + ").",
    common=(Prop("name", _TOOL_NAME, "Function name the model calls.", required=True),),
    variants={
        "webhook": (
            Prop(
                "description",
                Str(min_length=1),
                "What the tool does (shown to the model).",
                required=True,
            ),
            Prop("parameters", JsonObject(), _PARAMETERS_DOC, default=None),
            Prop(
                "url",
                Str(pattern=vocab.HTTP_URL, hint="an http:// or https:// URL"),
                "Endpoint the arguments are sent to (JSON body; query string for GET).",
                required=True,
            ),
            Prop("method", Str(enum=vocab.WEBHOOK_METHODS), "HTTP method.", default="POST"),
            Prop("timeout_secs", Num(0.1, 60.0), "Per-attempt timeout in seconds.", default=5.0),
            Prop("retries", Int(0, 5), "Retries after a failed attempt.", default=0),
            Prop(
                "headers",
                MapOf(Str(), r"[A-Za-z0-9-]+", "an HTTP header name"),
                "Extra HTTP headers; '${ENV_VAR}' in a value is read from the environment.",
                default={},
            ),
        ),
        "python": (
            Prop(
                "description",
                Str(min_length=1),
                "What the tool does (shown to the model).",
                required=True,
            ),
            Prop("parameters", JsonObject(), _PARAMETERS_DOC, default=None),
            Prop(
                "handler",
                Str(pattern=vocab.DOTTED_PATH, hint="a dotted path like 'mypkg.tools:check_stock'"),
                "Async function called with the arguments, as 'module.path:function' or "
                "'module.path.function'.",
                required=True,
            ),
        ),
        "builtin": (
            Prop(
                "builtin",
                Str(enum=tuple(vocab.BUILTIN_TOOLS)),
                "Which built-in tool this is (default: the tool's name).",
                default=None,
            ),
            Prop(
                "description",
                Str(min_length=1),
                "What the tool does (default: the built-in's description).",
                default=None,
            ),
            Prop(
                "parameters",
                JsonObject(),
                _PARAMETERS_DOC + " Default: the built-in's parameters.",
                default=None,
            ),
            Prop(
                "documents",
                Str(min_length=1),
                "knowledge_search only: folder of .md/.txt documents, relative to the flow file "
                "(default: knowledge/<bot name>/ next to the flow).",
                default=None,
            ),
        ),
    },
)

TRANSITION = Obj(
    (
        Prop(
            "to",
            Str(pattern=vocab.NODE_NAME, hint="a node name"),
            "Node to move to.",
            required=True,
        ),
        Prop(
            "when",
            Str(min_length=1),
            "When to move, in words (becomes the transition function's description).",
            required=True,
        ),
    ),
    doc="A possible move to another node; becomes a function 'go_to_<node>' the model calls.",
)

NODE = Obj(
    (
        Prop("instructions", Str(min_length=1), "What the bot does in this node.", required=True),
        Prop(
            "style",
            Str(enum=vocab.STYLES),
            "Speaking style in this node (default: the bot's).",
            default=None,
        ),
        Prop(
            "tools",
            ListOf(_TOOL_NAME),
            "Tools usable in this node, on top of tools_allowed.",
            default=[],
        ),
        Prop("transitions", ListOf(TRANSITION), "Where the conversation can go next.", default=[]),
        Prop(
            "context_strategy",
            Str(enum=("append", "reset")),
            "On entering the node: 'append' keeps the conversation so far, 'reset' starts fresh.",
            default="append",
        ),
        Prop("end", Bool(), "End the call after the bot's turn in this node.", default=False),
        Prop(
            "transfer",
            Str(pattern=vocab.E164, hint=_E164_HINT),
            "Transfer the call to this number after the bot's turn in this node.",
            default=None,
        ),
    ),
    doc="One step of the conversation.",
)

VARIABLE = Either(
    short=Str(enum=vocab.VARIABLE_TYPES),
    long=Obj(
        (
            Prop("type", Str(enum=vocab.VARIABLE_TYPES), "Value type.", required=True),
            Prop("description", Str(), "What the value is.", default=""),
            Prop("required", Bool(), "The call is incomplete without it.", default=False),
            Prop("choices", ListOf(Str()), "Allowed values (strings), if limited.", default=[]),
        ),
        doc="A value collected during the call.",
    ),
)

RECORDING = Obj(
    (
        Prop("enabled", Bool(), "Record the call audio.", default=False),
        Prop("retention_days", Int(1, 3650), "Days recordings are kept.", default=30),
    ),
    doc="Call recording.",
)

FLOW = Obj(
    (
        Prop("bot", BOT, "Who the bot is: name and description.", required=True),
        Prop(
            "persona",
            Str(min_length=1),
            "System prompt: who the bot is and how it behaves.",
            required=True,
        ),
        Prop(
            "voice",
            Str(min_length=1),
            "A voice name (built-in: " + ", ".join(vocab.BUILTIN_VOICES) + ", or a name from "
            "the voices/ folder) or a path to a prompt .wav relative to the flow file.",
            default=vocab.DEFAULT_VOICE,
        ),
        Prop(
            "style",
            Str(enum=vocab.STYLES),
            "Default speaking style / emotion.",
            default=vocab.DEFAULT_STYLE,
        ),
        Prop(
            "language",
            Str(pattern=vocab.BCP47, hint="a BCP-47 tag like 'en-US'"),
            "Language the bot speaks (BCP-47).",
            default="en-US",
        ),
        Prop("greeting", GREETING, "How the call opens.", default={}),
        Prop("turn_taking", TURN_TAKING, "Turn ends and interruptions.", default={}),
        Prop("timeouts", TIMEOUTS, "Silence handling.", default={}),
        Prop("tools", ListOf(TOOL), "Tool definitions.", default=[]),
        Prop("tools_allowed", ListOf(_TOOL_NAME), "Tools usable in every node.", default=[]),
        Prop(
            "nodes",
            MapOf(
                NODE,
                vocab.NODE_NAME,
                "a node name like 'take_order' (lowercase, digits, _)",
                min_items=1,
            ),
            "The conversation steps, by name.",
            required=True,
        ),
        Prop(
            "initial_node",
            Str(pattern=vocab.NODE_NAME, hint="a node name"),
            "Node the call starts in (default: the first node).",
            default=None,
        ),
        Prop(
            "variables",
            MapOf(VARIABLE, vocab.IDENTIFIER, "an identifier like 'caller_name'"),
            "Values collected during the call: name -> type, or name -> {type, description, "
            "required, choices}.",
            default={},
        ),
        Prop(
            "phone_numbers",
            ListOf(Str(pattern=vocab.E164, hint=_E164_HINT)),
            "Numbers routed to this bot (unique across all flows).",
            default=[],
        ),
        Prop("recording", RECORDING, "Call recording.", default={}),
    ),
    doc="A stepcall bot defined as a YAML flow.",
)


# --- JSON Schema rendering -------------------------------------------------------------------


def _anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _render(t: Any) -> dict[str, Any]:
    if isinstance(t, Str):
        out: dict[str, Any] = {"type": ["string", "integer"] if t.unquoted_ints else "string"}
        if t.enum is not None:
            out["enum"] = list(t.enum)
        if t.pattern is not None:
            out["pattern"] = _anchored(t.pattern)
        if t.min_length:
            out["minLength"] = t.min_length
        return out
    if isinstance(t, Int | Num):
        out = {"type": "integer" if isinstance(t, Int) else "number"}
        if t.minimum is not None:
            out["minimum"] = t.minimum
        if t.maximum is not None:
            out["maximum"] = t.maximum
        return out
    if isinstance(t, Bool):
        return {"type": "boolean"}
    if isinstance(t, JsonObject):
        return {"type": "object"}
    if isinstance(t, ListOf):
        out = {"type": "array", "items": _render(t.item)}
        if t.min_items:
            out["minItems"] = t.min_items
        return out
    if isinstance(t, MapOf):
        out = {
            "type": "object",
            "propertyNames": {"pattern": _anchored(t.key_pattern)},
            "additionalProperties": _render(t.value),
        }
        if t.min_items:
            out["minProperties"] = t.min_items
        return out
    if isinstance(t, Either):
        return {"oneOf": [_render(t.short), _render(t.long)]}
    if isinstance(t, Tagged):
        variants = []
        for kind in t.variants:
            rendered = _render(t.variant(kind))
            rendered["properties"][t.tag] = {"const": kind, "description": t.tag_doc}
            variants.append(rendered)
        return {"oneOf": variants}
    if isinstance(t, Obj):
        props: dict[str, Any] = {}
        for p in t.props:
            rendered = {**_render(p.type), "description": p.doc}
            if p.default is not MISSING and p.default is not None:
                rendered["default"] = p.default
            if p.default is None and p.nullable and "type" in rendered:
                types = rendered["type"]
                rendered["type"] = [*(types if isinstance(types, list) else [types]), "null"]
                if "enum" in rendered:
                    rendered["enum"] = [*rendered["enum"], None]
            props[p.name] = rendered
        out = {"type": "object", "properties": props, "additionalProperties": False}
        required = [p.name for p in t.props if p.required]
        if required:
            out["required"] = required
        if t.doc:
            out["description"] = t.doc
        return out
    raise TypeError(f"unknown schema type {t!r}")


def json_schema() -> dict[str, Any]:
    """The flow format as a JSON Schema (draft 2020-12) document."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://stepcall.dev/schemas/flow.schema.json",
        "title": "stepcall flow",
        **_render(FLOW),
    }


JSON_SCHEMA_PATH = Path(__file__).with_name("flow.schema.json")


def json_schema_text() -> str:
    """``json_schema()`` serialised exactly as it is stored in ``flow.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
