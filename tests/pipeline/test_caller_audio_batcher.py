"""The phone inputs' batching: quiet holds change nothing the VAD decides, pairs as before.

The VAD is the real ``EndpointVADAnalyzer`` (real Silero) fed what the batcher hands back, the
way the user aggregator gets it; the audio is the caller simulator's real voice on a phone line
with and without noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pipecat.audio.utils import exp_smoothing
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.audio.volume import AudioVolumeTracker

from pipeline.call_audio.batcher import (
    HOLD_SECS,
    MIN_READ_PAUSE_SECS,
    BatchingInput,
    CallerAudioBatcher,
    quiet_hold,
)
from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer
from pipeline.turn_taking.speech_energy import SpeechEnergyTracker

RATE = 8000
FRAME = 160  # 20 ms


def _vad() -> EndpointVADAnalyzer:
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    vad.set_sample_rate(RATE)
    return vad


def _frames(pcm: np.ndarray):
    for i in range(0, pcm.size - FRAME + 1, FRAME):
        yield pcm[i : i + FRAME].tobytes()


def _line(speech, noise_rms: float, seed: int = 5) -> np.ndarray:
    """Two questions and a "yeah" with pauses between, on a line with ``noise_rms`` of hiss."""
    rng = np.random.default_rng(seed)

    def hiss(secs: float) -> np.ndarray:
        return rng.normal(0, noise_rms, int(secs * RATE)).astype(np.int16)

    question = speech("What is the weather like in Paris today?")
    yeah = speech("Yeah.")
    return np.concatenate(
        [hiss(1.5), question, hiss(2.5), yeah, hiss(0.7), question, hiss(3.0)]
    ).astype(np.int16)


def _run(pcm: np.ndarray, *, hold: bool, steady: bool = False):
    """Feed ``pcm`` in 20 ms frames through a batcher into a VAD; returns (the VAD, the
    batcher, [(stream sample at the end of each buffer the VAD got, its length, state)])."""
    vad = _vad()
    batcher = CallerAudioBatcher(
        RATE,
        steady=(lambda: vad.steady) if steady else None,
        quiet=quiet_hold(vad, lambda: True) if hold else None,
    )
    seen, fed = [], 0

    def analyze(out: bytes | None) -> None:
        nonlocal fed
        if out is not None:
            fed += len(out) // 2
            seen.append((fed, len(out) // 2, vad._run_analyzer(out)))

    for frame in _frames(pcm):
        analyze(batcher.offer(frame))
    analyze(batcher.take())  # what still waits at the end
    return vad, batcher, seen


def _changes(seen) -> list[tuple[int, VADState]]:
    """(stream sample, new state) at each change of the VAD's state."""
    out, prev = [], VADState.QUIET
    for at, _, state in seen:
        if state != prev:
            out.append((at, state))
        prev = state
    return out


@pytest.mark.parametrize("noise_rms", [0.0, 12.0, 30.0])
def test_quiet_holds_leave_every_vad_decision_where_it_was(speech, noise_rms):
    """Frame by frame, or with the quiet held back up to 200 ms: the VAD changes state at the
    same samples, scores and skips the same windows and ends in the same model state."""
    pcm = _line(speech, noise_rms)
    alone_vad, _, alone = _run(pcm, hold=False)
    held_vad, batcher, held = _run(pcm, hold=True)
    assert _changes(held) == _changes(alone)
    assert sum(1 for _, s in _changes(alone) if s == VADState.SPEAKING) == 3  # words are heard
    assert (held_vad.scored_windows, held_vad.skipped_windows) == (
        alone_vad.scored_windows,
        alone_vad.skipped_windows,
    )
    assert held_vad._volume.smoothed == alone_vad._volume.smoothed
    assert held_vad.energy.last_loud_end == alone_vad.energy.last_loud_end
    state_a, state_h = alone_vad._model._state, held_vad._model._state
    assert np.array_equal(np.asarray(state_a), np.asarray(state_h))
    # and it did hold: most of the ~8 s of line between the words went down 200 ms at a time
    longest = max(n for _, n, _ in held)
    assert longest == int(HOLD_SECS * RATE)
    assert batcher.quiet_frames > 250
    assert len(held) < 0.6 * len(alone)


def test_the_frame_that_could_be_speech_goes_down_at_once_with_the_held_ones(speech):
    """No start of speech waits: the buffer that makes the VAD leave QUIET ends at the same
    sample with or without holds, and every held frame went down no later than it."""
    pcm = _line(speech, 12.0)
    _, _, alone = _run(pcm, hold=False)
    _, _, held = _run(pcm, hold=True)
    starts = lambda seen: [at for at, _, s in seen if s != VADState.QUIET]  # noqa: E731
    assert starts(held)[0] == starts(alone)[0]
    # before each buffer that leaves QUIET, frames went down held together
    leaving = [i for i in range(1, len(held)) if held[i][2] != VADState.QUIET == held[i - 1][2]]
    assert len(leaving) >= 3
    assert all(any(n > FRAME for _, n, _ in held[max(0, i - 40) : i]) for i in leaving)


