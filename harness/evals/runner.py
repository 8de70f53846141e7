"""Runs eval scenarios: a real bot server per scenario, a simulated caller, observed results.

For each scenario the runner

1. gets a model service for the scenario's model (``harness/evals/model_services.py``; or the one given
   with ``model_url``),
2. serves the bot server (``bots.server.create_app``) for the eval's flow on loopback, with a
   temporary SQLite call-record store and its Twilio REST API pointed at a loopback stand-in
   (``harness/evals/twilio_standin.py``), so hang-ups and transfers are observable,
3. places the call with the caller simulator (``harness.callers.run_call``: Twilio Media Streams,
   synthesised speech in real time, a valid per-call stream token),
4. observes: per-turn voice-to-voice latency and bot audio (caller side), what the bot said
   (its text from the call record, or Whisper tiny.en on the audio the caller heard), tool calls
   with arguments and the call's outcome (call record), nodes entered (the flow's initial node
   plus the targets of transition calls that returned without error), hang-up/transfer requests
   (the Twilio stand-in), who hung up (caller side),
5. checks every expectation and keeps the reasons of failures.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from harness.callers import CallerTurn, CallOptions, CallResult, StreamIdentity, run_call
from harness.callers.scripted_call import TurnResult
from harness.callers.twilio_client import decode_bot_audio, is_audible
from harness.evals.asr import BotSpeechASR, normalize
from harness.evals.model_services import ModelServices
from harness.evals.spec import (
    CallExpect,
    EvalFile,
    Scenario,
    ToolCheck,
    TranscriptCheck,
    TurnExpect,
    TurnSpec,
)
from harness.evals.twilio_standin import TwilioStandIn

DEFAULT_SCENARIO_TIMEOUT_SECS = 180.0
#: Listening time after a silent turn (its own audio is the main listening window).
SILENCE_TURN_WAIT_SECS = 0.5
#: How long a scenario waits for its bot server to be ready (its greetings rendered).
READY_TIMEOUT_SECS = 120.0


@dataclass
class Check:
    """One checked expectation."""

    what: str  # e.g. "turn 1: within_ms <= 4000"
    ok: bool
    detail: str = ""


@dataclass
class TurnObservation:
    """What was observed in one turn (index 0 = greeting)."""

    index: int
    label: str
    latency_ms: float | None
    spoke: bool
    text: str = ""  # bot text from the call record
    heard: str | None = None  # Whisper transcript of the bot audio (when computed)
    tools: list[tuple[str, Any, str | None]] = field(default_factory=list)  # name, args, error
    nodes: list[str] = field(default_factory=list)  # entered by the end of the turn
    barged_in: bool = False


@dataclass
class ScenarioResult:
    """The outcome of one scenario."""

    scenario: Scenario
    checks: list[Check] = field(default_factory=list)
    turns: list[TurnObservation] = field(default_factory=list)
    error: str | None = None
    secs: float = 0.0
    call: CallResult | None = None
    outcome: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


# ----------------------------------------------------------------------------------------------
# observation helpers
# ----------------------------------------------------------------------------------------------


def phrase_in(phrase: str, text: str) -> bool:
    """Whether ``phrase`` occurs in ``text``, ignoring case, punctuation and spacing."""
    p, t = normalize(phrase), normalize(text)
    return bool(p) and (p in t or p.replace(" ", "") in t.replace(" ", ""))


def args_match(expected: dict[str, Any] | None, actual: Any) -> bool:
    """``expected`` is a subset of ``actual`` (recursively for mappings); None matches all."""
    if expected is None:
        return True
    if not isinstance(actual, dict):
        return False
    for k, v in expected.items():
        if k not in actual:
            return False
        if isinstance(v, dict):
            if not args_match(v, actual[k]):
                return False
        elif actual[k] != v:
            return False
    return True


def _window(call: CallResult, k: int) -> tuple[float, float]:
    """Wall-clock span of turn ``k`` (0 = greeting): its start to the next turn's start."""
    t0 = call.started_unix or 0.0
    starts = [0.0] + [
        (t.speech_start_ms if t.speech_start_ms is not None else None) for t in call.turns
    ]
    begin = starts[k] if starts[k] is not None else None
    if begin is None:
        return (float("inf"), float("inf"))
    end = call.duration_ms
    for s in starts[k + 1:]:
        if s is not None:
            end = s
            break
    return (t0 + begin / 1000.0, t0 + end / 1000.0 + (5.0 if k == len(starts) - 1 else 0.0))


