"""Load flow files into ``FlowSpec``s, reporting every problem with its file:line:column.

``load_flow(path)`` checks one file: YAML syntax, then the structure declared in ``schema.py``
(types, unknown/missing keys, ranges, formats), then references (nodes, tools, voices, numbers).
``load_flows(folder)`` loads every ``*.yaml``/``*.yml`` in a folder and also checks what must be
unique across flows (bot names, phone numbers). Both raise one ``FlowValidationError`` that lists
all problems found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.flows.format import vocab
from pipeline.flows.format.checker import (
    INVALID,
    Checker,
    check_document,
    did_you_mean,
    join,
)
from pipeline.flows.format.errors import FlowIssue, FlowValidationError
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
    transition_function_name,
)
from pipeline.flows.format.schema import FLOW
from pipeline.flows.format.voices import ResolvedVoice, resolve_voice

FLOW_SUFFIXES = (".yaml", ".yml")
_PARAMETER_KEYS = ("type", "properties", "required", "description", "additionalProperties")


def load_flow(path: str | Path) -> FlowSpec:
    """Load and validate one flow file; raise ``FlowValidationError`` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FlowValidationError([FlowIssue(str(path), 1, 1, "", f"cannot read file: {e}")]) from e
    return parse_flow(text, path)


def parse_flow(text: str, path: str | Path) -> FlowSpec:
    """Validate flow YAML ``text`` as if read from ``path`` (relative voice paths use its folder)."""
    path = Path(path)
    checker, data = check_document(
        text, str(path), FLOW,
        empty="the file is empty; expected a mapping with bot, persona and nodes",
    )
    if data is INVALID:
        raise FlowValidationError(checker.issues)
    refs = _References(checker, data, path)
    refs.run()
    if checker.issues:
        raise FlowValidationError(checker.issues)
    return _build(data, path, refs, checker)


