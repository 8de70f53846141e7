"""CallRecordObserver driven by real Pipecat frames (run_test): one record per outcome,
turns with timings and text, tool calls, latency, metrics and the optional recording."""

from __future__ import annotations

import wave

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    ErrorFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InterruptionFrame,
    LLMTextFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.filters.identity_filter import IdentityFilter
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.text.base_text_aggregator import TextType

from bots.metrics import BotMetrics, add_metrics_route
from bots.records.models import RecordingPolicy
from bots.records.observer import CallRecordObserver
from bots.records.recording import StereoRecorder
from tests.support.metrics import sample


def user_turn(speech_secs: float = 0.3) -> list:
    """A caller turn as the user aggregator reports it (VAD + turn verdicts)."""
    return [
        VADUserStartedSpeakingFrame(start_secs=0.2),
        UserStartedSpeakingFrame(),
        SleepFrame(sleep=speech_secs),
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        UserStoppedSpeakingFrame(),
    ]


def bot_turn(text: str, delay: float = 0.05) -> list:
    """A bot response: text streamed (LLM + TTS text, as StepAudio2Service pushes), then audio."""
    frames: list = [SleepFrame(sleep=delay)]
    for word in text.split(" "):
        frames.append(LLMTextFrame(word + " "))
        tts = TTSTextFrame(word + " ", text_type=TextType.SENTENCE)
        tts.includes_inter_frame_spaces = True
        frames.append(tts)
    frames += [BotStartedSpeakingFrame(), SleepFrame(sleep=0.05), BotStoppedSpeakingFrame()]
    return frames


async def drive(observer, frames, *, end: bool = True) -> None:
    await run_test(
        IdentityFilter(), frames_to_send=frames, observers=[observer], send_end_frame=end
    )


async def test_completed_call_records_turns_text_and_latency(store):
    metrics = BotMetrics()
    obs = CallRecordObserver(
        store,
        "CA-done",
        bot="front_desk",
        from_number="+15550001",
        to_number="+15550002",
        metrics=metrics,
    )
    await drive(obs, [*bot_turn("Hello, how can I help?"), *user_turn(), *bot_turn("Sure thing.")])
    assert obs.finished, "EndFrame through the pipeline must close the record"
    store.writer.flush()
    call = store.get_call("CA-done")
    assert call is not None and call.outcome == "completed" and call.ended_at is not None
    assert call.from_number == "+15550001" and call.bot == "front_desk"
    assert [t.role for t in call.turns] == ["bot", "user", "bot"]
    assert call.turns[0].text == "Hello, how can I help?"  # TTS text, not doubled by LLM text
    assert call.turns[0].latency_ms is None  # bot spoke first
    user = call.turns[1]
    assert user.text is None and user.ended_at > user.started_at
    assert 250 <= user.audio_ms <= 1000  # ~0.3 s of speech + VAD start_secs
    assert call.turns[2].text == "Sure thing."
    assert 0 < call.turns[2].latency_ms < 1000
    app = FastAPI()
    add_metrics_route(app, metrics)
    text = TestClient(app).get("/metrics").text
    assert 'stepcall_calls_total{bot="front_desk",outcome="completed"} 1.0' in text
    assert 'stepcall_turns_total{role="bot"} 2.0' in text
    assert 'stepcall_turns_total{role="user"} 1.0' in text
    assert "stepcall_voice_to_voice_seconds_count 1.0" in text
    assert "stepcall_calls_active 0.0" in text


async def test_transferred_call_records_the_tool_call(store):
    metrics = BotMetrics()
    obs = CallRecordObserver(store, "CA-xfer", bot="front_desk", metrics=metrics)
    args = {"number": "+15557654321"}
    await drive(
        obs,
        [
            *user_turn(),
            FunctionCallInProgressFrame("transfer_call", "tc1", args),
            SleepFrame(sleep=0.02),
            FunctionCallResultFrame(
                "transfer_call", "tc1", args, {"status": "transferring", "to": "+15557654321"}
            ),
            *bot_turn("Transferring you now."),
        ],
    )
    store.writer.flush()
    call = store.get_call("CA-xfer")
    assert call.outcome == "transferred"
    [tool] = call.tool_calls
    assert tool.name == "transfer_call" and tool.arguments == args
    assert tool.result == {"status": "transferring", "to": "+15557654321"}
    assert tool.duration_ms is not None and tool.duration_ms >= 10
    assert sample(metrics, "stepcall_tool_calls_total", tool="transfer_call", status="ok") == 1
    assert sample(metrics, "stepcall_tool_call_seconds_count") == 1


async def test_failed_transfer_is_not_a_transfer(store):
    obs = CallRecordObserver(store, "CA-xfail", bot="b")
    await drive(
        obs,
        [
            FunctionCallInProgressFrame("transfer_call", "t", {}),
            FunctionCallResultFrame("transfer_call", "t", {}, {"status": "failed", "detail": "x"}),
        ],
    )
    store.writer.flush()
    assert store.get_call("CA-xfail").outcome == "completed"


