"""The bot server runs a bot's YAML flow on a real Twilio-protocol call and keeps its record.

In-process: the model service (reference backend, demo checkpoint) and ``bots.server.create_app``
both served by uvicorn on loopback; the caller is ``harness.callers.run_call`` speaking the Twilio
Media Streams protocol. Nothing of ours is replaced.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bots.profile import profile_from_flow
from bots.records.service import CallRecords
from bots.server import create_app
from harness.callers import CallerTurn, CallOptions, run_call
from model_service.server import create_app as create_model_app
from model_service.server import serving
from pipeline.flows.format import load_flow
from stepcall.settings import Settings

FLOW = """\
bot:
  name: greeter
persona: You are the test hotline.
greeting:
  who_speaks_first: bot
turn_taking:
  min_interrupt_secs: 0.4
  mute_during_greeting: true
recording:
  enabled: true
  retention_days: 2
tools:
  - {name: end_call, kind: builtin}
tools_allowed: [end_call]
initial_node: hello
nodes:
  hello:
    instructions: Greet the caller and ask how you can help.
"""


def test_profile_from_flow_carries_turn_taking_recording_and_the_flow(tmp_path) -> None:
    path = tmp_path / "greeter.yaml"
    path.write_text(FLOW)
    spec = load_flow(path)
    profile = profile_from_flow(spec)
    assert profile.flow is spec and profile.source == str(path)
    assert profile.min_interrupt_secs == 0.4 and profile.mute_during_greeting
    assert profile.record_audio and profile.recording_retention_days == 2
    assert profile.bot_speaks_first


@pytest.fixture(scope="module")
def caller_speech():
    from stepcall.audio.speech import SpeechUnavailableError, synthesize

    def make(text: str):
        try:
            return synthesize(text, 8000)
        except SpeechUnavailableError as e:
            pytest.skip(str(e))

    return make


@pytest.fixture
async def model_url(tmp_path_factory):
    from harness.checkpoints.demo_checkpoint import build_demo_checkpoint
    from model_service.backends.reference import load_reference_backend

    ckpt = build_demo_checkpoint(tmp_path_factory.mktemp("wiring-demo"))
    backend = load_reference_backend(ckpt, "cpu", "float32")
    app = create_model_app(backend, token=None, max_sessions=2)
    async with serving(app) as url:
        yield url, app


def _watch_sessions(model_app, seen: dict[str, set[str]]) -> asyncio.Task:
    """Collect the tool names and conversation texts of live model sessions while a call runs."""

    async def watch() -> None:
        while True:
            for session in list(model_app.state.service.sessions.values()):
                seen["tools"] |= {t["function"]["name"] for t in session.config.tools}
                for m in session.backend_session.conversation.messages:
                    if getattr(m, "text", None):
                        seen["texts"].add(m.text)
            await asyncio.sleep(0.05)

    return asyncio.create_task(watch())


async def test_flow_bot_greets_and_the_call_is_recorded(tmp_path, model_url, caller_speech):
    model_url, model_app = model_url
    seen: dict[str, set[str]] = {"tools": set(), "texts": set()}
    watcher = _watch_sessions(model_app, seen)
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "greeter.yaml").write_text(FLOW)
    settings = Settings(
        model_url=model_url,
        flows_dir=str(flows),
        database_url=f"sqlite:///{tmp_path}/calls.db",
        recordings_dir=str(tmp_path / "rec"),
        dashboard_token="dash-secret",
    )
    app = create_app(settings)
    records: CallRecords = app.state.records
    assert records is not None
    question = caller_speech("Hello, what time do you open tomorrow?")
    async with serving(app) as url:
        base = url.removesuffix("/v1/session")
        stream = "ws" + base.removeprefix("http").removeprefix("ws") + "/twilio/stream"
        result = await run_call(
            stream,
            [CallerTurn(audio=question)],
            CallOptions(greeting_wait_secs=20.0, wait_secs=20.0, from_number="+15550123"),
        )
        assert not result.errors, result.errors
        # the flow runtime entered its initial node: the bot spoke first
        assert result.greeting is not None and result.greeting.replied
        assert result.turns[0].replied
        # bot audio comes in 100 ms media messages (800 bytes of mu-law), a response's last
        # one padded or shorter
        sizes = [n for _, n, _ in result.bot_media]
        assert sizes and sum(n == 800 for n in sizes) >= 0.8 * len(sizes), sizes[:20]
        call_id = result.call_sid
        # the record is closed once the server has seen the hang-up; the recording (written
        # off the event loop after the call) is linked to it a moment later
        record = None
        for _ in range(300):
            record = await asyncio.to_thread(records.store.get_call, call_id)
            if record is not None and record.outcome and record.recording_path:
                break
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=base.replace("ws://", "http://")) as http:
            denied = await http.get("/dashboard")
            page = await http.get(
                "/dashboard", headers={"Authorization": "Bearer dash-secret"}
            )
            metrics = await http.get("/metrics")
    watcher.cancel()
    # the flow runtime ran the call: its node's instructions and tools reached the model
    assert "end_call" in seen["tools"], seen
    assert any("Greet the caller and ask how you can help." in t for t in seen["texts"]), seen
    assert record is not None and record.outcome, record
    assert record.bot == "greeter" and record.flow == str(flows / "greeter.yaml")
    assert record.from_number == "+15550123"
    assert len([t for t in record.turns if t.role == "bot"]) >= 2  # greeting + reply
    assert record.recording_path and (tmp_path / "rec").exists()
    assert denied.status_code in (401, 303, 307)
    assert page.status_code == 200 and call_id in page.text
    assert metrics.status_code == 200 and "stepcall" in metrics.text


def test_records_are_off_for_settings_built_in_code() -> None:
    assert create_app(Settings(flows_dir="/nonexistent")).state.records is None


def test_env_settings_turn_records_on_by_default(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("STEPCALL_DATABASE_URL", raising=False)
    assert Settings.from_env().database_url == "sqlite:///var/calls.db"
    monkeypatch.setenv("STEPCALL_DATABASE_URL", "none")
    assert CallRecords.from_settings(Settings.from_env()) is None
