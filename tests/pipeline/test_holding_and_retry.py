"""No caller turn lost, no silence unexplained: the holding line and the retried turn.

Real call pipeline (``bots.call.build_call``: Silero VAD, the caller-audio gate, the
StepAudio2Service, a real output transport playing at real-time pace) with a caller on the
loopback phone (flite speech). The model service is the canned stand-in (the GPU's place), made
slow (``delay_secs``) or hung on chosen responses (``hang_responses``) so the service's
watchdog drops the connection.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pipecat.frames.frames import TTSAudioRawFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed

from bots.call import watch_service_events
from bots.metrics import BotMetrics, add_metrics_route
from bots.records.dashboard import add_dashboard_routes
from bots.records.observer import CallRecordObserver
from bots.records.store import CallStore
from harness.canned_model_service import CannedModelService
from harness.loopback_phone import LoopbackPhone, Say
from pipeline.step_audio2.apology import apology_pcm
from pipeline.step_audio2.frames import HoldingLineFrame
from pipeline.step_audio2.holding import holding_line_pcm
from pipeline.step_audio2.service import StepAudio2Service
from stepcall.settings import Settings
from tests.pipeline.test_call_pipeline import RATE, CallRun, place_call, profile

ANSWER = "We open at nine."
APOLOGY = "Sorry, we have a technical problem."


def find_all(haystack: np.ndarray, needle: np.ndarray) -> list[int]:
    """Every offset where ``needle`` occurs contiguously in ``haystack``."""
    if haystack.size < needle.size:
        return []
    probe = int(np.flatnonzero(needle)[0])
    found = []
    for off in np.flatnonzero(haystack == needle[probe]):
        start = int(off) - probe
        if start >= 0 and np.array_equal(haystack[start : start + needle.size], needle):
            found.append(start)
    return found


def played(run: CallRun) -> np.ndarray:
    chunks = [x for _, x in run.phone.speaker.chunks]
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


class Events:
    """Counts the service's turn events, as the call record does."""

    NAMES = ("on_holding_line", "on_turn_retried", "on_turn_unanswered")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.NAMES, 0)

    def attach(self, parts: Any) -> None:
        for name in self.NAMES:

            def bump(_service: Any, _name: str = name) -> None:
                self.counts[_name] += 1

            parts.service.add_event_handler(name, bump)


@pytest.fixture(scope="module")
def answer(speech) -> np.ndarray:
    return speech(ANSWER)


@pytest.fixture(scope="module")
def question(speech) -> np.ndarray:
    return speech("Hello, are you open on Saturday?")