def test_stays_quiet_never_lets_a_window_that_passes_min_volume_wait():
    """Soundness against Pipecat's own measurement: whenever the test lets audio wait, every
    window that audio completes has a smoothed volume (Pipecat's ``AudioVolumeTracker``, every
    window measured) under min_volume, and the VAD stays quiet."""
    rng = np.random.default_rng(11)
    vad = _vad()
    tracker, smoothed = AudioVolumeTracker(), 0.0
    window = vad._vad_frames_num_bytes
    stream = b""
    waited = 0
    for trial in range(600):
        kind = trial % 4
        n = FRAME * int(rng.integers(1, 8))
        level = float(10 ** rng.uniform(0, 3.2))  # rms 1 .. ~1600
        if kind == 0:
            x = rng.normal(0, level, n)
        elif kind == 1:  # a tone, where K-weighting gains the most
            f = float(rng.uniform(100, 3900))
            x = level * np.sqrt(2) * np.sin(2 * np.pi * f * np.arange(n) / RATE)
        elif kind == 2:  # clicks
            x = np.zeros(n)
            x[rng.integers(0, n, 3)] = level * 20
        else:
            x = np.zeros(n)
        pcm = np.clip(x, -32768, 32767).astype(np.int16)
        buf = pcm.tobytes()
        ss = float(np.dot(pcm.astype(np.float64), pcm.astype(np.float64)))
        may_wait = vad.stays_quiet(ss, n)
        stream += buf
        while len(stream) >= window:
            tracker.update(stream[:window], RATE)
            smoothed = exp_smoothing(tracker.volume, smoothed, 0.2)
            stream = stream[window:]
            if may_wait:
                assert smoothed < vad.params.min_volume, trial
        vad._run_analyzer(buf)
        if may_wait:
            waited += 1
            assert vad.state == VADState.QUIET
    assert waited > 50  # the test is not vacuous


def test_no_hold_while_the_vad_is_behind_its_input():
    """Audio sent down but not yet analyzed (in the aggregator's queue, or muted) stops holds:
    the VAD's state does not yet say what that audio did."""
    vad = _vad()
    may_wait = quiet_hold(vad, lambda: True)
    silence = bytes(2 * FRAME)
    for _ in range(30):  # 600 ms: the volume window is full
        vad._run_analyzer(silence)
    last = bytes(2 * FRAME)  # another object: sent, not analyzed
    assert may_wait(float(FRAME), FRAME, None) is False  # the VAD analyzed something else
    assert may_wait(float(FRAME), FRAME, last) is False
    vad._run_analyzer(last)
    assert may_wait(float(FRAME), FRAME, last) is True


def test_no_hold_while_a_turn_is_open_or_before_the_volume_window_is_full():
    vad = _vad()
    idle = {"on": True}
    may_wait = quiet_hold(vad, lambda: idle["on"])
    silence = bytes(2 * FRAME)
    last = None
    for _ in range(10):  # 200 ms: Pipecat's volume reads 0 until 400 ms have come
        assert may_wait(float(FRAME), FRAME, last) is False
        last = bytes(bytearray(silence))
        vad._run_analyzer(last)
    for _ in range(20):
        last = bytes(bytearray(silence))
        vad._run_analyzer(last)
    assert may_wait(float(FRAME), FRAME, last) is True
    idle["on"] = False
    assert may_wait(float(FRAME), FRAME, last) is False


def test_batcher_rules_pairs_take_drop_and_counts():
    state = {"steady": True, "quiet": False}
    batcher = CallerAudioBatcher(
        RATE,
        steady=lambda: state["steady"],
        quiet=lambda ss, n, last: state["quiet"] and n <= 4 * FRAME,
        hold_secs=0.06,
    )
    a, b, c = b"\x01\x00" * FRAME, b"\x02\x00" * FRAME, b"\x03\x00" * FRAME
    assert batcher.offer(a) is None and batcher.waiting  # waits for its partner
    assert batcher.offer(b) == a + b  # pair
    state["steady"] = False
    assert batcher.offer(c) is c  # alone, no copy
    state["quiet"] = True
    assert batcher.offer(a) is None and batcher.offer(b) is None
    assert batcher.offer(c) == a + b + c  # 60 ms: the hold is full
    assert batcher.offer(a) is None
    assert batcher.take() is a and batcher.take() is None  # e.g. before a DTMF message
    assert batcher.offer(b) is None
    batcher.drop()
    assert not batcher.waiting and batcher.frames_dropped == 1
    assert batcher.offer(c) is None  # quiet again
    state["quiet"] = False
    assert batcher.offer(a) == c + a  # a frame that may not wait takes the waiting with it
    assert batcher.last_sent == c + a
    assert (batcher.frames_in, batcher.pushes, batcher.frames_coalesced) == (10, 5, 4)
    assert batcher.quiet_frames == 6
    with pytest.raises(ValueError):
        CallerAudioBatcher(0)
    with pytest.raises(ValueError):
        CallerAudioBatcher(RATE, hold_secs=-1)


