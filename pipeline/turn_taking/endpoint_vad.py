"""EndpointVADAnalyzer: Silero VAD whose stop timer counts from the acoustic end of speech.

Pipecat's VAD ends speech after ``stop_secs`` of consecutive Silero windows judged silent. Silero
lingers: it still reports speech for ~60–130 ms of the decaying tail after a phrase ends, so the
caller waited ``stop_secs`` plus that lag (measured ~103 ms p50 at 8 kHz) before the bot could
answer. Here the stop timer runs from the end of the last loud sub-frame
(:class:`pipeline.turn_taking.speech_energy.SpeechEnergyTracker`) instead:

    speech stops once Silero has judged at least ``MIN_SILERO_QUIET_WINDOWS`` windows silent
    and the audio has been quiet for ``stop_secs``, or (as before) once Silero has judged
    ``stop_secs`` worth of windows silent (loud noise that Silero knows is not speech).

Windows too quiet to be speech (Pipecat's smoothed ``min_volume`` test, which any speech must
pass anyway) are not given to Silero while nobody speaks: on a call that is about half of the
windows, and Silero was the largest single CPU cost of a call. When a louder sound comes, Silero
first scores the quiet windows it skipped since its last scheduled reset (at most 2 s of them,
back to back, which costs far less than scoring them one by one as they came), so its state is
what continuous scoring would have left.
The volume test itself (BS.1770 loudness of the last 400 ms) is skipped for windows whose plain
energy already rules speech out (:class:`pipeline.turn_taking.vad_loudness.LazyVADVolume`: the same numbers
wherever they are read).

The check runs on every incoming buffer (20 ms on a phone), not only at the end of a 32 ms
Silero window, so the stop is not rounded up to a window boundary. Start detection is Pipecat's,
unchanged. ``pause_key`` and ``pause_secs`` tell a speculative turn model
(:class:`pipeline.turn_taking.speculative_smart_turn.SpeculativeSmartTurnAnalyzer`) when a pause has begun
and whether it is still the same pause.
"""

from __future__ import annotations

import math

from pipecat.audio.utils import audioop
from pipecat.audio.vad.silero import (
    _MODEL_RESET_INTERVAL_SECS,
    _MODEL_RESET_LOW_CONFIDENCE_WINDOWS,
)
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from pipeline.turn_taking.shared_analyzers import SharedSileroVADAnalyzer
from pipeline.turn_taking.speech_energy import SpeechEnergyTracker
from pipeline.turn_taking.vad_loudness import LazyVADVolume

#: Silero must agree (this many consecutive silent windows, 32 ms each) before energy can end speech.
MIN_SILERO_QUIET_WINDOWS = 2
#: Speech counts as steady (frames may be paired) while it was loud within this long: a couple of
#: the energy tracker's 8 ms sub-frames, far under the 0.1 s pause that starts Smart Turn early.
STEADY_LOUD_SECS = 0.03
#: What a speech hold leaves under the pause that acts (``EndpointVADAnalyzer.speech_hold_secs``):
#: two of the energy tracker's 8 ms sub-frames (audio analyzed, not yet measured; rounding).
SPEECH_HOLD_MARGIN_SECS = 0.016


