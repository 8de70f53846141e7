"""Eval files (``evals/*.yaml``): scripted conversations with a bot and what must happen.

A file tests one flow::

    flow: ../flows/front_desk.yaml       # relative to this file
    model: demo                          # default model of the scenarios (see ModelSpec)
    caller: {pause_secs: 0.5}            # default CallOptions of the scenarios
    scenarios:
      - name: answers a question
        greeting: {within_ms: 3000, transcript: {contains: [weather]}}
        turns:
          - say: What time do you open tomorrow?
            expect: {within_ms: 4000, transcript: {contains: [help]}}
          - silence: 2.0                 # stay quiet for 2 s
            expect: {no_reply: true}
          - dtmf: "1#"
        expect: {ended_by: caller, outcome: caller_hung_up, nodes: [reception]}

Models (``model:``):

- ``demo`` (or ``{checkpoint: demo, reply: TEXT}``): the reference backend on the tiny demo
  checkpoint, which speaks ``reply`` (default ``DEMO_REPLY``) after every turn;
- ``{checkpoint: tiny, tool_call: {name, arguments}, filler: TEXT, after_tool: TEXT}``: a tiny
  checkpoint shaped to speak ``filler`` and call the tool in its first response, then speak
  ``after_tool`` in every response after the tool result;
- ``{canned: TEXT, text: false}``: the instant model stand-in speaking TEXT (flite speech); with
  ``text: false`` it sends no text, so only the ASR can check what the bot said.

Per-turn ``expect`` keys: ``within_ms`` (voice-to-voice), ``replied`` / ``no_reply``,
``transcript`` ``{contains: [..], not_contains: [..], matches: REGEX, source: auto|text|asr}``,
``tool`` ``{name, args}`` (a tool call started during the turn, ``args`` a subset match),
``node`` (entered by the end of the turn), ``barged_in``. Call-level ``expect``: ``ended_by``
(caller|bot), ``outcome`` (completed|transferred|caller_hung_up|error), ``transferred_to``,
``hung_up_via_api``, ``tools`` (list of ``{name, args}``), ``nodes`` (entered during the call),
``max_latency_ms``.

Every problem is reported as ``file:line:column: path: message`` (all at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TRANSCRIPT_SOURCES = ("auto", "text", "asr")
ENDED_BY = ("caller", "bot")
OUTCOMES = ("completed", "transferred", "caller_hung_up", "error")
CALLER_OPTIONS = {
    "pause_secs": float, "wait_secs": float, "quiet_secs": float, "max_reply_secs": float,
    "barge_in_after": float, "greeting_wait_secs": float, "dtmf_gap_secs": float,
    "hangup_delay_secs": float, "engine": str,
}
EVAL_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, order=True)
class EvalIssue:
    """One problem in an eval file."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class EvalSpecError(ValueError):
    """An eval file (or folder) is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[EvalIssue]) -> None:
        self.issues = sorted(issues)
        n = len(self.issues)
        lines = "\n".join(str(i) for i in self.issues)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in eval definition:\n{lines}")


@dataclass(frozen=True)
class ModelSpec:
    """Which model service a scenario talks to (see the module docstring)."""

    kind: str  # "demo", "tiny" or "canned"
    reply: str | None = None  # demo: the reply text
    tool_name: str | None = None  # tiny
    tool_arguments: dict[str, Any] = field(default_factory=dict)
    filler: str = "One moment please."
    after_tool: str = "All done, anything else?"
    canned: str | None = None  # canned: what the bot says
    canned_text: bool = True  # canned: also send the text

    def key(self) -> str:
        """A stable identity (checkpoints and services are shared by equal keys)."""
        import json

        return json.dumps(
            [self.kind, self.reply, self.tool_name, self.tool_arguments, self.filler,
             self.after_tool, self.canned, self.canned_text], sort_keys=True)


@dataclass(frozen=True)
class TranscriptCheck:
    """What the bot's words in a turn must (not) contain / match."""

    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()
    matches: str | None = None
    source: str = "auto"


