"""CallRecordObserver: writes a call's record (turns, tool calls, latencies, outcome) as it runs.

A Pipecat observer, so it needs no place in the pipeline: pass it to
``PipelineWorker(observers=[...])``. Everything goes to the store's background writer
(``bots/records/writer.py``), so the call path never waits on the database, and each event is
committed within milliseconds: a server killed mid-call leaves a readable partial record.

What it records, from the frames:

- user turns: ``UserStartedSpeakingFrame`` → ``UserStoppedSpeakingFrame`` (the turn-taking
  strategies' verdicts). Speech-to-speech has no transcript, so the text stays empty;
  ``audio_ms`` is the caller's speech in the turn (Silero VAD segments, the turn's span without
  VAD frames).
- bot turns: ``BotStartedSpeakingFrame`` → ``BotStoppedSpeakingFrame`` with the spoken text
  (``TTSTextFrame``; ``LLMTextFrame`` when a response has no TTS text), ``latency_ms`` = end of
  the caller's speech (VAD stop minus ``stop_secs``) → first bot audio, and ``interrupted`` on
  barge-in (``InterruptionFrame`` while the bot speaks).
- tool calls: ``FunctionCallInProgressFrame`` (name, arguments) → ``FunctionCallResultFrame``
  (result or error) / ``FunctionCallCancelFrame``.
- the outcome: :meth:`set_outcome` when the caller knows it; else ``transferred`` after a
  successful transfer tool or a ``transfer:`` entry in ``call_control.events`` (the
  model-failure policy transfers without a tool), ``error`` after a fatal ``ErrorFrame`` or :meth:`mark_error`,
  ``completed`` on ``EndFrame``, ``caller_hung_up`` on ``CancelFrame`` (the server cancels the
  worker when the caller's stream closes).
- counters from the call's :class:`~pipeline.step_audio2.service.StepAudio2Service` events once
  :meth:`watch_service` got it (``bots.call.CallRunner`` does): holding lines played, caller
  turns retried after a reconnect, caller turns left unanswered.
- optionally a stereo recording (caller left, bot right) when the bot's
  :class:`~bots.records.models.RecordingPolicy` enables it.

The call is closed when an ``EndFrame``/``CancelFrame`` has gone through the whole pipeline, or
by :meth:`finish` (call it after the runner returns; it is idempotent).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_output import BaseOutputTransport

from bots.records.models import (
    CALL_COUNTERS,
    CallRecord,
    RecordingPolicy,
    ToolCallRecord,
    TurnRecord,
    check_outcome,
    utcnow,
)
from bots.records.recording import BOT, CALLER, StereoRecorder
from bots.records.store import CallStore
from pipeline.observers.first_sighting import FirstSighting

#: Tools whose successful result means the caller was handed to a human.
TRANSFER_TOOLS = ("transfer_call",)

_WATCHED = (
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterruptionFrame,
    TTSTextFrame,
    LLMTextFrame,
    TranscriptionFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallCancelFrame,
    ErrorFrame,
    EndFrame,
    CancelFrame,
)


def _tool_failed(result: Any, error: Any) -> bool:
    if error:
        return True
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            return False
    if isinstance(result, dict):
        return bool(result.get("error")) or result.get("status") in ("failed", "error")
    return False


class CallRecordObserver(BaseObserver):
    """Records one call into a :class:`~bots.records.store.CallStore` (and updates metrics).

    ``metrics`` is a :class:`bots.metrics.BotMetrics` (optional). ``recording`` turns on the
    stereo recording; it is written to ``recordings_dir/<call_id>.wav`` when the call ends.
    """

    def __init__(
        self,
        store: CallStore,
        call_id: str,
        *,
        bot: str,
        flow: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        stream_id: str | None = None,
        metrics: Any = None,
        recording: RecordingPolicy | None = None,
        recordings_dir: str | Path = "data/recordings",
        sample_rate: int = 8000,
        transfer_tools: tuple[str, ...] = TRANSFER_TOOLS,
        call_control: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not call_id:
            raise ValueError("CallRecordObserver needs a call_id")
        self.store = store
        self.call_id = call_id
        self.bot = bot
        self.metrics = metrics
        self.recording = recording or RecordingPolicy()
        self.recordings_dir = Path(recordings_dir)
        self.transfer_tools = transfer_tools
        self.call_control = call_control
        self.outcome: str | None = None
        self.error: str | None = None
        self.finished = False
        self._writer = store.writer
        self._log = logger.bind(call_id=call_id)
        self._t0 = time.monotonic()
        self._sightings = FirstSighting(limit=8192)
        self._seq = 0
        self._user: TurnRecord | None = None
        #: Finished caller turns whose transcript has not come yet (oldest first).
        self._untranscribed: deque[TurnRecord] = deque(maxlen=64)
        self._user_started_mono: float | None = None
        self._bot: TurnRecord | None = None
        self._bot_tts: list[str] = []
        self._bot_llm: list[str] = []
        self._bot_speaking = False
        self._vad_start: float | None = None
        self._speech_ms = 0.0
        self._speech_end: float | None = None
        self._tools: dict[str, tuple[ToolCallRecord, float]] = {}
        self._transferred = False
        self._ending: str | None = None
        self._recorder = StereoRecorder(sample_rate) if self.recording.enabled else None
        self._recording_thread: threading.Thread | None = None
        self.record = CallRecord(
            call_id=call_id,
            bot=bot,
            flow=flow,
            stream_id=stream_id,
            from_number=from_number,
            to_number=to_number,
            started_at=utcnow(),
        )
        self._writer.submit("start_call", self.record)
        if metrics is not None:
            metrics.calls_active.inc()

    # -- public --------------------------------------------------------------------------------

    def set_outcome(self, outcome: str, error: str | None = None) -> None:
        """Say how the call ended (wins over what the frames suggest)."""
        self.outcome = check_outcome(outcome)
        if error:
            self.error = error

    def mark_error(self, reason: str) -> None:
        """Note a failure (e.g. the model service was lost): the outcome becomes ``error``
        unless :meth:`set_outcome` says otherwise."""
        self.error = reason

    async def finish(self, outcome: str | None = None) -> None:
        """Close the record: open turns, outcome, end time, recording. Idempotent; a second call
        waits for the recording file to be written."""
        if self.finished:
            if self._recording_thread is not None and self._recording_thread.is_alive():
                await asyncio.to_thread(self._recording_thread.join, 60)
            return
        self.finished = True
        if outcome:
            self.set_outcome(outcome)
        now = utcnow()
        self._close_user_turn(now)
        self._close_bot_turn(now)
        for tool, _ in self._tools.values():
            tool.ended_at = tool.ended_at or now
            tool.error = tool.error or "call ended before the tool returned"
            self._writer.submit("save_tool_call", tool)
        self._tools.clear()
        final = self._final_outcome()
        self.record.outcome, self.record.ended_at, self.record.error = final, now, self.error
        self._writer.submit("end_call", self.call_id, final, now, self.error)
        if self.metrics is not None:
            self.metrics.calls_active.dec()
            self.metrics.calls_total.labels(bot=self.bot, outcome=final).inc()
        self._log.info(f"call record closed: {final}")
        if self._recorder is not None and self._recorder.duration_secs > 0:
            # A plain thread: a cancelled worker (caller hung up) must not cancel the write.
            expires = now + timedelta(days=self.recording.retention_days)
            self._recording_thread = threading.Thread(
                target=self._write_recording, args=(expires,), name="call-recording", daemon=True
            )
            self._recording_thread.start()
            await asyncio.to_thread(self._recording_thread.join, 60)

    def _write_recording(self, expires: datetime) -> None:
        assert self._recorder is not None
        path = self.recordings_dir / f"{_safe_name(self.call_id)}.wav"
        try:
            self._recorder.write_wav(path)
        except OSError as e:
            self._log.error(f"could not write the call recording {path}: {e}")
            return
        self.record.recording_path = str(path)
        self._writer.submit("set_recording", self.call_id, str(path), expires)

    # -- the service's events -----------------------------------------------------------------

    #: Service event → (the record's counter, the metric attribute on ``BotMetrics``).
    SERVICE_COUNTERS = {
        "on_holding_line": ("holding_lines", "holding_lines_total"),
        "on_turn_retried": ("turn_retries", "turn_retries_total"),
        "on_turn_unanswered": ("unanswered_turns", "unanswered_turns_total"),
    }

    def watch_service(self, service: Any) -> None:
        """Count ``service``'s holding lines, retried and unanswered caller turns."""
        for event, (field_name, metric) in self.SERVICE_COUNTERS.items():

            def count(_service: Any, *_args: Any, _field: str = field_name, _m: str = metric):
                self.count(_field, _m)

            service.add_event_handler(event, count)

    def count(self, field_name: str, metric: str | None = None) -> None:
        """Add one to the record's counter ``field_name`` (and the metric ``metric``)."""
        setattr(self.record, field_name, getattr(self.record, field_name) + 1)
        self._writer.submit("set_counters", self.call_id, self._counters())
        if self.metrics is not None and metric is not None:
            getattr(self.metrics, metric).inc()

    def _counters(self) -> dict[str, int]:
        return {name: getattr(self.record, name) for name in CALL_COUNTERS}

    # -- frames --------------------------------------------------------------------------------

    @property
    def wants_audio(self) -> bool:
        """Audio frames matter only when the call's audio is recorded."""
        return self._recorder is not None

    async def on_push_frame(self, data: FramePushed) -> None:
        """Turn frames into record writes."""
        if self.finished:
            return
        frame = data.frame
        if self._recorder is not None and isinstance(
            frame, (InputAudioRawFrame, OutputAudioRawFrame)
        ):
            self._record_audio(data)
            return
        if not isinstance(frame, _WATCHED):
            return
        if isinstance(frame, (EndFrame, CancelFrame)):
            await self._on_end_frame(data)
            return
        if not self._sightings.first(data.frame):
            return
        mono, now = time.monotonic(), utcnow()
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._vad_start = mono - float(frame.start_secs)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            end = mono - float(frame.stop_secs)
            if self._vad_start is not None:
                self._speech_ms += max(0.0, end - self._vad_start) * 1000.0
            self._vad_start = None
            self._speech_end = end
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._on_user_started(mono, now)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._on_user_stopped(mono, now)
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._on_bot_started(mono, now)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._close_bot_turn(now)
        elif isinstance(frame, InterruptionFrame):
            if self._bot_speaking and self._bot is not None and not self._bot.interrupted:
                self._bot.interrupted = True
                self._writer.submit("save_turn", self._bot)
                if self.metrics is not None:
                    self.metrics.bargeins_total.inc()
        elif isinstance(frame, TTSTextFrame):
            spaced = bool(getattr(frame, "includes_inter_frame_spaces", False))
            self._on_bot_text(frame.text, tts=True, spaced=spaced, now=now)
        elif isinstance(frame, TranscriptionFrame):
            self._on_transcript(frame.text)
        elif isinstance(frame, LLMTextFrame):  # LLM tokens carry their own spaces
            self._on_bot_text(frame.text, tts=False, spaced=True, now=now)
        elif isinstance(frame, FunctionCallInProgressFrame):
            tool = ToolCallRecord(
                call_id=self.call_id,
                tool_call_id=frame.tool_call_id,
                name=frame.function_name,
                arguments=frame.arguments,
                started_at=now,
            )
            self._tools[frame.tool_call_id] = (tool, mono)
            self._writer.submit("save_tool_call", tool)
        elif isinstance(frame, FunctionCallResultFrame):
            if getattr(frame, "properties", None) is not None and not getattr(
                frame.properties, "is_final", True
            ):
                return  # intermediate result of an async tool
            error = getattr(frame, "error", None)
            self._on_tool_done(
                frame.tool_call_id,
                frame.function_name,
                frame.arguments,
                frame.result,
                str(error) if error else None,
                mono,
                now,
            )
        elif isinstance(frame, FunctionCallCancelFrame):
            self._on_tool_done(
                frame.tool_call_id, frame.function_name, None, "CANCELLED", "cancelled", mono, now
            )
        elif isinstance(frame, ErrorFrame):
            if self.metrics is not None:
                self.metrics.errors_total.inc()
            if getattr(frame, "fatal", False):
                self.error = str(frame.error)
            self._log.warning(f"call error recorded: {frame.error}")

    # -- helpers -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _on_user_started(self, mono: float, now: datetime) -> None:
        if self._user is not None:
            return
        started = now
        if self._vad_start is not None:  # the turn began when the speech did
            started = now - timedelta(seconds=max(0.0, mono - self._vad_start))
        self._user = TurnRecord(self.call_id, self._next_seq(), "user", started)
        self._user_started_mono = mono
        self._writer.submit("save_turn", self._user)

    def _on_user_stopped(self, mono: float, now: datetime) -> None:
        if self._user is None:
            self._on_user_started(mono, now)
        turn = self._user
        assert turn is not None
        if self._vad_start is not None:  # speech still open (no VAD stop yet)
            self._speech_ms += max(0.0, mono - self._vad_start) * 1000.0
            self._vad_start = mono
        if self._speech_end is None or (
            self._user_started_mono is not None and self._speech_end < self._user_started_mono
        ):
            self._speech_end = mono  # no VAD frames: the turn's end is the speech's end
        turn.ended_at = now - timedelta(seconds=max(0.0, mono - self._speech_end))
        span_ms = (turn.ended_at - turn.started_at).total_seconds() * 1000.0
        turn.audio_ms = round(self._speech_ms, 1) if self._speech_ms > 0 else round(span_ms, 1)
        self._writer.submit("save_turn", turn)
        if self.metrics is not None:
            self.metrics.turns_total.labels(role="user").inc()
        self._user = None
        self._speech_ms = 0.0
        self._untranscribed.append(turn)

    def _on_transcript(self, text: str) -> None:
        """The model service's transcript of a caller turn (they come in turn order)."""
        if not self._untranscribed:
            return
        turn = self._untranscribed.popleft()
        turn.text = text
        self._writer.submit("save_turn", turn)

    def _close_user_turn(self, now: datetime) -> None:
        if self._user is not None:
            self._user.ended_at = now
            self._writer.submit("save_turn", self._user)
            self._user = None

    def _open_bot_turn(self, now: datetime) -> TurnRecord:
        if self._bot is None:
            self._bot = TurnRecord(self.call_id, self._next_seq(), "bot", now)
            self._bot_tts, self._bot_llm = [], []
        return self._bot

    def _on_bot_started(self, mono: float, now: datetime) -> None:
        turn = self._open_bot_turn(now)
        self._bot_speaking = True
        turn.started_at = now
        if self._speech_end is not None:
            latency = mono - self._speech_end
            turn.latency_ms = round(latency * 1000.0, 1)
            self._speech_end = None
            if self.metrics is not None:
                self.metrics.voice_to_voice.observe(latency)
        self._writer.submit("save_turn", turn)

    def _on_bot_text(self, text: str, *, tts: bool, spaced: bool, now: datetime) -> None:
        if not text:
            return
        turn = self._open_bot_turn(now)
        parts = self._bot_tts if tts else self._bot_llm
        parts.append(text if spaced or not parts else " " + text)
        turn.text = "".join(self._bot_tts or self._bot_llm).strip()
        self._writer.submit("save_turn", turn)

    def _close_bot_turn(self, now: datetime) -> None:
        turn = self._bot
        if turn is None:
            return
        turn.ended_at = now
        self._writer.submit("save_turn", turn)
        if self.metrics is not None:
            self.metrics.turns_total.labels(role="bot").inc()
        self._bot = None

    def _on_tool_done(
        self,
        tool_call_id: str,
        name: str,
        arguments: Any,
        result: Any,
        error: str | None,
        mono: float,
        now: datetime,
    ) -> None:
        entry = self._tools.pop(tool_call_id, None)
        if entry is None:  # no in-progress frame seen: record it anyway
            entry = (ToolCallRecord(self.call_id, tool_call_id, name, arguments, now), mono)
        tool, started = entry
        tool.result, tool.ended_at, tool.error = result, now, error
        self._writer.submit("save_tool_call", tool)
        failed = _tool_failed(result, error)
        if name in self.transfer_tools and not failed:
            self._transferred = True
        if self.metrics is not None:
            status = "cancelled" if error == "cancelled" else ("error" if failed else "ok")
            self.metrics.tool_calls_total.labels(tool=name, status=status).inc()
            self.metrics.tool_latency.observe(max(0.0, mono - started))

    def _record_audio(self, data: FramePushed) -> None:
        assert self._recorder is not None
        frame = data.frame
        at = time.monotonic() - self._t0
        if isinstance(frame, InputAudioRawFrame):
            if data.first_push:  # the hop out of the input transport (the caller's line)
                self._recorder.add(CALLER, frame.audio, frame.sample_rate, at)
        elif (
            isinstance(data.source, BaseOutputTransport)
            and data.direction == FrameDirection.DOWNSTREAM
        ):
            self._recorder.add(BOT, frame.audio, frame.sample_rate, at)

    async def _on_end_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if self._ending is None:
            self._ending = "completed" if isinstance(frame, EndFrame) else "caller_hung_up"
        # Closed once the frame has gone through the whole pipeline (the goodbye is done).
        if (
            data.direction == FrameDirection.DOWNSTREAM
            and getattr(data.destination, "next", 1) is None
        ):
            await self.finish()

    def _final_outcome(self) -> str:
        if self.outcome:
            return self.outcome
        events = getattr(self.call_control, "events", None) or []
        if self._transferred or any(str(e).startswith("transfer:") for e in events):
            return "transferred"
        if self.error:
            return "error"
        return self._ending or "caller_hung_up"


def _safe_name(call_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in call_id)[:128]