class ServiceOutput(BaseObserver):
    """The service's audio bytes and holding-line markers, in the order it pushed them."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Any] = []
        self._seen: set[int] = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        f = data.frame
        if not isinstance(data.source, StepAudio2Service) or f.id in self._seen:
            return
        self._seen.add(f.id)
        if isinstance(f, TTSAudioRawFrame):
            self.items.append(len(f.audio))
        elif isinstance(f, HoldingLineFrame):
            self.items.append("holding")


async def test_slow_model_plays_the_holding_line_then_the_answer(answer, question):
    canned = CannedModelService(answer.tobytes(), text=ANSWER, delay_secs=2.0)
    holding = np.frombuffer(holding_line_pcm(RATE), dtype=np.int16)
    events = Events()
    output = ServiceOutput()
    async with canned.serving() as url:
        run = await place_call(
            url,
            profile(smart_turn=False),
            LoopbackPhone([Say(question, 0.3)]),
            observers=[output],
            prepare=events.attach,
            service_options={"_holding_line_secs": 0.5},
            until=lambda r: bool(find_all(played(r), answer)),
            limit_secs=20.0,
        )
    audio = played(run)
    at_holding, at_answer = find_all(audio, holding), find_all(audio, answer)
    assert at_holding, "the caller never heard the holding line"
    assert at_answer, "the caller never heard the answer"
    # the whole holding line first, then the whole answer: no overlap, nothing cut
    assert at_holding[0] + holding.size <= at_answer[0]
    assert len(at_holding) == 1 and len(at_answer) == 1
    assert events.counts == {"on_holding_line": 1, "on_turn_retried": 0, "on_turn_unanswered": 0}
    assert canned.sessions == 1 and canned.responses == 1  # slow is not lost: no reconnect
    assert not run.parts.service.failed
    # the marker (a Twilio call's `holding-N` mark) right behind the holding line's audio
    k = output.items.index("holding")
    assert sum(output.items[:k]) == holding.size * 2
    assert output.items.count("holding") == 1 and sum(output.items[k + 1 :]) >= answer.size * 2


async def test_fast_model_plays_no_holding_line(answer, question):
    canned = CannedModelService(answer.tobytes(), text=ANSWER)
    holding = np.frombuffer(holding_line_pcm(RATE), dtype=np.int16)
    events = Events()
    async with canned.serving() as url:
        run = await place_call(
            url,
            profile(smart_turn=False),
            LoopbackPhone([Say(question, 0.3)]),
            prepare=events.attach,
            service_options={"_holding_line_secs": 0.5},
            until=lambda r: bool(find_all(played(r), answer)),
        )
    assert not find_all(played(run), holding)
    assert events.counts["on_holding_line"] == 0


def _greeting_then_question(question: np.ndarray) -> LoopbackPhone:
    # the canned greeting is ANSWER (~1.2 s); the caller asks after it
    return LoopbackPhone([Say(question, 2.0, anchor="bot")])


async def test_dropped_connection_keeps_the_turn_and_answers_it_on_the_new_session(
    answer, question
):
    # response 1: the greeting; 2: the caller's question, hung (the watchdog drops the
    # connection); 3: the retry on the new session
    canned = CannedModelService(answer.tobytes(), text=ANSWER, hang_responses={2})
    events = Events()
    async with canned.serving() as url:
        run = await place_call(
            url,
            profile(smart_turn=False, bot_speaks_first=True, greeting="Greet the caller."),
            _greeting_then_question(question),
            prepare=events.attach,
            service_options={
                "_holding_line_secs": 0.0,
                "_response_timeout": 0.6,
                "_first_response_timeout": 3.0,
            },
            until=lambda r: canned.responses >= 3
            and len(find_all(played(r), answer)) >= 2,
            limit_secs=25.0,
        )
    assert canned.sessions == 2, "no reconnect"
    first, second = canned.logs
    # the new session got the turn's audio, all of it, then its commit, then the response
    assert len(first.audio) >= RATE * 2  # >= 0.5 s of caller speech
    assert bytes(second.audio) == bytes(first.audio)
    msgs = second.messages
    last_audio = max(i for i, m in enumerate(msgs) if m == "audio")
    commit = msgs.index("input_audio.commit")
    assert last_audio < commit < msgs.index("response.create")
    # and the conversation so far, before the turn: the instruction and the bot's own words
    texts = [t for _, t in second.texts]
    assert "Greet the caller." in texts
    # the bot's own earlier words come back as its own turn (role assistant)
    assert any(role == "assistant" and ANSWER in t for role, t in second.texts), second.texts
    assert max(i for i, m in enumerate(msgs) if m == "input_text.append") < msgs.index("audio")
    # the caller heard the greeting and then the answer to the question
    assert len(find_all(played(run), answer)) == 2
    assert events.counts == {"on_holding_line": 0, "on_turn_retried": 1, "on_turn_unanswered": 0}
    assert not run.parts.service.failed


async def test_retries_used_up_end_in_the_apology_and_an_unanswered_turn(answer, question):
    # the question hangs on the first session and on the retry
    canned = CannedModelService(answer.tobytes(), text=ANSWER, hang_responses={2, 3})
    apology = np.frombuffer(apology_pcm(RATE, APOLOGY), dtype=np.int16)
    events = Events()
    async with canned.serving() as url:
        run = await place_call(
            url,
            profile(
                smart_turn=False,
                bot_speaks_first=True,
                greeting="Greet the caller.",
                apology=APOLOGY,
            ),
            _greeting_then_question(question),
            prepare=events.attach,
            service_options={
                "_holding_line_secs": 0.0,
                "_response_timeout": 0.6,
                "_first_response_timeout": 0.8,
            },
            until=lambda r: r.ended_by_itself,
            wait_end=True,
            limit_secs=25.0,
        )
    assert canned.sessions == 2 and canned.responses == 3
    assert bytes(canned.logs[1].audio) == bytes(canned.logs[0].audio)  # it was retried
    assert run.parts.service.failed
    assert find_all(played(run), apology), "the caller did not hear the apology"
    assert events.counts == {"on_holding_line": 0, "on_turn_retried": 1, "on_turn_unanswered": 1}


async def test_counters_reach_the_call_record_metrics_and_dashboard(tmp_path, answer, question):
    # the question hangs twice: a holding line (once), a retry, then the turn goes unanswered
    canned = CannedModelService(answer.tobytes(), text=ANSWER, hang_responses={1, 2})
    store = CallStore.open(f"sqlite:///{tmp_path}/calls.db")
    metrics = BotMetrics()
    observer = CallRecordObserver(store, "CA-hold", bot="test", metrics=metrics)
    try:
        async with canned.serving() as url:
            run = await place_call(
                url,
                profile(smart_turn=False, apology=APOLOGY),
                LoopbackPhone([Say(question, 0.3)]),
                prepare=lambda parts: watch_service_events(parts.service, [observer]),
                observers=[observer],
                service_options={"_holding_line_secs": 0.3, "_first_response_timeout": 1.2},
                until=lambda r: r.ended_by_itself,
                wait_end=True,
                limit_secs=25.0,
            )
        await observer.finish()
        assert run.parts.service.failed
        assert store.writer.flush(10.0)
        record = store.get_call("CA-hold")
        assert record is not None
        assert (record.holding_lines, record.turn_retries, record.unanswered_turns) == (1, 1, 1)
        assert store.counter_totals() == {
            "unanswered_turns": 1,
            "holding_lines": 1,
            "turn_retries": 1,
        }

        app = FastAPI()
        add_metrics_route(app, metrics)
        add_dashboard_routes(app, Settings(), store, token="tok")
        client = TestClient(app)
        text = client.get("/metrics").text
        for name in ("unanswered_turns", "holding_lines", "turn_retries"):
            assert re.search(rf"^stepcall_{name}_total 1\.0$", text, re.M), (name, text)
        auth = {"Authorization": "Bearer tok"}
        listing = client.get("/dashboard", headers=auth).text
        for name in ("unanswered_turns", "holding_lines", "turn_retries"):
            assert f"<dd class='total-{name}'>1</dd>" in listing
            assert f"<td class='{name}'>1</td>" in listing
        page = client.get("/dashboard/calls/CA-hold", headers=auth).text
        assert "<dt>Holding lines</dt><dd class='holding_lines'>1</dd>" in page
        assert "<dt>Unanswered turns</dt><dd class='unanswered_turns'>1</dd>" in page
        assert "<dt>Turn retries</dt><dd class='turn_retries'>1</dd>" in page
    finally:
        store.close()


def test_call_runner_hands_the_service_to_counting_observers_and_the_setting_to_it():
    from pipecat.observers.base_observer import BaseObserver

    from bots.call import CallInfo, CallRunner

    class Watcher(BaseObserver):
        def __init__(self) -> None:
            super().__init__()
            self.services: list[Any] = []

        def watch_service(self, service: Any) -> None:
            self.services.append(service)

    watcher = Watcher()
    runner = CallRunner(
        LoopbackPhone(),
        CallInfo("CA-w", "MZ-w"),
        profile(smart_turn=False),
        Settings(model_url="ws://127.0.0.1:9/v1/session", holding_line_secs=0.7),
        observers=[watcher],
    )
    assert watcher.services == [runner.parts.service]
    assert runner.parts.service._holding_line_secs == 0.7