@dataclass(frozen=True)
class ToolCheck:
    """A tool call: its name and (a subset of) its arguments."""

    name: str
    args: dict[str, Any] | None = None

    def describe(self) -> str:
        return self.name if self.args is None else f"{self.name}({self.args})"


@dataclass(frozen=True)
class TurnExpect:
    """Expectations on one turn (or the greeting)."""

    within_ms: float | None = None
    replied: bool | None = None
    transcript: TranscriptCheck | None = None
    tool: ToolCheck | None = None
    node: str | None = None
    barged_in: bool | None = None


@dataclass(frozen=True)
class CallExpect:
    """Expectations on the whole call."""

    ended_by: str | None = None
    outcome: str | None = None
    transferred_to: str | None = None
    hung_up_via_api: bool | None = None
    tools: tuple[ToolCheck, ...] = ()
    nodes: tuple[str, ...] = ()
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class TurnSpec:
    """One thing the caller does: say a sentence, press keys, or stay silent."""

    say: str | None = None
    dtmf: str | None = None
    silence: float | None = None
    expect: TurnExpect = field(default_factory=TurnExpect)
    line: int = 0

    @property
    def label(self) -> str:
        if self.say is not None:
            return self.say
        if self.dtmf is not None:
            return f"DTMF {self.dtmf}"
        return f"(silent {self.silence:g} s)"


@dataclass(frozen=True)
class Scenario:
    """One simulated call and its expectations."""

    name: str
    file: str
    line: int
    model: ModelSpec
    caller: dict[str, Any]
    turns: tuple[TurnSpec, ...]
    greeting: TurnExpect | None = None
    expect: CallExpect = field(default_factory=CallExpect)


@dataclass(frozen=True)
class EvalFile:
    """A parsed eval file: the flow under test and its scenarios."""

    path: Path
    flow: Path
    scenarios: tuple[Scenario, ...]


# ----------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------

_MISSING = object()