def load_flows(folder: str | Path) -> list[FlowSpec]:
    """Load every flow in ``folder`` (sorted by file name); check names and numbers are unique.

    Raises one ``FlowValidationError`` with the problems of all files together.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FlowValidationError([FlowIssue(str(folder), 1, 1, "", "not a folder")])
    files = sorted(p for p in folder.iterdir() if p.suffix in FLOW_SUFFIXES and p.is_file())
    specs: list[FlowSpec] = []
    issues: list[FlowIssue] = []
    for file in files:
        try:
            specs.append(load_flow(file))
        except FlowValidationError as e:
            issues.extend(e.issues)
    issues.extend(_cross_flow_issues(specs))
    if issues:
        raise FlowValidationError(issues)
    return specs


def _cross_flow_issues(specs: list[FlowSpec]) -> list[FlowIssue]:
    """Bot names and phone numbers claimed by more than one flow."""
    issues: list[FlowIssue] = []
    names: dict[str, FlowSpec] = {}
    numbers: dict[str, tuple[FlowSpec, str]] = {}
    for spec in specs:
        if spec.name in names:
            first = names[spec.name]
            line, col = spec.marks.get("bot.name", (1, 1))
            where = _where(first, "bot.name")
            issues.append(
                FlowIssue(
                    str(spec.path),
                    line,
                    col,
                    "bot.name",
                    f"bot name '{spec.name}' is also used by {where}",
                )
            )
        else:
            names[spec.name] = spec
        for i, number in enumerate(spec.phone_numbers):
            field_path = f"phone_numbers[{i}]"
            if number in numbers:
                first, first_path = numbers[number]
                if first is spec:
                    continue  # reported by load_flow
                line, col = spec.marks.get(field_path, (1, 1))
                issues.append(
                    FlowIssue(
                        str(spec.path),
                        line,
                        col,
                        field_path,
                        f"phone number {number} is already routed to bot '{first.name}' "
                        f"({_where(first, first_path)})",
                    )
                )
            else:
                numbers[number] = (spec, field_path)
    return issues


def _where(spec: FlowSpec, field_path: str) -> str:
    line, col = spec.marks.get(field_path, (1, 1))
    return f"{spec.path}:{line}:{col}"


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


class _References:
    """Checks that need more than one field: references, combinations, voices; and warnings."""

    def __init__(self, checker: Checker, data: dict[str, Any], path: Path) -> None:
        self.c = checker
        self.data = data
        self.path = path
        self.nodes: dict[str, Any] = data["nodes"] if isinstance(data["nodes"], dict) else {}
        self.tools: dict[str, dict[str, Any]] = {}
        self.voice: ResolvedVoice | None = None
        self.initial_node: str | None = None
        self.warnings: list[FlowIssue] = []

    def report(self, path: str, message: str) -> None:
        self.c.report(self.c.mark(path), path, message)

    def warn(self, path: str, message: str) -> None:
        line, col = self.c.key_marks.get(path) or self.c.mark(path)
        self.warnings.append(FlowIssue(self.c.file, line, col, path, message))

    def run(self) -> None:
        self._tools()
        self._tool_refs("tools_allowed", self.data["tools_allowed"])
        self._initial_node()
        for name, node in self.nodes.items():
            if isinstance(node, dict):
                self._node(name, node)
        self._voice()
        self._timeouts()
        self._greeting()
        self._phone_numbers()
        self._unreachable_and_unused()

    # -- tools ------------------------------------------------------------------------------

    def _tools(self) -> None:
        tools = self.data["tools"]
        if not isinstance(tools, list):
            return
        transition_names = {transition_function_name(n) for n in self.nodes}
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not _is_str(tool.get("name")):
                continue
            path = f"tools[{i}]"
            name = tool["name"]
            if name in self.tools:
                self.report(join(path, "name"), f"duplicate tool name '{name}'")
                continue
            if name in transition_names:
                self.report(
                    join(path, "name"),
                    f"tool name '{name}' clashes with the transition "
                    f"function into node '{name.removeprefix('go_to_')}'",
                )
            self.tools[name] = tool
            kind = tool.get("kind")
            if kind == "builtin":
                builtin = tool.get("builtin") or name
                if builtin not in vocab.BUILTIN_TOOLS:
                    known = ", ".join(vocab.BUILTIN_TOOLS)
                    self.report(
                        join(path, "name"),
                        f"unknown builtin tool '{builtin}' (known: "
                        f"{known}){did_you_mean(builtin, tuple(vocab.BUILTIN_TOOLS))}; "
                        "name it after a builtin or set 'builtin:'",
                    )
                    tool["builtin"] = INVALID
                else:
                    tool["builtin"] = builtin
                self._documents(path, tool)
            if tool.get("parameters") is not None and tool.get("parameters") is not INVALID:
                self._parameters(join(path, "parameters"), tool["parameters"])

    def _documents(self, path: str, tool: dict[str, Any]) -> None:
        """``documents`` belongs to knowledge_search and names an existing folder."""
        documents = tool.get("documents")
        if not _is_str(documents):
            return
        if tool.get("builtin") != "knowledge_search":
            self.report(
                join(path, "documents"),
                "documents is only for the knowledge_search built-in",
            )
            return
        folder = (self.path.parent / documents).resolve()
        if not folder.is_dir():
            self.report(
                join(path, "documents"),
                f"documents folder '{documents}' not found (looked for {folder})",
            )

    def _parameters(self, path: str, params: Any) -> None:
        """A tool's ``parameters`` must be a JSON Schema object with typed properties."""
        for key in params:
            if key not in _PARAMETER_KEYS:
                self.report(
                    join(path, str(key)),
                    f"unknown key '{key}'{did_you_mean(str(key), _PARAMETER_KEYS)} "
                    f"(allowed: {', '.join(_PARAMETER_KEYS)})",
                )
        if params.get("type") != "object":
            self.report(join(path, "type"), f"type must be 'object', got {params.get('type')!r}")
        props = params.get("properties", {})
        if not isinstance(props, dict):
            self.report(
                join(path, "properties"),
                "properties must be a mapping of argument name to JSON Schema",
            )
            props = {}
        for name, prop in props.items():
            sub = join(join(path, "properties"), str(name))
            if not isinstance(prop, dict):
                self.report(sub, "must be a mapping like {type: string}")
                continue
            ptype = prop.get("type")
            types = ptype if isinstance(ptype, list) else [ptype]
            bad = [t for t in types if t not in vocab.JSON_TYPES]
            if "enum" not in prop and (ptype is None or bad):
                self.report(
                    join(sub, "type"),
                    f"must be one of {', '.join(vocab.JSON_TYPES)}, got {ptype!r}",
                )
        required = params.get("required", [])
        if not isinstance(required, list):
            self.report(join(path, "required"), "must be a list of argument names")
            return
        for i, name in enumerate(required):
            if name not in props:
                self.report(
                    join(join(path, "required"), i),
                    f"required argument '{name}' is not in properties "
                    f"(known: {', '.join(props) or 'none'})",
                )

    def _tool_refs(self, path: str, names: Any) -> None:
        if not isinstance(names, list):
            return
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not _is_str(name):
                continue
            sub = join(path, i)
            if name in seen:
                self.report(sub, f"tool '{name}' is listed twice")
            seen.add(name)
            if name not in self.tools:
                known = ", ".join(self.tools) or "none"
                hint = did_you_mean(name, list(self.tools))
                if not hint and name in vocab.BUILTIN_TOOLS:
                    hint = f"; declare it under tools: with {{name: {name}, kind: builtin}}"
                self.report(sub, f"unknown tool '{name}' (defined: {known}){hint}")

    # -- nodes ------------------------------------------------------------------------------

    def _unknown_node(self, path: str, name: str) -> None:
        known = ", ".join(self.nodes) or "none"
        self.report(
            path, f"unknown node '{name}' (known: {known}){did_you_mean(name, list(self.nodes))}"
        )

    def _initial_node(self) -> None:
        initial = self.data["initial_node"]
        if initial is None:
            self.initial_node = next(iter(self.nodes), None)
        elif _is_str(initial):
            if initial in self.nodes:
                self.initial_node = initial
            elif self.nodes:
                self._unknown_node("initial_node", initial)

    def _node(self, name: str, node: dict[str, Any]) -> None:
        path = f"nodes.{name}"
        self._tool_refs(join(path, "tools"), node["tools"])
        transitions = node["transitions"] if isinstance(node["transitions"], list) else []
        targets: set[str] = set()
        for i, transition in enumerate(transitions):
            if not isinstance(transition, dict) or not _is_str(transition.get("to")):
                continue
            target = transition["to"]
            sub = join(join(path, "transitions") + f"[{i}]", "to")
            if target not in self.nodes:
                self._unknown_node(sub, target)
            elif target in targets:
                self.report(sub, f"a second transition to '{target}'; merge the 'when' texts")
            targets.add(target)
        if node["end"] is True and _is_str(node["transfer"]):
            self.report(join(path, "transfer"), "a node cannot both end the call and transfer it")
        if transitions and (node["end"] is True or _is_str(node["transfer"])):
            key = "end" if node["end"] is True else "transfer"
            self.report(join(path, key), f"a node with '{key}' cannot have transitions")

    def _unreachable_and_unused(self) -> None:
        if self.initial_node is None:
            return
        reached = {self.initial_node}
        todo = [self.initial_node]
        while todo:
            node = self.nodes.get(todo.pop())
            if not isinstance(node, dict) or not isinstance(node["transitions"], list):
                continue
            for t in node["transitions"]:
                target = t.get("to") if isinstance(t, dict) else None
                if target in self.nodes and target not in reached:
                    reached.add(target)
                    todo.append(target)
        for name in self.nodes:
            if name not in reached:
                self.warn(
                    f"nodes.{name}",
                    f"node '{name}' is unreachable from initial node '{self.initial_node}'",
                )
        used = set(self.data["tools_allowed"] or [])
        for node in self.nodes.values():
            if isinstance(node, dict) and isinstance(node["tools"], list):
                used.update(t for t in node["tools"] if _is_str(t))
        for i, name in enumerate(self.tools):
            if name not in used:
                self.warn(f"tools[{i}]", f"tool '{name}' is defined but not allowed in any node")

    # -- the rest ---------------------------------------------------------------------------

    def _voice(self) -> None:
        voice = self.data["voice"]
        if not _is_str(voice):
            return
        resolved = resolve_voice(voice, self.path)
        if isinstance(resolved, str):
            self.report("voice", resolved)
        else:
            self.voice = resolved

    def _timeouts(self) -> None:
        timeouts = self.data["timeouts"]
        if (
            isinstance(timeouts, dict)
            and timeouts["then"] == "transfer"
            and timeouts["transfer_to"] is None
        ):
            self.report("timeouts.then", "then: transfer needs transfer_to (an E.164 number)")

    def _greeting(self) -> None:
        greeting = self.data["greeting"]
        if not isinstance(greeting, dict) or not _is_str(greeting.get("say")):
            return
        if _is_str(greeting.get("text")):
            self.report(
                "greeting.say",
                "greeting has both say (the words) and text (an instruction): keep one",
            )
        if greeting.get("who_speaks_first") == "caller":
            self.report(
                "greeting.say",
                "greeting.say needs who_speaks_first: bot (the bot says it when the call opens)",
            )

    def _phone_numbers(self) -> None:
        numbers = self.data["phone_numbers"]
        if not isinstance(numbers, list):
            return
        first: dict[str, int] = {}
        for i, number in enumerate(numbers):
            if not _is_str(number):
                continue
            if number in first:
                line = self.c.mark(f"phone_numbers[{first[number]}]")[0]
                self.report(
                    f"phone_numbers[{i}]",
                    f"duplicate phone number {number} (first listed on line {line})",
                )
            else:
                first[number] = i