def test_energy_tracker_is_the_same_however_the_stream_is_cut(speech):
    """What the quiet hold relies on besides the VAD's windows: sub-frame by sub-frame."""
    pcm = _line(speech, 20.0)
    rng = np.random.default_rng(9)
    whole, cut = SpeechEnergyTracker(RATE), SpeechEnergyTracker(RATE)
    raw = pcm.tobytes()
    whole_ends, cut_ends = [], []
    for i in range(0, len(raw), 2 * FRAME):
        whole.update(raw[i : i + 2 * FRAME])
        whole_ends.append((whole.samples, whole.last_loud_end))
    i = 0
    while i < len(raw):
        step = 2 * int(rng.integers(1, 1600))
        cut.update(raw[i : i + step])
        i += step
        cut_ends.append((cut.samples, cut.last_loud_end))
    assert cut.last_loud_end == whole.last_loud_end and cut.noise_db == whole.noise_db
    # at every sample both saw, the same end of the last loud sub-frame
    common = dict(whole_ends)
    matched = [(s, e) for s, e in cut_ends if s in common]
    assert len(matched) > 20 and all(common[s] == e for s, e in matched)


async def test_turn_idle_is_false_while_a_turn_is_open_or_smart_turn_counts_silence(speech):
    """The call's idle test (bots.call.turn_idle): the real gate and Smart Turn stop strategy."""
    from pipecat.frames.frames import UserStartedSpeakingFrame, UserStoppedSpeakingFrame
    from pipecat.processors.frame_processor import FrameDirection

    from bots.call import turn_idle, turn_strategies
    from bots.profile import BotProfile
    from pipeline.call_audio.gate import CallerAudioGate

    vad = _vad()
    strategies = turn_strategies(BotProfile(name="t", smart_turn=True), vad)
    analyzer = strategies.stop[0]._turn_analyzer
    analyzer.set_sample_rate(RATE)
    gate = CallerAudioGate()

    async def swallow(_frame, _direction=FrameDirection.DOWNSTREAM) -> None:
        return None

    gate.push_frame = swallow
    idle = turn_idle(gate, strategies)
    assert idle()
    await gate.process_frame(UserStartedSpeakingFrame(), FrameDirection.DOWNSTREAM)
    assert not idle()  # a turn is open
    await gate.process_frame(UserStoppedSpeakingFrame(), FrameDirection.DOWNSTREAM)
    assert idle()
    # speech Smart Turn heard but no turn started (or one it still times): its stop_secs
    # fallback counts the silence it is given, which a hold would move
    analyzer.append_audio(speech("Yeah.")[:1600].tobytes(), True)
    assert analyzer.speech_triggered and not idle()
    await analyzer.cleanup()
    # a bot without Smart Turn: only the gate counts
    plain = turn_idle(gate, turn_strategies(BotProfile(name="t", smart_turn=False), vad))
    assert plain()