class EndpointVADAnalyzer(SharedSileroVADAnalyzer):
    """Silero VAD (shared session, inline) with an energy-refined end of speech."""

    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None) -> None:
        super().__init__(sample_rate=sample_rate, params=params)
        self._energy: SpeechEnergyTracker | None = None
        self._volume: LazyVADVolume | None = None
        self._resumptions = 0
        self._last_buffer: bytes | None = None
        # windows not given to Silero since its last (scheduled) reset
        self._skipped: list[bytes] = []
        self._reset_due = False
        #: Windows scored by Silero / skipped as too quiet to be speech.
        self.scored_windows = 0
        self.skipped_windows = 0

    def set_params(self, params: VADParams) -> None:
        """Pipecat's parameters; a fresh energy tracker when the sample rate changes."""
        super().set_params(params)
        if self._energy is None or self._energy.sample_rate != self.sample_rate:
            self._energy = SpeechEnergyTracker(self.sample_rate)
        if self._volume is None or self._volume.sample_rate != self.sample_rate:
            self._volume = LazyVADVolume(
                self.sample_rate, self._vad_frames, self._smoothing_factor
            )

    @property
    def energy(self) -> SpeechEnergyTracker:
        """The stream's energy tracker (after the sample rate is known)."""
        if self._energy is None:
            raise RuntimeError("EndpointVADAnalyzer: set_sample_rate() has not run yet")
        return self._energy

    @property
    def state(self) -> VADState:
        """The analyzer's current state."""
        return self._vad_state

    @property
    def quiet(self) -> bool:
        """True while the VAD hears no speech (also before its first audio)."""
        return getattr(self, "_vad_state", VADState.QUIET) == VADState.QUIET

    @property
    def steady(self) -> bool:
        """Whether the caller's next frame may wait one frame time (20 ms) to go down with the
        one after it (``coalesce_while`` of the phone inputs): nobody speaks (a start is then
        seen at most one frame later), or the caller is speaking and was loud within the last
        ``STEADY_LOUD_SECS``: the end of speech, where latency counts, is then at least
        ``stop_secs`` away, and the frames of a pause after speech go down one by one."""
        state = getattr(self, "_vad_state", VADState.QUIET)
        if state == VADState.QUIET:
            return True
        if state == VADState.STOPPING or self._energy is None:
            return False
        return self._energy.quiet_secs < STEADY_LOUD_SECS

    @property
    def start_lead_secs(self) -> float:
        """The least audio after a quiet stretch that can bring the VAD to a start of speech:
        Pipecat's start needs ``start_secs`` worth of consecutive speech windows, the first of
        which ends inside the new audio, so at least ``start windows - 1`` whole windows of it
        (0.16 s at 8 kHz with the default 0.2 s: 6 windows of 32 ms). Audio that waits less
        than this after the VAD last judged the line quiet cannot hold back its start (a
        barge-in), however loud it is."""
        window = getattr(self, "_vad_frames", 0)  # set with the sample rate
        if window <= 0 or not self.sample_rate:
            return 0.0
        return max(0, self._vad_start_frames - 1) * window / self.sample_rate

    def speech_hold_secs(self, act_after_secs: float) -> float:
        """Seconds of the caller's next audio that may wait at the input while the caller speaks
        (0: none), such that nothing that acts on a pause could have acted inside it.

        Only while the VAD hears speech (SPEAKING, not starting or stopping) that was loud within
        ``STEADY_LOUD_SECS``. Whatever that audio holds, the pause after the last loud sub-frame
        cannot reach ``act_after_secs`` (when something acts on a pause: the early Smart Turn
        inference) nor ``stop_secs`` inside it: with ``SPEECH_HOLD_MARGIN_SECS`` to spare, the
        audio that waits is at most ``min(act_after_secs, stop_secs) - quiet so far - margin``.
        Silero's own stop needs ``stop_secs`` of windows after SPEAKING turns to STOPPING. So
        when the audio that waited goes down with the frame after it, at that frame's time, the
        VAD and the turn analyzer act at the same frame as without the wait; the frames in
        between only reach them later (by at most that many seconds), all in one buffer.
        The caller must make sure the VAD has analyzed all audio sent before
        (:meth:`has_analyzed_last`).
        """
        state = getattr(self, "_vad_state", VADState.QUIET)
        if state != VADState.SPEAKING or self._energy is None:
            return 0.0
        quiet = self._energy.quiet_secs
        if quiet >= STEADY_LOUD_SECS:
            return 0.0
        limit = min(act_after_secs, self._params.stop_secs)
        return max(0.0, limit - quiet - SPEECH_HOLD_MARGIN_SECS)

    def stays_quiet(self, sum_squares: float, samples: int) -> bool:
        """True when any audio of ``samples`` samples whose sum of squares is at most
        ``sum_squares``, appended to the stream, leaves the VAD quiet: too quiet for
        ``min_volume`` in every window it completes (:meth:`LazyVADVolume.stays_below`), so
        Silero's verdict cannot matter. The phone inputs may then hold such audio back and send
        it later with what follows (:class:`pipeline.call_audio.batcher.CallerAudioBatcher`):
        no state change of the VAD is missed or moved, as its windows are cut from the byte
        stream, however it is split into buffers. The caller must make sure the VAD has
        analyzed all audio sent before (:meth:`has_analyzed_last`).

        The windows' energy bounds, ``(rms + 1)² n`` each, sum to at most
        ``(√(sum of squares) + √n)²`` over any split of the same audio (Cauchy-Schwarz).
        """
        if self._volume is None or not self.quiet:
            return False
        rest = self._vad_buffer  # the start of the next window, already taken
        n_rest = len(rest) // 2
        if n_rest:
            sum_squares += (audioop.rms(rest, 2) + 1.0) ** 2 * n_rest
        bound = (math.sqrt(sum_squares) + math.sqrt(samples + n_rest)) ** 2
        return self._volume.stays_below(self._params.min_volume, bound)

    @property
    def pause_key(self) -> tuple[int, int]:
        """Identifies the current pause: changes when speech resumes, in Silero or in energy."""
        return self._resumptions, self.energy.last_loud_end

    @property
    def pause_secs(self) -> float:
        """Seconds of quiet audio since the caller's speech (0 when no speech is under way)."""
        if self._vad_state not in (VADState.SPEAKING, VADState.STOPPING):
            return 0.0
        return self.energy.quiet_secs

    def has_analyzed_last(self, buffer: bytes | None) -> bool:
        """True when ``buffer`` (the very object) is the last audio analyzed (None: no audio
        yet): the VAD is not behind its input (frames in the user aggregator's queue, or
        dropped while the caller is muted)."""
        return buffer is self._last_buffer

    def _run_analyzer(self, buffer: bytes) -> VADState:
        """Pipecat's state machine, with the stop decided by :meth:`_speech_ended`."""
        self._last_buffer = buffer
        self.energy.update(buffer)
        self._vad_buffer += buffer
        need = self._vad_frames_num_bytes
        while len(self._vad_buffer) >= need:
            window = self._vad_buffer[:need]
            self._vad_buffer = self._vad_buffer[need:]
            self._volume.push(window)
            quiet = self._vad_state == VADState.QUIET
            if quiet and self._volume.certainly_below(self._params.min_volume):
                loud_enough = False  # not even measured (pipeline.turn_taking.vad_loudness)
            else:
                loud_enough = self._volume.volume() >= self._params.min_volume
            if not loud_enough and quiet:
                # not speech whatever Silero says: skip the model (~half of a call's windows)
                self._skip(window)
                self._step(False)
                continue
            if self._skipped:
                self._catch_up()
            confidence = self.voice_confidence(window)
            self.scored_windows += 1
            self._step(confidence >= self._params.confidence and loud_enough)
        if (
            self._vad_state == VADState.STARTING
            and self._vad_starting_count >= self._vad_start_frames
        ):
            self._vad_state = VADState.SPEAKING
            self._vad_starting_count = 0
        if self._vad_state == VADState.STOPPING and self._speech_ended():
            self._vad_state = VADState.QUIET
            self._vad_stopping_count = 0
        return self._vad_state

    def _step(self, speaking: bool) -> None:
        """One Silero window through Pipecat's QUIET/STARTING/SPEAKING/STOPPING machine."""
        state = self._vad_state
        if speaking:
            if state == VADState.QUIET:
                self._vad_state = VADState.STARTING
                self._vad_starting_count = 1
            elif state == VADState.STARTING:
                self._vad_starting_count += 1
            elif state == VADState.STOPPING:
                self._vad_state = VADState.SPEAKING
                self._vad_stopping_count = 0
                self._resumptions += 1
        elif state == VADState.STARTING:
            self._vad_state = VADState.QUIET
            self._vad_starting_count = 0
        elif state == VADState.SPEAKING:
            self._vad_state = VADState.STOPPING
            self._vad_stopping_count = 1
        elif state == VADState.STOPPING:
            self._vad_stopping_count += 1

    def _skip(self, window: bytes) -> None:
        """Keep a quiet window for later instead of scoring it now.

        Pipecat's Silero resets its recurrent state every ``_MODEL_RESET_INTERVAL_SECS`` of
        clear non-speech; the same schedule runs here over the skipped windows (taken as clear
        non-speech: too quiet to pass ``min_volume``), so only the windows since the last such
        reset are kept.
        """
        self._skipped.append(window)
        self.skipped_windows += 1
        self._windows_since_reset += 1
        self._low_confidence_windows += 1
        due = self._windows_since_reset * self._vad_frames >= (
            _MODEL_RESET_INTERVAL_SECS * self.sample_rate
        )
        if due and self._low_confidence_windows >= _MODEL_RESET_LOW_CONFIDENCE_WINDOWS:
            self._skipped.clear()
            self._reset_due = True
            self._windows_since_reset = 0

    def _catch_up(self) -> None:
        """Score the skipped windows before a louder sound (results unused), so Silero's state
        is the one continuous scoring would have left: a state that never saw them, or one
        reset just before the sound, misses short words like "yeah" that Pipecat's VAD finds."""
        if self._reset_due:
            self._model.reset_states()
            self._reset_due = False
        for window in self._skipped:
            self.advance_model(window)
        self._skipped.clear()

    def _speech_ended(self) -> bool:
        if self._vad_stopping_count >= self._vad_stop_frames:
            return True
        return (
            self._vad_stopping_count >= MIN_SILERO_QUIET_WINDOWS
            and self.energy.quiet_secs >= self._params.stop_secs
        )
