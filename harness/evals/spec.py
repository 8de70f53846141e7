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

- ``cpu``: the real CPU backend (Whisper tiny.en -> Qwen2.5-1.5B via llama.cpp -> Piper, from
  the model packages; ``model_service/backends/cpu``), loaded once per run (tens of seconds)
  and shared by every scenario that names it;
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

A turn is exactly one of ``say``, ``dtmf`` (digits 0-9 * # A-D; unquoted digits are read as
written) or ``silence`` (seconds, more than 0). A scenario's ``model`` replaces the file's, its
``caller`` options override the file's: ``pause_secs``, ``wait_secs``, ``quiet_secs``,
``max_reply_secs``, ``barge_in_after``, ``greeting_wait_secs``, ``dtmf_gap_secs``,
``hangup_delay_secs`` (seconds) and ``engine`` (see ``CallOptions``). A key written with no value (``expect:``) is an error,
not "no checks"; ``args: null`` of a tool check means any arguments.

The format is declared as data below (``EVAL``: every key's type, default and meaning) with the
flow format's schema types (``pipeline/flows/format/schema.py``) and checked by its ``Checker``;
this module adds the checks that span keys (one turn kind, model kinds, unique scenario names,
the flow file exists, regular expressions compile). Every problem is reported as
``file:line:column: path: message`` (all at once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.flows.format.checker import INVALID, Checker, check_document
from pipeline.flows.format.errors import FlowIssue
from pipeline.flows.format.schema import (
    MISSING,
    Bool,
    Either,
    JsonObject,
    ListOf,
    Num,
    Obj,
    Prop,
    Str,
)

TRANSCRIPT_SOURCES = ("auto", "text", "asr")
ENDED_BY = ("caller", "bot")
OUTCOMES = ("completed", "transferred", "caller_hung_up", "error")
EVAL_SUFFIXES = (".yaml", ".yml")


#: One problem in an eval file: the flow format's issue (file, 1-based line/column, field path).
EvalIssue = FlowIssue


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

    kind: str  # "demo", "cpu", "tiny" or "canned"
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
# the format, declared with the flow format's schema types and checked by its Checker
# ----------------------------------------------------------------------------------------------


def _key(name: str, type_: Any, doc: str, *, required: bool = False, default: Any = None) -> Prop:
    """A key of an eval file. A null value is an error, not the default: an ``expect:`` left
    empty would otherwise check nothing without a word."""
    return Prop(name, type_, doc, required=required, default=MISSING if required else default,
                nullable=False)


_TEXT = Str(min_length=1)
_TEXTS = Either(short=_TEXT, long=ListOf(_TEXT))
_MS = Num(minimum=0)

TOOL = Either(
    short=_TEXT,
    long=Obj((
        _key("name", _TEXT, "The tool's function name.", required=True),
        # null stands for the default here, as before: any arguments
        Prop("args", JsonObject(), "Arguments the call must have (a subset match; default: any).",
             default=None),
    )),
)

TRANSCRIPT = Obj(
    (
        _key("contains", _TEXTS, "Phrases the bot must say (case, punctuation and spacing "
             "ignored).", default=[]),
        _key("not_contains", _TEXTS, "Phrases the bot must not say.", default=[]),
        _key("matches", _TEXT, "A regular expression the bot's words must match (re.search, "
             "ignoring case)."),
        _key("source", Str(enum=TRANSCRIPT_SOURCES), "Where the bot's words come from: 'text' "
             "(the call record), 'asr' (Whisper on the audio), 'auto' (text, else asr).",
             default="auto"),
    ),
    doc="What the bot's words in a turn must (not) contain or match; give at least one check.",
)

TURN_EXPECT = Obj(
    (
        _key("within_ms", _MS, "The bot starts speaking within this many ms (voice-to-voice)."),
        _key("replied", Bool(), "The bot speaks (true) or stays silent (false)."),
        _key("no_reply", Bool(), "The opposite of replied (give one of them)."),
        _key("transcript", TRANSCRIPT, "Checks on what the bot said."),
        _key("tool", TOOL, "A tool call started during the turn: a name or {name, args}."),
        _key("node", _TEXT, "A node entered by the end of the turn."),
        _key("barged_in", Bool(), "The caller's turn interrupted the bot (or did not)."),
    ),
    doc="Expectations on one turn (or the greeting).",
)

CALL_EXPECT = Obj(
    (
        _key("ended_by", Str(enum=ENDED_BY), "Who hung up."),
        _key("outcome", Str(enum=OUTCOMES), "The outcome in the call record."),
        _key("transferred_to", _TEXT, "A number the call was transferred to (through Twilio)."),
        _key("hung_up_via_api", Bool(), "The bot hung up through Twilio's API (or did not)."),
        _key("tools", ListOf(TOOL), "Tool calls made during the call.", default=[]),
        _key("nodes", _TEXTS, "Nodes entered during the call.", default=[]),
        _key("max_latency_ms", _MS, "Every reply starts within this many ms."),
    ),
    doc="Expectations on the whole call.",
)

TURN = Obj(
    (
        _key("say", _TEXT, "A sentence the caller speaks (synthesised speech)."),
        _key("dtmf", Str(pattern="[0-9*#ABCD]+", hint="DTMF digits (0-9, *, #, A-D)",
                         unquoted_ints=True), "Keys the caller presses."),
        _key("silence", Num(minimum=0), "Seconds the caller stays quiet (more than 0)."),
        _key("expect", TURN_EXPECT, "What must happen in the turn."),
    ),
    doc="One thing the caller does: exactly one of say, dtmf or silence.",
)

MODEL = Either(
    short=Str(enum=("demo", "cpu")),
    long=Obj(
        (
            _key("checkpoint", Str(enum=("demo", "tiny")), "A tiny test checkpoint (or canned)."),
            _key("reply", _TEXT, "demo: what it says after every turn (default DEMO_REPLY)."),
            _key("tool_call", Obj((
                _key("name", _TEXT, "The tool it calls.", required=True),
                _key("arguments", JsonObject(), "The call's arguments.", default={}),
            )), "tiny (required): the tool call of its first response."),
            _key("filler", _TEXT, "tiny: what it says with the tool call.",
                 default=ModelSpec.filler),
            _key("after_tool", _TEXT, "tiny: what it says in every response after the result.",
                 default=ModelSpec.after_tool),
            _key("canned", _TEXT, "The instant stand-in instead of a checkpoint: what it says."),
            _key("text", Bool(), "canned: also send the text (false: only the ASR can check "
                 "what the bot said).", default=True),
        ),
    ),
)

CALLER = Obj(
    (
        _key("pause_secs", Num(minimum=0), "Silence before each turn."),
        _key("wait_secs", Num(minimum=0), "Longest wait for the bot's reply to begin."),
        _key("quiet_secs", Num(minimum=0), "Bot silence that ends its reply."),
        _key("max_reply_secs", Num(minimum=0), "Cap on one reply once it has begun."),
        _key("barge_in_after", Num(minimum=0), "Start the next turn this long into the reply."),
        _key("greeting_wait_secs", Num(minimum=0), "How long to listen for a greeting."),
        _key("dtmf_gap_secs", Num(minimum=0), "Between DTMF digits."),
        _key("hangup_delay_secs", Num(minimum=0), "Silence after the last reply before hanging "
             "up."),
        _key("engine", _TEXT, "Speech engine of the caller's voice (stepcall.audio.speech)."),
    ),
    doc="How the simulated caller behaves (CallOptions; seconds; default: CallOptions').",
)

SCENARIO = Obj(
    (
        _key("name", _TEXT, "Unique name of the scenario in its file.", required=True),
        _key("model", MODEL, "The model service (default: the file's model)."),
        _key("caller", CALLER, "Caller options over the file's."),
        _key("greeting", TURN_EXPECT, "Expectations on the bot's greeting."),
        _key("turns", ListOf(TURN, min_items=1), "What the caller does, in order.",
             required=True),
        _key("expect", CALL_EXPECT, "Expectations on the whole call."),
    ),
    doc="One simulated call and its expectations.",
)

EVAL = Obj(
    (
        _key("flow", _TEXT, "The flow file under test, relative to this file.", required=True),
        _key("model", MODEL, "Default model of the scenarios.", default="demo"),
        _key("caller", CALLER, "Default caller options of the scenarios.", default={}),
        _key("scenarios", ListOf(SCENARIO, min_items=1), "The simulated calls.", required=True),
    ),
    doc="An eval file: scripted calls to one flow's bot and what must happen.",
)


# ----------------------------------------------------------------------------------------------
# parsing: the Checker validates the structure; combinations are checked and objects built here
# ----------------------------------------------------------------------------------------------


def _given(value: Any) -> bool:
    """A key was written (absent keys are None: eval keys never take a null)."""
    return value is not None


def _texts(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


class _Eval:
    """The checks that span keys, then the objects, from the Checker's plain data."""

    def __init__(self, checker: Checker, path: Path) -> None:
        self.c = checker
        self.path = path

    def report(self, at: str, message: str) -> None:
        self.c.report(self.c.mark(at), at, message)

    def line(self, at: str) -> int:
        return self.c.mark(at)[0]

    # -- combinations -----------------------------------------------------------------------

    def check(self, data: dict[str, Any]) -> None:
        if isinstance(data["flow"], str):
            flow = (self.path.parent / data["flow"]).resolve()
            if not flow.is_file():
                self.report("flow", f"no flow file at {flow}")
        self.check_model(data["model"], "model")
        names: set[str] = set()
        for i, sc in enumerate(data["scenarios"] or []):
            at = f"scenarios[{i}]"
            if not isinstance(sc, dict):
                continue
            if isinstance(sc["name"], str):
                if sc["name"] in names:
                    self.report(f"{at}.name", f"duplicate scenario name {sc['name']!r}")
                names.add(sc["name"])
            self.check_model(sc["model"], f"{at}.model")
            self.check_turn_expect(sc["greeting"], f"{at}.greeting")
            for j, turn in enumerate(sc["turns"] or []):
                self.check_turn(turn, f"{at}.turns[{j}]")

    def check_model(self, m: Any, at: str) -> None:
        if not isinstance(m, dict):
            return
        if _given(m["canned"]) and _given(m["checkpoint"]):
            self.report(at, "give either checkpoint or canned, not both")
        elif not _given(m["canned"]) and not _given(m["checkpoint"]):
            self.report(at, "missing key 'checkpoint' (demo or tiny) or 'canned'")
        elif m["checkpoint"] == "tiny" and not _given(m["tool_call"]):
            self.report(at, "a tiny checkpoint needs tool_call: {name, arguments}")

    def check_turn(self, turn: Any, at: str) -> None:
        if not isinstance(turn, dict):
            return
        if sum(_given(turn[k]) for k in ("say", "dtmf", "silence")) != 1:
            self.report(at, "a turn needs exactly one of say, dtmf or silence")
        if turn["silence"] == 0:
            self.report(f"{at}.silence", "must be > 0 seconds")
        self.check_turn_expect(turn["expect"], f"{at}.expect")

    def check_turn_expect(self, exp: Any, at: str) -> None:
        if not isinstance(exp, dict):
            return
        if _given(exp["replied"]) and _given(exp["no_reply"]):
            self.report(f"{at}.no_reply", "give replied or no_reply, not both")
        t = exp["transcript"]
        if not isinstance(t, dict):
            return
        if isinstance(t["matches"], str):
            try:
                re.compile(t["matches"])
            except re.error as e:
                self.report(f"{at}.transcript.matches", f"invalid regular expression: {e}")
        if not (t["contains"] or t["not_contains"] or t["matches"]):
            self.report(f"{at}.transcript", "give contains, not_contains or matches")

    # -- objects (from data without problems) -----------------------------------------------

    def build(self, data: dict[str, Any]) -> EvalFile:
        model = self.model(data["model"])
        caller = self.caller(data["caller"])
        scenarios = tuple(
            Scenario(
                name=sc["name"], file=str(self.path), line=self.line(f"scenarios[{i}]"),
                model=model if sc["model"] is None else self.model(sc["model"]),
                caller={**caller, **self.caller(sc["caller"] or {})},
                turns=tuple(self.turn(t, f"scenarios[{i}].turns[{j}]")
                            for j, t in enumerate(sc["turns"])),
                greeting=None if sc["greeting"] is None else self.turn_expect(sc["greeting"]),
                expect=CallExpect() if sc["expect"] is None else self.call_expect(sc["expect"]),
            )
            for i, sc in enumerate(data["scenarios"])
        )
        flow = (self.path.parent / data["flow"]).resolve()
        return EvalFile(path=self.path, flow=flow, scenarios=scenarios)

    @staticmethod
    def model(m: str | dict[str, Any]) -> ModelSpec:
        if isinstance(m, str):
            return ModelSpec(m)
        if m["canned"] is not None:
            return ModelSpec("canned", canned=m["canned"], canned_text=m["text"])
        if m["checkpoint"] == "demo":
            return ModelSpec("demo", reply=m["reply"])
        return ModelSpec("tiny", tool_name=m["tool_call"]["name"],
                         tool_arguments=m["tool_call"]["arguments"], filler=m["filler"],
                         after_tool=m["after_tool"])

    @staticmethod
    def caller(options: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in options.items() if v is not None}

    @staticmethod
    def tool(t: str | dict[str, Any]) -> ToolCheck:
        return ToolCheck(t) if isinstance(t, str) else ToolCheck(t["name"], t["args"])

    def turn(self, t: dict[str, Any], at: str) -> TurnSpec:
        expect = TurnExpect() if t["expect"] is None else self.turn_expect(t["expect"])
        return TurnSpec(say=t["say"], dtmf=t["dtmf"], silence=t["silence"], expect=expect,
                        line=self.line(at))

    def turn_expect(self, e: dict[str, Any]) -> TurnExpect:
        t = e["transcript"]
        replied = e["replied"] if e["no_reply"] is None else not e["no_reply"]
        return TurnExpect(
            within_ms=e["within_ms"], replied=replied, node=e["node"], barged_in=e["barged_in"],
            tool=None if e["tool"] is None else self.tool(e["tool"]),
            transcript=None if t is None else TranscriptCheck(
                contains=_texts(t["contains"]), not_contains=_texts(t["not_contains"]),
                matches=t["matches"], source=t["source"]),
        )

    def call_expect(self, e: dict[str, Any]) -> CallExpect:
        return CallExpect(
            ended_by=e["ended_by"], outcome=e["outcome"], transferred_to=e["transferred_to"],
            hung_up_via_api=e["hung_up_via_api"], tools=tuple(self.tool(t) for t in e["tools"]),
            nodes=_texts(e["nodes"]), max_latency_ms=e["max_latency_ms"],
        )


def parse_eval(text: str, path: str | Path) -> EvalFile:
    """Validate eval YAML ``text`` as read from ``path``; raise ``EvalSpecError``."""
    path = Path(path)
    checker, data = check_document(
        text, str(path), EVAL, empty="the file is empty; expected flow and scenarios"
    )
    if data is INVALID:
        raise EvalSpecError(checker.issues)
    ev = _Eval(checker, path)
    ev.check(data)
    if checker.issues:
        raise EvalSpecError(checker.issues)
    return ev.build(data)


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