def _transition_targets(spec: Any) -> dict[str, str]:
    return {t.function_name: t.to for node in spec.nodes.values() for t in node.transitions}


class Observer:
    """Turns a finished call + its record + the Twilio stand-in into per-turn observations."""

    def __init__(self, flow: Any, call: CallResult, record: Any, standin: TwilioStandIn,
                 asr: BotSpeechASR) -> None:
        self.flow = flow
        self.call = call
        self.record = record
        self.standin = standin
        self.asr = asr
        self.targets = _transition_targets(flow)

    def _turn_result(self, k: int) -> TurnResult | None:
        if k == 0:
            return self.call.greeting
        return self.call.turns[k - 1]

    def observe(self, labels: list[str]) -> list[TurnObservation]:
        out: list[TurnObservation] = []
        nodes: list[str] = [self.flow.initial_node] if self.record is not None else []
        for k, label in enumerate(labels):
            tr = self._turn_result(k)
            begin, end = _window(self.call, k)
            obs = TurnObservation(
                index=k, label=label,
                latency_ms=tr.latency_ms if tr is not None else None,
                spoke=bool(tr is not None and tr.bot_audio and is_audible(tr.bot_audio)),
                barged_in=bool(tr is not None and tr.barged_in),
            )
            if self.record is not None:
                texts = [t.text for t in self.record.turns
                         if t.role == "bot" and t.text and begin <= t.started_at.timestamp() < end]
                obs.text = " ".join(texts)
                for tc in self.record.tool_calls:
                    if begin <= tc.started_at.timestamp() < end:
                        obs.tools.append((tc.name, tc.arguments, tc.error))
                        target = self.targets.get(tc.name)
                        failed = tc.error or (isinstance(tc.result, dict) and "error" in tc.result)
                        if target and not failed and target not in nodes:
                            nodes.append(target)
            obs.nodes = list(nodes)
            out.append(obs)
        return out

    async def words(self, obs: TurnObservation, source: str) -> tuple[str, str]:
        """(source used, the bot's words in the turn) for a transcript check."""
        if source == "text" or (source == "auto" and obs.text.strip()):
            return "text", obs.text
        if obs.heard is None:
            tr = self._turn_result(obs.index)
            pcm = decode_bot_audio(tr) if tr is not None else np.zeros(0, np.int16)
            obs.heard = await self.asr.transcribe(pcm)
        return "asr", obs.heard


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------


async def check_transcript(where: str, check: TranscriptCheck, obs: TurnObservation,
                           observer: Observer) -> list[Check]:
    source, words = await observer.words(obs, check.source)
    shown = f"{source}: {words!r}"
    out = []
    for phrase in check.contains:
        out.append(Check(f"{where}: transcript contains {phrase!r}", phrase_in(phrase, words),
                         shown))
    for phrase in check.not_contains:
        out.append(Check(f"{where}: transcript lacks {phrase!r}", not phrase_in(phrase, words),
                         shown))
    if check.matches:
        ok = re.search(check.matches, words, re.IGNORECASE) is not None
        out.append(Check(f"{where}: transcript matches /{check.matches}/", ok, shown))
    return out


def _tool_found(check: ToolCheck, tools: list[tuple[str, Any, str | None]]) -> bool:
    return any(name == check.name and args_match(check.args, args) for name, args, _ in tools)


def _tools_shown(tools: list[tuple[str, Any, str | None]]) -> str:
    return ", ".join(f"{n}({a})" for n, a, _ in tools) or "no tool calls"


async def check_turn(where: str, exp: TurnExpect, obs: TurnObservation,
                     observer: Observer) -> list[Check]:
    out: list[Check] = []
    if exp.replied is not None:
        out.append(Check(f"{where}: {'replied' if exp.replied else 'no reply'}",
                         obs.spoke == exp.replied,
                         "the bot spoke" if obs.spoke else "the bot stayed silent"))
    if exp.within_ms is not None:
        lat = obs.latency_ms
        out.append(Check(f"{where}: bot spoke within {exp.within_ms:g} ms",
                         lat is not None and lat <= exp.within_ms,
                         "no reply" if lat is None else f"{lat:.0f} ms"))
    if exp.transcript is not None:
        out += await check_transcript(where, exp.transcript, obs, observer)
    if exp.tool is not None:
        out.append(Check(f"{where}: tool {exp.tool.describe()}", _tool_found(exp.tool, obs.tools),
                         _tools_shown(obs.tools)))
    if exp.node is not None:
        out.append(Check(f"{where}: node {exp.node} reached", exp.node in obs.nodes,
                         f"nodes: {', '.join(obs.nodes) or 'none'}"))
    if exp.barged_in is not None:
        out.append(Check(f"{where}: barged in = {exp.barged_in}", obs.barged_in == exp.barged_in,
                         f"barged_in={obs.barged_in}"))
    return out