class _Parser:
    """Walks the composed YAML nodes, converting values and collecting issues with marks."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[EvalIssue] = []

    def issue(self, node: yaml.Node | None, path: str, message: str) -> None:
        line, col = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (1, 1)
        self.issues.append(EvalIssue(self.file, line, col, path, message))

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.issue(node, path, f"expected a mapping, got {_describe(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key not in allowed:
                self.issue(k, path, f"unknown key {key!r} (expected one of: {', '.join(allowed)})")
                continue
            if key in out:
                self.issue(k, path, f"duplicate key {key!r}")
            out[key] = v
        for key in required:
            if key not in out:
                self.issue(node, path, f"missing required key {key!r}")
        return out

    def string(self, node: yaml.Node, path: str) -> str | None:
        v = _construct(node)
        if not isinstance(v, str) or not v.strip():
            self.issue(node, path, f"expected a non-empty string, got {_describe(node)}")
            return None
        return v

    def number(self, node: yaml.Node, path: str, minimum: float = 0.0) -> float | None:
        v = _construct(node)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.issue(node, path, f"expected a number, got {_describe(node)}")
            return None
        if v < minimum:
            self.issue(node, path, f"must be >= {minimum:g}, got {v}")
            return None
        return float(v)

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        v = _construct(node)
        if not isinstance(v, bool):
            self.issue(node, path, f"expected true or false, got {_describe(node)}")
            return None
        return v

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...]) -> str | None:
        v = self.string(node, path)
        if v is not None and v not in choices:
            self.issue(node, path, f"{v!r} is not one of: {', '.join(choices)}")
            return None
        return v

    def strings(self, node: yaml.Node, path: str) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode):
            s = self.string(node, path)
            return (s,) if s else ()
        if not isinstance(node, yaml.SequenceNode):
            self.issue(node, path, f"expected a string or a list of strings, got {_describe(node)}")
            return ()
        out = []
        for i, item in enumerate(node.value):
            s = self.string(item, f"{path}[{i}]")
            if s is not None:
                out.append(s)
        return tuple(out)

    # -- sections ---------------------------------------------------------------------------

    def model(self, node: yaml.Node, path: str) -> ModelSpec | None:
        if isinstance(node, yaml.ScalarNode):
            name = self.choice(node, path, ("demo",))
            return ModelSpec("demo") if name else None
        m = self.mapping(node, path, ("checkpoint", "reply", "tool_call", "filler", "after_tool",
                                      "canned", "text"))
        if m is None:
            return None
        if "canned" in m:
            if "checkpoint" in m:
                self.issue(node, path, "give either checkpoint or canned, not both")
                return None
            say = self.string(m["canned"], f"{path}.canned")
            text = self.boolean(m["text"], f"{path}.text") if "text" in m else True
            return ModelSpec("canned", canned=say, canned_text=bool(text)) if say else None
        if "checkpoint" not in m:
            self.issue(node, path, "missing key 'checkpoint' (demo or tiny) or 'canned'")
            return None
        kind = self.choice(m["checkpoint"], f"{path}.checkpoint", ("demo", "tiny"))
        if kind == "demo":
            reply = self.string(m["reply"], f"{path}.reply") if "reply" in m else None
            return ModelSpec("demo", reply=reply)
        if kind != "tiny":
            return None
        if "tool_call" not in m:
            self.issue(node, path, "a tiny checkpoint needs tool_call: {name, arguments}")
            return None
        tc = self.mapping(m["tool_call"], f"{path}.tool_call", ("name", "arguments"), ("name",))
        if tc is None:
            return None
        name = self.string(tc["name"], f"{path}.tool_call.name") if "name" in tc else None
        args: Any = _construct(tc["arguments"]) if "arguments" in tc else {}
        if not isinstance(args, dict):
            self.issue(tc["arguments"], f"{path}.tool_call.arguments", "expected a mapping")
            return None
        extra = {k: self.string(m[k], f"{path}.{k}") for k in ("filler", "after_tool") if k in m}
        if name is None or any(v is None for v in extra.values()):
            return None
        return ModelSpec("tiny", tool_name=name, tool_arguments=args, **extra)

    def caller(self, node: yaml.Node, path: str) -> dict[str, Any]:
        m = self.mapping(node, path, tuple(CALLER_OPTIONS))
        out: dict[str, Any] = {}
        for k, v in (m or {}).items():
            if CALLER_OPTIONS[k] is float:
                x = self.number(v, f"{path}.{k}")
            else:
                x = self.string(v, f"{path}.{k}")
            if x is not None:
                out[k] = x
        return out

    def tool(self, node: yaml.Node, path: str) -> ToolCheck | None:
        if isinstance(node, yaml.ScalarNode):
            name = self.string(node, path)
            return ToolCheck(name) if name else None
        m = self.mapping(node, path, ("name", "args"), ("name",))
        if m is None or "name" not in m:
            return None
        name = self.string(m["name"], f"{path}.name")
        args = _construct(m["args"]) if "args" in m else None
        if args is not None and not isinstance(args, dict):
            self.issue(m["args"], f"{path}.args", "expected a mapping of argument values")
            return None
        return ToolCheck(name, args) if name else None

    def transcript(self, node: yaml.Node, path: str) -> TranscriptCheck | None:
        m = self.mapping(node, path, ("contains", "not_contains", "matches", "source"))
        if m is None:
            return None
        matches = None
        if "matches" in m:
            matches = self.string(m["matches"], f"{path}.matches")
            if matches is not None:
                import re

                try:
                    re.compile(matches)
                except re.error as e:
                    self.issue(m["matches"], f"{path}.matches", f"invalid regular expression: {e}")
        source = "auto"
        if "source" in m:
            source = self.choice(m["source"], f"{path}.source", TRANSCRIPT_SOURCES) or "auto"
        check = TranscriptCheck(
            contains=self.strings(m["contains"], f"{path}.contains") if "contains" in m else (),
            not_contains=self.strings(m["not_contains"], f"{path}.not_contains")
            if "not_contains" in m else (),
            matches=matches,
            source=source,
        )
        if not (check.contains or check.not_contains or check.matches):
            self.issue(node, path, "give contains, not_contains or matches")
        return check

    def turn_expect(self, node: yaml.Node, path: str) -> TurnExpect:
        keys = ("within_ms", "replied", "no_reply", "transcript", "tool", "node", "barged_in")
        m = self.mapping(node, path, keys) or {}
        kw: dict[str, Any] = {}
        if "within_ms" in m:
            kw["within_ms"] = self.number(m["within_ms"], f"{path}.within_ms")
        if "replied" in m:
            kw["replied"] = self.boolean(m["replied"], f"{path}.replied")
        if "no_reply" in m:
            v = self.boolean(m["no_reply"], f"{path}.no_reply")
            if "replied" in m:
                self.issue(m["no_reply"], f"{path}.no_reply", "give replied or no_reply, not both")
            elif v is not None:
                kw["replied"] = not v
        if "transcript" in m:
            kw["transcript"] = self.transcript(m["transcript"], f"{path}.transcript")
        if "tool" in m:
            kw["tool"] = self.tool(m["tool"], f"{path}.tool")
        if "node" in m:
            kw["node"] = self.string(m["node"], f"{path}.node")
        if "barged_in" in m:
            kw["barged_in"] = self.boolean(m["barged_in"], f"{path}.barged_in")
        return TurnExpect(**kw)

    def call_expect(self, node: yaml.Node, path: str) -> CallExpect:
        keys = ("ended_by", "outcome", "transferred_to", "hung_up_via_api", "tools", "nodes",
                "max_latency_ms")
        m = self.mapping(node, path, keys) or {}
        kw: dict[str, Any] = {}
        if "ended_by" in m:
            kw["ended_by"] = self.choice(m["ended_by"], f"{path}.ended_by", ENDED_BY)
        if "outcome" in m:
            kw["outcome"] = self.choice(m["outcome"], f"{path}.outcome", OUTCOMES)
        if "transferred_to" in m:
            kw["transferred_to"] = self.string(m["transferred_to"], f"{path}.transferred_to")
        if "hung_up_via_api" in m:
            kw["hung_up_via_api"] = self.boolean(m["hung_up_via_api"], f"{path}.hung_up_via_api")
        if "tools" in m:
            if not isinstance(m["tools"], yaml.SequenceNode):
                self.issue(m["tools"], f"{path}.tools", "expected a list of tools")
            else:
                tools = [self.tool(t, f"{path}.tools[{i}]") for i, t in enumerate(m["tools"].value)]
                kw["tools"] = tuple(t for t in tools if t is not None)
        if "nodes" in m:
            kw["nodes"] = self.strings(m["nodes"], f"{path}.nodes")
        if "max_latency_ms" in m:
            kw["max_latency_ms"] = self.number(m["max_latency_ms"], f"{path}.max_latency_ms")
        return CallExpect(**kw)

    def turn(self, node: yaml.Node, path: str) -> TurnSpec | None:
        m = self.mapping(node, path, ("say", "dtmf", "silence", "expect"))
        if m is None:
            return None
        kinds = [k for k in ("say", "dtmf", "silence") if k in m]
        if len(kinds) != 1:
            self.issue(node, path, "a turn needs exactly one of say, dtmf or silence")
            return None
        kw: dict[str, Any] = {"line": node.start_mark.line + 1}
        kind = kinds[0]
        if kind == "say":
            kw["say"] = self.string(m["say"], f"{path}.say")
        elif kind == "dtmf":
            digits = str(_construct(m["dtmf"]))
            bad = [d for d in digits if d not in "0123456789*#ABCD"]
            if not digits or bad:
                self.issue(m["dtmf"], f"{path}.dtmf", f"invalid DTMF digits {digits!r}")
                return None
            kw["dtmf"] = digits
        else:
            secs = self.number(m["silence"], f"{path}.silence")
            if secs is not None and secs <= 0:
                self.issue(m["silence"], f"{path}.silence", "must be > 0 seconds")
                return None
            kw["silence"] = secs
        if kw.get(kind) is None:
            return None
        if "expect" in m:
            kw["expect"] = self.turn_expect(m["expect"], f"{path}.expect")
        return TurnSpec(**kw)


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _describe(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node is None:
        return "nothing"
    v = _construct(node)
    return "nothing (null)" if v is None else f"{type(v).__name__} {v!r}"


def parse_eval(text: str, path: str | Path) -> EvalFile:
    """Validate eval YAML ``text`` as read from ``path``; raise ``EvalSpecError``."""
    path = Path(path)
    p = _Parser(str(path))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise EvalSpecError([EvalIssue(str(path), line, col, "", f"YAML syntax error: {e.problem}")]
                            ) from None
    if root is None:
        raise EvalSpecError([EvalIssue(str(path), 1, 1, "", "the file is empty; expected flow "
                                       "and scenarios")])
    top = p.mapping(root, "", ("flow", "model", "caller", "scenarios"), ("flow", "scenarios"))
    if top is None:
        raise EvalSpecError(p.issues)
    flow = None
    if "flow" in top:
        name = p.string(top["flow"], "flow")
        if name is not None:
            flow = (path.parent / name).resolve()
            if not flow.is_file():
                p.issue(top["flow"], "flow", f"no flow file at {flow}")
    default_model = p.model(top["model"], "model") if "model" in top else ModelSpec("demo")
    default_caller = p.caller(top["caller"], "caller") if "caller" in top else {}
    scenarios: list[Scenario] = []
    names: set[str] = set()
    snode = top.get("scenarios")
    if snode is not None and (not isinstance(snode, yaml.SequenceNode) or not snode.value):
        p.issue(snode, "scenarios", "expected a non-empty list of scenarios")
    elif snode is not None:
        for i, sn in enumerate(snode.value):
            sp = f"scenarios[{i}]"
            m = p.mapping(sn, sp, ("name", "model", "caller", "greeting", "turns", "expect"),
                          ("name", "turns"))
            if m is None or "name" not in m or "turns" not in m:
                continue
            name = p.string(m["name"], f"{sp}.name")
            if name in names:
                p.issue(m["name"], f"{sp}.name", f"duplicate scenario name {name!r}")
            names.add(name or "")
            model = p.model(m["model"], f"{sp}.model") if "model" in m else default_model
            caller = {**default_caller, **(p.caller(m["caller"], f"{sp}.caller")
                                           if "caller" in m else {})}
            tnode = m["turns"]
            turns: list[TurnSpec] = []
            if not isinstance(tnode, yaml.SequenceNode) or not tnode.value:
                p.issue(tnode, f"{sp}.turns", "expected a non-empty list of turns")
            else:
                for j, tn in enumerate(tnode.value):
                    t = p.turn(tn, f"{sp}.turns[{j}]")
                    if t is not None:
                        turns.append(t)
            greeting = p.turn_expect(m["greeting"], f"{sp}.greeting") if "greeting" in m else None
            expect = p.call_expect(m["expect"], f"{sp}.expect") if "expect" in m else CallExpect()
            if name and model is not None:
                scenarios.append(Scenario(
                    name=name, file=str(path), line=sn.start_mark.line + 1, model=model,
                    caller=caller, turns=tuple(turns), greeting=greeting, expect=expect))
    if p.issues:
        raise EvalSpecError(p.issues)
    assert flow is not None
    return EvalFile(path=path, flow=flow, scenarios=tuple(scenarios))


def load_eval(path: str | Path) -> EvalFile:
    """Load and validate one eval file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvalSpecError([EvalIssue(str(path), 1, 1, "", f"cannot read file: {e}")]) from e
    return parse_eval(text, path)


def load_evals(target: str | Path) -> list[EvalFile]:
    """Load an eval file or every ``*.yaml``/``*.yml`` in a folder; all problems at once."""
    target = Path(target)
    if target.is_file():
        return [load_eval(target)]
    if not target.is_dir():
        raise EvalSpecError([EvalIssue(str(target), 1, 1, "", "no such file or folder")])
    files = sorted(f for f in target.iterdir() if f.suffix in EVAL_SUFFIXES and f.is_file())
    if not files:
        raise EvalSpecError([EvalIssue(str(target), 1, 1, "", "no *.yaml eval files here")])
    out: list[EvalFile] = []
    issues: list[EvalIssue] = []
    for f in files:
        try:
            out.append(load_eval(f))
        except EvalSpecError as e:
            issues.extend(e.issues)
    if issues:
        raise EvalSpecError(issues)
    return out
