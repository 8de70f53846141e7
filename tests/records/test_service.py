"""CallRecords wiring: a bot-server-like app with /metrics and the dashboard, one simulated call
through the observer it hands out (real Pipecat frames), and the recording purge task."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterruptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.filters.identity_filter import IdentityFilter
from pipecat.tests.utils import SleepFrame, run_test

from bots.call import CallInfo
from bots.profile import BotProfile
from bots.records.models import CallRecord, RecordingPolicy, utcnow
from bots.records.service import CallRecords
from pipeline.flows.call_control import CallControl, TransferResult


@dataclass
class _Settings:
    """Settings as the lead will extend them (fields not in stepcall.settings.Settings yet)."""

    database_url: str
    dashboard_token: str = "tok"
    recordings_dir: str = "rec"


class RecordingOnlyControl(CallControl):
    """A CallControl whose transfer succeeds locally (the Twilio edge is out of scope here)."""

    async def hang_up(self, reason: str = "completed") -> None:
        self.events.append(f"hang_up:{reason}")

    async def transfer(self, to: str, *, warm: bool = False, whisper=None) -> TransferResult:
        self.events.append(f"transfer:cold:{to}")
        return TransferResult(True)


async def test_simulated_call_shows_in_metrics_and_dashboard(tmp_path):
    settings = _Settings(f"sqlite:///{tmp_path}/calls.db", recordings_dir=str(tmp_path / "rec"))
    records = CallRecords.from_settings(settings)
    app = FastAPI()
    records.mount(app)
    call = CallInfo("CA-sim", "MZ1", from_number="+15550100", to_number="+15550199")
    profile = BotProfile(name="front_desk", source="flows/front_desk.yaml")
    observer = records.observer(call, profile)
    frames = [
        VADUserStartedSpeakingFrame(start_secs=0.2),
        UserStartedSpeakingFrame(),
        SleepFrame(sleep=0.2),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        UserStoppedSpeakingFrame(),
        TTSTextFrame("Good morning, front desk.", text_type="sentence"),
        BotStartedSpeakingFrame(),
        SleepFrame(sleep=0.05),
        VADUserStartedSpeakingFrame(start_secs=0.2),
        UserStartedSpeakingFrame(),
        InterruptionFrame(),
        BotStoppedSpeakingFrame(),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        UserStoppedSpeakingFrame(),
    ]
    try:
        await run_test(IdentityFilter(), frames_to_send=frames, observers=[observer])
        await observer.finish()
        assert records.store.writer.flush()
        client = TestClient(app)
        metrics = client.get("/metrics").text
        assert 'stepcall_calls_total{bot="front_desk",outcome="completed"} 1.0' in metrics
        assert 'stepcall_turns_total{role="user"} 2.0' in metrics
        assert 'stepcall_turns_total{role="bot"} 1.0' in metrics
        assert "stepcall_bargeins_total 1.0" in metrics
        assert "stepcall_voice_to_voice_seconds_count 1.0" in metrics
        assert "stepcall_calls_active 0.0" in metrics
        page = client.get("/dashboard/calls/CA-sim?token=tok").text
        assert "Good morning, front desk." in page and "interrupted" in page
        stored = records.store.get_call("CA-sim")
        assert stored.flow == "flows/front_desk.yaml" and stored.stream_id == "MZ1"
        assert stored.recording_path is None  # recording is off by default
    finally:
        await records.aclose()


async def test_failure_policy_transfer_counts_as_transferred(tmp_path):
    records = CallRecords.from_settings(_Settings(f"sqlite:///{tmp_path}/c.db"))
    control = RecordingOnlyControl("CA-t")
    observer = records.observer(CallInfo("CA-t", "MZ"), BotProfile(), call_control=control)
    try:
        await control.transfer("+15550123")  # what the model-failure policy does, no tool
        await observer.finish()
        records.store.writer.flush()
        assert records.store.get_call("CA-t").outcome == "transferred"
    finally:
        await records.aclose()


async def test_recording_flow_setting_and_purge_task(tmp_path):
    records = CallRecords.from_settings(
        _Settings(f"sqlite:///{tmp_path}/c.db", recordings_dir=str(tmp_path / "rec"))
    )
    profile = BotProfile(name="pizza")
    profile.record_audio = True  # the flow setting (see RecordingPolicy.from_profile)
    profile.recording_retention_days = 2
    assert RecordingPolicy.from_profile(profile) == RecordingPolicy(True, 2.0)
    assert RecordingPolicy.from_profile(BotProfile()).enabled is False
    old = tmp_path / "rec" / "old.wav"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"RIFF")
    records.store.start_call(CallRecord("old", "pizza", utcnow() - timedelta(days=3)))
    records.store.set_recording("old", str(old), utcnow() - timedelta(days=1))
    try:
        task = records.start_purge_task(interval_secs=3600)
        for _ in range(100):
            if not old.exists():
                break
            await asyncio.sleep(0.02)
        assert not old.exists() and not task.done()
    finally:
        await records.aclose()
    assert records._purge_task is None


def test_records_can_be_turned_off():
    assert CallRecords.from_settings(_Settings("none")) is None


async def test_recorded_call_marks_a_failed_call_and_always_closes_its_record(tmp_path):
    import pytest

    from bots.records.service import recorded_call

    records = CallRecords.from_settings(_Settings(f"sqlite:///{tmp_path}/calls.db"))
    ok = records.observer(CallInfo("CA-ok", "MZ1"), BotProfile(name="front_desk"))
    async with recorded_call(ok):
        pass
    failed = records.observer(CallInfo("CA-bad", "MZ2"), BotProfile(name="front_desk"))
    with pytest.raises(RuntimeError, match="pipeline broke"):
        async with recorded_call(failed):
            raise RuntimeError("pipeline broke")
    async with recorded_call(None):  # no call records: nothing to do
        pass
    assert records.store.writer.flush()
    assert records.store.get_call("CA-ok").outcome is not None
    bad = records.store.get_call("CA-bad")
    assert bad.outcome == "error" and "pipeline broke" in (bad.error or "")
    await records.aclose()