def check_call(exp: CallExpect, call: CallResult, record: Any, standin: TwilioStandIn,
               observations: list[TurnObservation]) -> list[Check]:
    out: list[Check] = []
    actions = standin.actions(call.call_sid)
    if exp.ended_by is not None:
        out.append(Check(f"call: ended by {exp.ended_by}", call.hung_up_by == exp.ended_by,
                         f"hung up by {call.hung_up_by}"))
    if exp.outcome is not None:
        got = record.outcome if record is not None else None
        out.append(Check(f"call: outcome {exp.outcome}", got == exp.outcome, f"outcome {got}"))
    if exp.transferred_to is not None:
        out.append(Check(f"call: transferred to {exp.transferred_to}",
                         exp.transferred_to in actions.transfers,
                         f"transfers: {actions.transfers or 'none'}"))
    if exp.hung_up_via_api is not None:
        out.append(Check(f"call: hung up via the API = {exp.hung_up_via_api}",
                         (actions.hang_ups > 0) == exp.hung_up_via_api,
                         f"{actions.hang_ups} hang-up request(s)"))
    all_tools = [t for o in observations for t in o.tools]
    if record is not None:  # tool calls outside every turn window still count for the call
        all_tools = [(t.name, t.arguments, t.error) for t in record.tool_calls]
    for tool in exp.tools:
        out.append(Check(f"call: tool {tool.describe()}", _tool_found(tool, all_tools),
                         _tools_shown(all_tools)))
    reached = observations[-1].nodes if observations else []
    for node in exp.nodes:
        out.append(Check(f"call: node {node} reached", node in reached,
                         f"nodes: {', '.join(reached) or 'none'}"))
    if exp.max_latency_ms is not None:
        lats = [t.latency_ms for t in call.turns if t.latency_ms is not None]
        worst = max(lats) if lats else None
        out.append(Check(f"call: every reply within {exp.max_latency_ms:g} ms",
                         worst is not None and worst <= exp.max_latency_ms,
                         "no replies" if worst is None else f"worst {worst:.0f} ms"))
    return out


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


def caller_turns(turns: tuple[TurnSpec, ...]) -> list[CallerTurn]:
    """The caller simulator's turns for a scenario's turns."""
    out = []
    for t in turns:
        wants = t.expect.replied
        if t.say is not None:
            out.append(CallerTurn(text=t.say, expect_reply=wants is not False))
        elif t.dtmf is not None:
            out.append(CallerTurn(dtmf=t.dtmf, expect_reply=bool(wants)))
        else:
            assert t.silence is not None
            out.append(CallerTurn(text="(silence)", audio=np.zeros(int(t.silence * 8000), np.int16),
                                  expect_reply=False, wait_secs=SILENCE_TURN_WAIT_SECS))
    return out