def _build(data: dict[str, Any], path: Path, refs: _References, checker: Checker) -> FlowSpec:
    """Turn validated plain data into a ``FlowSpec``."""
    tools = {}
    for name, t in refs.tools.items():
        builtin = t.get("builtin")
        base = vocab.BUILTIN_TOOLS.get(builtin, {}) if builtin else {}
        tools[name] = ToolSpec(
            name=name,
            kind=t["kind"],
            description=t.get("description") or base.get("description", ""),
            parameters=t.get("parameters")
            or base.get("parameters")
            or {"type": "object", "properties": {}, "required": []},
            url=t.get("url"),
            method=t.get("method", "POST"),
            timeout_secs=t.get("timeout_secs", 5.0),
            retries=t.get("retries", 0),
            headers=dict(t.get("headers") or {}),
            handler=t.get("handler"),
            builtin=builtin,
            documents=t.get("documents"),
        )
    nodes = {
        name: NodeSpec(
            name=name,
            instructions=n["instructions"],
            style=n["style"],
            tools=tuple(n["tools"]),
            transitions=tuple(Transition(t["to"], t["when"]) for t in n["transitions"]),
            context_strategy=n["context_strategy"],
            end=n["end"],
            transfer=n["transfer"],
        )
        for name, n in data["nodes"].items()
    }
    variables = {}
    for name, v in data["variables"].items():
        if isinstance(v, str):
            v = {"type": v}
        variables[name] = Variable(
            name=name,
            type=v["type"],
            description=v.get("description", ""),
            required=v.get("required", False),
            choices=tuple(v.get("choices", ())),
        )
    assert refs.voice is not None and refs.initial_node is not None
    return FlowSpec(
        path=path,
        bot=BotInfo(**data["bot"]),
        persona=data["persona"],
        nodes=nodes,
        initial_node=refs.initial_node,
        voice=refs.voice.voice,
        voice_path=refs.voice.path,
        style=data["style"],
        language=data["language"],
        greeting=Greeting(**data["greeting"]),
        turn_taking=TurnTaking(**data["turn_taking"]),
        timeouts=Timeouts(**data["timeouts"]),
        tools=tools,
        tools_allowed=tuple(data["tools_allowed"]),
        variables=variables,
        phone_numbers=tuple(data["phone_numbers"]),
        recording=Recording(**data["recording"]),
        warnings=tuple(sorted(refs.warnings)),
        marks=dict(checker.marks),
    )