def test_read_pauses_once_per_quiet_hold_while_allowed_until_it_is_full():
    state = {"steady": True, "quiet": True, "limit": math.inf}

    inp = BatchingInput()  # the phone inputs' mixin on its own
    inp._use_batching(
        RATE,
        lambda: state["steady"],
        lambda ss, n, last: state["quiet"],
        0.2,
        0.02,
        pause_reading=lambda: state["limit"],
    )
    batcher = inp.batcher
    assert batcher is not None
    frame = bytes(2 * FRAME)
    assert inp.read_pause_secs() == 0.0  # nothing waits
    assert batcher.offer(frame) is None
    assert batcher.hold_left_secs() == pytest.approx(0.18)
    assert inp.read_pause_secs() == pytest.approx(0.18)  # until the 200 ms hold is full
    inp._count_read_pause(0.18)
    assert batcher.offer(frame) is None
    assert inp.read_pause_secs() == 0.0  # once per hold: the frames read after it fill it
    for _ in range(7):
        assert batcher.offer(frame) is None
    assert batcher.offer(frame) == bytes(20 * FRAME)  # full: one push
    assert batcher.offer(frame) is None  # the next hold may pause again
    assert inp.read_pause_secs() == pytest.approx(0.18)
    state["limit"] = 0.0  # no pause allowed now: read every frame
    assert inp.read_pause_secs() == 0.0
    state["limit"] = 0.16  # a shorter pause allowed (the bot answers: the VAD's start lead)
    assert inp.read_pause_secs() == pytest.approx(0.16)
    state["limit"] = 0.02  # allowed, but under MIN_READ_PAUSE_SECS: not worth a timer
    assert inp.read_pause_secs() == 0.0
    state["limit"] = math.inf
    for _ in range(8):
        batcher.offer(frame)
    assert batcher.hold_left_secs() == pytest.approx(0.02)
    assert inp.read_pause_secs() == 0.0  # under MIN_READ_PAUSE_SECS: not worth a timer
    batcher.take()
    state["quiet"] = False
    assert batcher.offer(frame) is None  # waits for its pair partner: not a quiet hold
    assert batcher.hold_left_secs() == 0.0 and inp.read_pause_secs() == 0.0
    assert (inp.read_pauses, inp.read_paused_secs) == (1, pytest.approx(0.18))
    # a pair partner waiting, then quiet frames: not all of it waits as quiet
    state["quiet"] = True
    assert batcher.offer(frame) is None
    assert batcher.hold_left_secs() == 0.0
    # no quiet test, no pauses
    inp._use_batching(RATE, lambda: True, None, 0.2, 0.02, pause_reading=lambda: math.inf)
    assert inp._may_pause_reading is None
    assert MIN_READ_PAUSE_SECS > 0.02


def _start_time(pcm: np.ndarray, onset: int, *, pause: float | None, hold_secs: float = HOLD_SECS):
    """Frame ``k`` of ``pcm`` can be read at ``(k + 1) * 20 ms``; an input with quiet holds reads
    each frame as it comes, except that after a read pause it takes all that came meanwhile at
    the pause's end (``pause``: the longest pause allowed; None: no pauses). Returns (when the
    VAD started speech, whether the frame holding sample ``onset`` was read late, the input)."""
    vad = _vad()

    inp = BatchingInput()  # the phone inputs' mixin on its own
    limit = None if pause is None else (lambda: pause)
    inp._use_batching(RATE, None, quiet_hold(vad, lambda: True), hold_secs, 0.02, limit)
    batcher = inp.batcher
    assert batcher is not None
    resume, onset_late = 0.0, None
    for k, frame in enumerate(_frames(pcm)):
        came = (k + 1) * FRAME / RATE
        read_at = max(came, resume)
        if k == onset // FRAME:
            onset_late = read_at > came
        out = batcher.offer(frame)
        if out is None:
            secs = inp.read_pause_secs()
            if secs > 0:
                inp._count_read_pause(secs)
                resume = read_at + secs
            continue
        if vad._run_analyzer(out) == VADState.SPEAKING:
            return read_at, onset_late, inp
    raise AssertionError("the VAD never started speech")


def test_a_read_pause_up_to_the_vads_start_lead_never_moves_a_start_of_speech(speech):
    """While the bot answers, the call lets a quiet hold leave the input unread for the VAD's
    ``start_lead_secs`` (0.16 s at 8 kHz) at most. Whenever the caller starts speaking, even
    inside such a pause, the VAD starts speech at the same moment as reading every frame as it
    comes: the barge-in is decided on a frame read live (the VAD needs ~0.3 s of these words).
    The control: a pause of 1.98 s (a 2 s hold) that the words start in does delay the start,
    so the comparison can see a delay."""
    vad = _vad()
    lead = vad.start_lead_secs
    assert lead == pytest.approx(5 * 0.032)
    rng = np.random.default_rng(11)
    words = speech("Stop, I have a question about my order.")
    late_onsets, delayed = 0, 0
    for offset_ms in range(0, 200, 9):  # speech starting anywhere in a hold's cycle
        lead_in = rng.normal(0, 12.0, int((1.2 + offset_ms / 1000) * RATE))
        pcm = np.concatenate([lead_in, words, np.zeros(RATE // 2)]).astype(np.int16)
        onset = lead_in.size + int(np.flatnonzero(np.abs(words) > 100)[0])
        live, _, _ = _start_time(pcm, onset, pause=None)
        paused, onset_late, inp = _start_time(pcm, onset, pause=lead)
        assert paused == pytest.approx(live, abs=1e-9), offset_ms
        assert inp.read_pauses >= 4 and inp.read_paused_secs <= inp.read_pauses * lead + 1e-9
        late_onsets += bool(onset_late)
        long, _, _ = _start_time(pcm, onset, pause=math.inf, hold_secs=2.0)
        delayed += long > live + 1e-9
    assert late_onsets >= 5  # the caller's first words often came inside a pause
    assert delayed >= 10