class EvalRunner:
    """Runs eval files; one model service per distinct model, one bot server per scenario."""

    def __init__(self, *, model_url: str | None = None, record_dir: str | Path | None = None,
                 cache_dir: Path | None = None,
                 timeout_secs: float = DEFAULT_SCENARIO_TIMEOUT_SECS,
                 asr: BotSpeechASR | None = None) -> None:
        self.model_url = model_url
        self.record_dir = Path(record_dir) if record_dir else None
        self.cache_dir = cache_dir
        self.timeout_secs = timeout_secs
        self.asr = asr or BotSpeechASR()

    async def run(self, evals: list[EvalFile], progress: Any = None) -> list[ScenarioResult]:
        """Run every scenario of every file in order; ``progress(result)`` after each."""
        results: list[ScenarioResult] = []
        async with ModelServices(self.cache_dir) as models:
            for ev in evals:
                for sc in ev.scenarios:
                    res = await self.run_scenario(ev, sc, models)
                    results.append(res)
                    if progress is not None:
                        progress(res)
        return results

    async def run_scenario(self, ev: EvalFile, sc: Scenario,
                           models: ModelServices) -> ScenarioResult:
        res = ScenarioResult(sc)
        start = time.monotonic()
        try:
            await asyncio.wait_for(self._run(ev, sc, models, res), self.timeout_secs)
        except TimeoutError:
            res.error = f"scenario timed out after {self.timeout_secs:g} s"
        except Exception as e:  # a broken scenario fails itself, not the whole run
            logger.exception(f"eval scenario {sc.name!r} failed")
            res.error = f"{type(e).__name__}: {e}"
        res.secs = time.monotonic() - start
        return res

    async def _run(self, ev: EvalFile, sc: Scenario, models: ModelServices,
                   res: ScenarioResult) -> None:
        from bots.profile import profile_from_flow
        from bots.records.service import CallRecords
        from bots.records.store import CallStore
        from bots.registry import BotRegistry
        from bots.server import create_app
        from bots.twilio.config import TwilioConfig
        from bots.twilio.stream_auth import AUTH_PARAM, StreamAuth
        from model_service.server import serving
        from pipeline.flows.format import load_flow
        from stepcall.settings import Settings

        flow = load_flow(ev.flow)
        profile = profile_from_flow(flow)
        model_url = self.model_url or await models.url(sc.model)
        standin = TwilioStandIn()
        with tempfile.TemporaryDirectory(prefix="stepcall-eval-") as tmp:
            async with serving(standin.app()) as standin_url:
                api_url = standin_url.removesuffix("/v1/session").replace("ws://", "http://")
                settings = Settings(
                    model_url=model_url, flows_dir=str(ev.flow.parent),
                    database_url=f"sqlite:///{tmp}/calls.db", recordings_dir=f"{tmp}/rec",
                    twilio_account_sid=standin.account_sid, twilio_auth_token=standin.auth_token,
                    twilio_api_url=api_url, public_url="http://127.0.0.1",
                )
                twilio = TwilioConfig.from_settings(settings)
                records = CallRecords(CallStore.open(settings.database_url or ""),
                                      settings=settings, recordings_dir=f"{tmp}/rec")
                app = create_app(settings, BotRegistry.single(profile), twilio=twilio,
                                 records=records)
                async with serving(app) as url:
                    await _wait_ready(url.replace("ws://", "http://").replace("/v1/session", "/readyz"))
                    stream = url.replace("/v1/session", "/twilio/stream")
                    identity = StreamIdentity()
                    token = StreamAuth(twilio.stream_key).issue(identity.call_sid, profile.name)
                    record_path = None
                    if self.record_dir is not None:
                        record_path = self.record_dir / f"{_slug(ev.path.stem)}--{_slug(sc.name)}.wav"
                    options = CallOptions(
                        params={"bot": profile.name, AUTH_PARAM: token or ""},
                        identity=identity, record_path=record_path,
                        **{"greeting_wait_secs": 10.0 if profile.bot_speaks_first else 1.0,
                           **sc.caller},
                    )
                    call = await run_call(stream, caller_turns(sc.turns), options)
                    res.call = call
                    record = await _finished_record(records, call.call_sid)
                # the app's lifespan closed the store; the record was read before
            res.outcome = record.outcome if record is not None else None
            labels = ["(greeting)"] + [t.label for t in sc.turns]
            observer = Observer(flow, call, record, standin, self.asr)
            res.turns = observer.observe(labels)
            for err in call.errors:
                res.checks.append(Check("call: protocol", False, err))
            if sc.greeting is not None:
                res.checks += await check_turn("greeting", sc.greeting, res.turns[0], observer)
            for k, t in enumerate(sc.turns, start=1):
                res.checks += await check_turn(f"turn {k}", t.expect, res.turns[k], observer)
            res.checks += check_call(sc.expect, call, record, standin, res.turns)


async def _wait_ready(url: str, secs: float = READY_TIMEOUT_SECS) -> None:
    """Wait for the bot server's ``/readyz`` (its greetings rendered), as a deployment routes
    calls to a server only once it is ready; a server still not ready then is called anyway
    (the greeting checks say what that cost)."""
    import httpx

    deadline = time.monotonic() + secs
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if (await client.get(url)).status_code == 200:
                return
            await asyncio.sleep(0.2)
    logger.warning(f"bot server not ready after {secs:g} s ({url}): calling it anyway")


async def _finished_record(records: Any, call_id: str, secs: float = 10.0) -> Any:
    """The call's record once it is closed (outcome set), or the latest partial one."""
    deadline = time.monotonic() + secs
    record = None
    while time.monotonic() < deadline:
        record = await asyncio.to_thread(records.store.get_call, call_id)
        if record is not None and record.outcome is not None:
            return record
        await asyncio.sleep(0.1)
    return record


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "scenario"