async def test_caller_hang_up_is_a_cancel(store):
    obs = CallRecordObserver(store, "CA-hup", bot="b")
    await drive(obs, [*user_turn(), *bot_turn("Hi."), CancelFrame()], end=False)
    await obs.finish()  # idempotent; the CancelFrame already closed it
    store.writer.flush()
    call = store.get_call("CA-hup")
    assert call.outcome == "caller_hung_up"
    assert [t.role for t in call.turns] == ["user", "bot"]


async def test_error_outcome_and_error_metric(store):
    metrics = BotMetrics()
    obs = CallRecordObserver(store, "CA-err", bot="b", metrics=metrics)
    await drive(obs, [*user_turn(), ErrorFrame("model service lost")])
    obs.mark_error("model service lost")
    await obs.finish()
    store.writer.flush()
    call = store.get_call("CA-err")
    # EndFrame closed it before mark_error: the frames alone said completed.
    assert call.outcome == "completed"
    assert sample(metrics, "stepcall_errors_total") == 1

    obs2 = CallRecordObserver(store, "CA-err2", bot="b", metrics=metrics)
    obs2.mark_error("model service lost")
    await drive(obs2, [*user_turn()])
    store.writer.flush()
    call2 = store.get_call("CA-err2")
    assert call2.outcome == "error" and call2.error == "model service lost"
    assert sample(metrics, "stepcall_calls_total", bot="b", outcome="error") == 1


async def test_set_outcome_wins(store):
    obs = CallRecordObserver(store, "CA-set", bot="b")
    obs.set_outcome("transferred")
    await drive(obs, [*user_turn()])
    store.writer.flush()
    assert store.get_call("CA-set").outcome == "transferred"


async def test_bargein_marks_the_bot_turn(store):
    metrics = BotMetrics()
    obs = CallRecordObserver(store, "CA-barge", bot="b", metrics=metrics)
    frames = [
        *user_turn(),
        LLMTextFrame("A long answer "),
        BotStartedSpeakingFrame(),
        SleepFrame(sleep=0.05),
        InterruptionFrame(),
        BotStoppedSpeakingFrame(),
        *user_turn(),
    ]
    await drive(obs, frames)
    store.writer.flush()
    call = store.get_call("CA-barge")
    bot = [t for t in call.turns if t.role == "bot"]
    assert len(bot) == 1 and bot[0].interrupted and bot[0].text == "A long answer"
    assert sample(metrics, "stepcall_bargeins_total") == 1


def test_unknown_outcome_is_refused(store):
    obs = CallRecordObserver(store, "CA-x", bot="b")
    try:
        obs.set_outcome("exploded")
    except ValueError as e:
        assert "exploded" in str(e)
    else:
        raise AssertionError("set_outcome accepted an unknown outcome")


def test_stereo_recorder_aligns_channels(tmp_path):
    rec = StereoRecorder(8000)
    one = (b"\x10\x00") * 800  # 0.1 s at 8 kHz
    rec.add(0, one, 8000, at_secs=0.1)
    rec.add(1, (b"\x20\x00") * 1600, 16000, at_secs=0.5)  # resampled to 800 samples at 0.4 s
    path = rec.write_wav(tmp_path / "r.wav")
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        assert w.getnframes() == 4000
        import numpy as np

        data = np.frombuffer(w.readframes(4000), dtype=np.int16).reshape(-1, 2)
    assert (data[:800, 0] == 16).all() and (data[800:, 0] == 0).all()
    assert (data[:3200, 1] == 0).all() and (data[3200:, 1] == 32).all()


async def test_recording_policy_writes_a_wav_with_retention(store, tmp_path):
    from pipecat.frames.frames import InputAudioRawFrame
    from pipecat.observers.base_observer import FramePushed
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.transports.base_input import BaseInputTransport
    from pipecat.transports.base_transport import TransportParams

    obs = CallRecordObserver(
        store,
        "CA-rec",
        bot="b",
        recording=RecordingPolicy(enabled=True, retention_days=7),
        recordings_dir=tmp_path / "rec",
    )
    source = BaseInputTransport(TransportParams())
    frame = InputAudioRawFrame(audio=b"\x01\x00" * 160, sample_rate=8000, num_channels=1)
    await obs.on_push_frame(
        FramePushed(source, FrameProcessor(), frame, FrameDirection.DOWNSTREAM, 0)
    )
    await obs.finish("completed")
    store.writer.flush()
    call = store.get_call("CA-rec")
    assert call.recording_path and call.recording_path.endswith("CA-rec.wav")
    days = (call.recording_expires_at - call.ended_at).total_seconds() / 86400
    assert abs(days - 7) < 0.01
    with wave.open(call.recording_path) as w:
        assert w.getnchannels() == 2 and w.getnframes() >= 160
