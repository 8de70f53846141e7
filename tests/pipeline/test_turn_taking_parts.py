"""Unit tests of the call pipeline's parts: the minimum-duration start strategy, the echo
detector, the per-turn metrics observer and the cached apology."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.turns.types import ProcessFrameResult

from pipeline.call_audio.echo_guard import EchoDetector, EchoReference
from pipeline.observers.turn_metrics import TurnMetricsObserver
from pipeline.step_audio2.apology import FailurePolicy, apology_pcm, warm_apology
from pipeline.turn_taking.min_duration_start import MinDurationUserTurnStartStrategy

RATE = 8000


def audio(secs: float) -> InputAudioRawFrame:
    return InputAudioRawFrame(bytes(int(secs * RATE) * 2), RATE, 1)


# ------------------------------------------------------------------- min-duration strategy
@pytest.fixture
def strategy():
    s = MinDurationUserTurnStartStrategy(min_secs=0.6)
    s.started = 0

    async def on_started(_strategy, _params):
        s.started += 1

    s.add_event_handler("on_user_turn_started", on_started)
    return s


async def test_vad_start_starts_the_turn_when_the_bot_is_silent(strategy):
    result = await strategy.process_frame(VADUserStartedSpeakingFrame(start_secs=0.2))
    assert result == ProcessFrameResult.STOP and strategy.started == 1


async def test_backchannel_while_bot_speaks_is_ignored(strategy):
    await strategy.process_frame(BotStartedSpeakingFrame())
    await strategy.process_frame(VADUserStartedSpeakingFrame(start_secs=0.2))
    for _ in range(10):  # 0.2 + 0.2 s: still under 0.6 s
        await strategy.process_frame(audio(0.02))
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await strategy.process_frame(audio(0.5))  # silence after the VAD stop does not count
    assert strategy.started == 0 and strategy.backchannels == 1


async def test_long_speech_while_bot_speaks_interrupts_after_min_secs(strategy):
    await strategy.process_frame(BotStartedSpeakingFrame())
    await strategy.process_frame(VADUserStartedSpeakingFrame(start_secs=0.2))
    results = [await strategy.process_frame(audio(0.02)) for _ in range(25)]
    assert strategy.started == 1
    assert results.index(ProcessFrameResult.STOP) == 19  # 0.2 + 20 x 0.02 s = 0.6 s


async def test_bot_finishing_while_caller_talks_starts_their_turn(strategy):
    await strategy.process_frame(BotStartedSpeakingFrame())
    await strategy.process_frame(VADUserStartedSpeakingFrame(start_secs=0.2))
    await strategy.process_frame(BotStoppedSpeakingFrame())
    assert strategy.started == 1


def test_negative_min_secs_is_refused():
    with pytest.raises(ValueError, match="min_secs"):
        MinDurationUserTurnStartStrategy(min_secs=-1)


# ---------------------------------------------------------------------------- echo detector
@pytest.fixture(scope="module")
def voices():
    """The bot and the caller speak with different voices, as on a real call.

    With flite they must: flite concatenates recorded units, so two sentences in ONE flite voice
    share sample-identical stretches ("you", "the"), which any echo detector rightly matches.
    """
    from stepcall.audio.speech import available_engines, synthesize

    engine, bot_voice, caller_voice = (
        ("flite", "slt", "rms") if "flite" in available_engines() else (None, None, None)
    )
    bot = synthesize(
        "Thank you for calling the weather line. How may I help you today?",
        RATE,
        engine=engine,
        voice=bot_voice,
    )
    caller = synthesize(
        "I would like to know if it rains in Paris tomorrow.",
        RATE,
        engine=engine,
        voice=caller_voice,
    )
    return bot.astype(np.float32), caller.astype(np.float32)


def played_reference(bot: np.ndarray, t_end: float) -> EchoReference:
    ref = EchoReference(RATE)
    step = 320
    n = bot.size // step * step
    for i in range(0, n, step):  # 40 ms chunks, played back to back ending at t_end
        ref.record(
            bot[i : i + step].astype(np.int16).tobytes(), RATE, t_end - (n - i - step) / RATE
        )
    return ref


def test_echo_of_bot_audio_is_detected_with_its_delay(voices):
    bot, _ = voices
    now = 100.0
    ref = played_reference(bot, now)
    det = EchoDetector(ref, max_delay_secs=0.5, window_secs=0.2)
    delay = int(0.12 * RATE)
    # the microphone's last 200 ms: the bot's audio from 120 ms ago, at -10 dB
    n = bot.size // 320 * 320
    mic = 10 ** (-10 / 20) * bot[n - delay - 1600 : n - delay]
    verdict = det.check(mic, now)
    assert verdict.is_echo and verdict.ncc > 0.9
    assert abs(verdict.delay_ms - 120) < 5


def test_caller_talking_over_the_echo_is_not_echo(voices):
    bot, caller = voices
    now = 100.0
    det = EchoDetector(played_reference(bot, now))
    n = bot.size // 320 * 320
    echo = 10 ** (-10 / 20) * bot[n - 960 - 1600 : n - 960]
    talk = caller[8000:9600]
    assert not det.check(echo + talk, now).is_echo


def test_input_far_louder_than_the_bot_played_is_not_its_echo(voices):
    """A window shaped like the bot's audio but 20 dB louder is the caller, not an echo: a CI
    run once took a loud "yeah" for the (quiet) bot's echo at NCC 0.61 and muted it."""
    bot, _ = voices
    now = 100.0
    det = EchoDetector(played_reference(bot, now))
    n = bot.size // 320 * 320
    delayed = bot[n - 960 - 1600 : n - 960]
    loud = det.check(10.0 * delayed, now)  # +20 dB: no phone amplifies the far end so much
    assert not loud.is_echo
    assert det.check(10 ** (6 / 20) * delayed, now).is_echo  # +6 dB still is
    assert det.check(10 ** (-10 / 20) * delayed, now).is_echo
    strict = EchoDetector(played_reference(bot, now), max_echo_gain_db=0.0)
    assert not strict.check(10 ** (6 / 20) * delayed, now).is_echo


def test_caller_after_the_bot_went_quiet_is_not_echo(voices):
    bot, caller = voices
    now = 100.0
    det = EchoDetector(played_reference(bot[:4000], now - 0.3))  # bot stopped 300 ms ago
    assert det.bot_recently_heard(now)
    assert not det.check(caller[8000:9600], now).is_echo


def test_jittered_chunk_timing_keeps_the_reference_contiguous(voices):
    bot, _ = voices
    ref = EchoReference(RATE)
    step, t = 320, 100.0
    rng = np.random.default_rng(0)
    for i in range(0, 16000, step):  # each push 0-5 ms late, like a busy event loop
        t += step / RATE + rng.uniform(0, 0.005)
        ref.record(bot[i : i + step].astype(np.int16).tobytes(), RATE, t)
    det = EchoDetector(ref)
    mic = 10 ** (-10 / 20) * bot[16000 - 960 - 1600 : 16000 - 960]
    assert det.check(mic, t).ncc > 0.9


def test_no_bot_audio_means_no_echo(voices):
    _, caller = voices
    det = EchoDetector(EchoReference(RATE))
    assert not det.bot_recently_heard(100.0)
    assert not det.check(caller[8000:9600], 100.0).is_echo


# ----------------------------------------------------------------------- metrics observer
async def test_turn_metrics_are_measured_and_logged_with_the_call_id():
    lines: list[tuple[str, str]] = []
    sink = logger.add(
        lambda m: lines.append((m.record["extra"].get("call_id"), m.record["message"]))
    )
    try:
        obs = TurnMetricsObserver("CA-metrics")

        async def push(frame):
            await obs.on_push_frame(FramePushed(None, None, frame, FrameDirection.DOWNSTREAM, 0))

        await push(VADUserStartedSpeakingFrame(start_secs=0.2))
        await push(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        await asyncio.sleep(0.05)
        await push(BotStartedSpeakingFrame())
        await asyncio.sleep(0.02)
        await push(InterruptionFrame())
        await asyncio.sleep(0.01)
        await push(BotStoppedSpeakingFrame())
    finally:
        logger.remove(sink)
    (turn,) = obs.turns
    assert 240 <= turn.response_ms < 400  # 0.2 s stop_secs + 50 ms
    assert 5 <= turn.bargein_stop_ms < 100
    assert any(cid == "CA-metrics" and "first bot audio" in msg for cid, msg in lines)


# ---------------------------------------------------------------------------------- apology
def test_apology_is_speech_and_cached():
    text = "Sorry, one moment please."
    n = warm_apology(RATE, text)
    pcm = apology_pcm(RATE, text)
    assert len(pcm) == n and 0.5 < len(pcm) / 2 / RATE < 5
    assert apology_pcm(RATE, text) is pcm  # synthesized once
    assert np.abs(np.frombuffer(pcm, dtype=np.int16)).max() > 1000


def test_failure_policy_validates():
    with pytest.raises(ValueError, match="action"):
        FailurePolicy("hang")
    with pytest.raises(ValueError, match="transfer_to"):
        FailurePolicy("transfer")
    assert FailurePolicy("transfer", "+15550100").transfer_to == "+15550100"


def test_echo_guard_correlates_every_other_frame_and_silences_the_echo(voices):
    """The guard recomputes the correlation every 40 ms and reuses it for the frame between."""
    import time as _time

    from pipeline.call_audio.echo_guard import EchoGuard

    bot, _ = voices
    frames, delay = 30, int(0.12 * RATE)
    reference = played_reference(bot, _time.monotonic())  # the bot's audio, played until now
    guard = EchoGuard(EchoDetector(reference))
    n = bot.size // 320 * 320
    mic = 10 ** (-10 / 20) * bot[n - delay - frames * 160 : n - delay]  # its echo, 120 ms late
    silenced = []
    for i in range(frames):
        chunk = mic[i * 160 : (i + 1) * 160].astype(np.int16)
        out = guard._filter(InputAudioRawFrame(chunk.tobytes(), RATE, 1))
        silenced.append(not any(out.audio))
    warm = frames - guard._keep // 160 + 1  # frames with a full 200 ms window
    assert guard.checks == (warm + 1) // 2
    assert all(silenced[-6:]), silenced  # the latest windows are the 120 ms echo
    assert guard.frames_silenced == sum(silenced)


def test_echo_guard_lines_a_late_read_frame_up_by_when_it_came(voices):
    """A read pause hands the caller's audio over late: the guard compares it with what the bot
    played before it came (``CallerAudioFrame.captured_at``), not before it was read. An echo
    400 ms behind the bot, read 200 ms late, is silenced; the same frame without its stamp
    would be compared 600 ms back, past ``max_delay_secs``, and pass (the control)."""
    import time as _time

    from pipeline.call_audio.caller_frame import CallerAudioFrame
    from pipeline.call_audio.echo_guard import EchoGuard

    bot, _ = voices
    came = _time.monotonic() - 0.2  # the frame came 200 ms ago; the bot played until then
    n = bot.size // 320 * 320
    delay = int(0.4 * RATE)
    echo = (10 ** (-10 / 20) * bot[n - delay - 1600 : n - delay]).astype(np.int16).tobytes()
    stamped = EchoGuard(EchoDetector(played_reference(bot, came)))
    frame = CallerAudioFrame(audio=echo, sample_rate=RATE, num_channels=1, captured_at=came)
    out = stamped._filter(frame)
    assert not any(out.audio) and stamped.frames_silenced == 1
    assert stamped._last is not None and abs(stamped._last.delay_ms - 400) < 5
    unstamped = EchoGuard(EchoDetector(played_reference(bot, came)))
    out = unstamped._filter(InputAudioRawFrame(echo, RATE, 1))
    assert out.audio == echo and unstamped.frames_silenced == 0
    assert unstamped.detector.max_delay_secs < 0.6


def test_echo_guard_leaves_a_quiet_caller_to_the_bytes_alone(voices):
    """A caller listening in silence (or under the detector's min_rms) costs no correlation,
    and the frames pass as they came; at min_rms the detector looks again."""
    import time as _time

    from pipeline.call_audio.echo_guard import EchoGuard

    bot, _ = voices
    guard = EchoGuard(EchoDetector(played_reference(bot, _time.monotonic())))
    rng = np.random.default_rng(0)
    for level in (0.0, 30.0):
        for _ in range(20):
            chunk = rng.normal(0, level, 160).astype(np.int16) if level else np.zeros(160, np.int16)
            frame = InputAudioRawFrame(chunk.tobytes(), RATE, 1)
            assert guard._filter(frame) is frame
    assert guard.checks == 0 and guard.frames_silenced == 0
    for _ in range(12):  # louder than min_rms: the detector runs (and finds no echo in noise)
        chunk = rng.normal(0, 3 * guard.detector.min_rms, 160).astype(np.int16)
        guard._filter(InputAudioRawFrame(chunk.tobytes(), RATE, 1))
    assert guard.checks > 0


# ------------------------------------------------------------------- BLAS threads
def test_loading_the_turn_models_limits_numpy_blas_to_one_thread():
    """Smart Turn's features use one BLAS product per inference; a second OpenBLAS thread
    would then spin for ~100 ms, ~2 % of a core per call."""
    import threadpoolctl

    from stepcall.audio.inference import SILERO_MODEL, shared_session

    shared_session(SILERO_MODEL)
    blas = threadpoolctl.threadpool_info()
    assert blas and all(lib["num_threads"] == 1 for lib in blas if lib["user_api"] == "blas")


# ------------------------------------------------------------------- bot audio tap
async def test_bot_audio_tap_records_played_audio_and_ends_its_trip():
    from pipecat.frames.frames import OutputAudioRawFrame, TextFrame

    from pipeline.call_audio.echo_guard import BotAudioTap

    pushed: list[object] = []
    tap = BotAudioTap(EchoReference(RATE))

    async def capture(frame, direction=FrameDirection.DOWNSTREAM):
        pushed.append(frame)

    tap.push_frame = capture  # what the tap hands on, without a pipeline around it
    tone = (3000 * np.sin(np.arange(320) / 5)).astype(np.int16).tobytes()
    await tap.process_frame(OutputAudioRawFrame(tone, RATE, 1), FrameDirection.DOWNSTREAM)
    text = TextFrame("hi")
    await tap.process_frame(text, FrameDirection.DOWNSTREAM)
    assert tap.reference.last_played_at is not None  # recorded at play time
    assert pushed == [text]  # audio stops here, everything else passes
    tap.forward_audio = True
    await tap.process_frame(OutputAudioRawFrame(tone, RATE, 1), FrameDirection.DOWNSTREAM)
    assert len(pushed) == 2


async def test_bot_audio_tap_records_on_the_transports_play_clock():
    """A transport that sends audio ahead (Twilio's) says when the caller hears each chunk: the
    echo reference must hold the audio at that time, not at the time it was written."""
    import time

    from pipecat.frames.frames import OutputAudioRawFrame

    from pipeline.call_audio.echo_guard import BotAudioTap

    heard_at = time.monotonic() + 0.3  # the chunk is 300 ms ahead of the caller's playout
    tap = BotAudioTap(EchoReference(RATE), play_clock=lambda: heard_at)
    tone = (3000 * np.sin(np.arange(320) / 5)).astype(np.int16)
    await tap.process_frame(OutputAudioRawFrame(tone.tobytes(), RATE, 1), FrameDirection.DOWNSTREAM)
    assert tap.reference.last_played_at == heard_at
    assert not tap.reference.window(heard_at - 0.04, 0.04).any()  # not playing yet "now"
    assert np.array_equal(tap.reference.window(heard_at, 0.04), tone.astype(np.float32))


def test_echo_delay_is_found_at_full_rate_and_decimated(voices):
    bot, caller = voices
    now = 100.0
    n = bot.size // 320 * 320
    for delay_ms in (37, 120, 301):  # odd sample counts too
        delay = int(delay_ms * RATE / 1000)
        mic = 10 ** (-10 / 20) * bot[n - delay - 1600 : n - delay]
        for factor in (1, 2):
            det = EchoDetector(played_reference(bot, now), decimate=factor)
            verdict = det.check(mic, now)
            assert verdict.is_echo and verdict.ncc > 0.85, (delay_ms, factor, verdict)
            assert abs(verdict.delay_ms - delay_ms) <= 0.5 + 1000 * factor / RATE
        assert not EchoDetector(played_reference(bot, now)).check(caller[8000:9600], now).is_echo
    with pytest.raises(ValueError, match="decimate"):
        EchoDetector(EchoReference(RATE), decimate=0)


class _ConcatReference:
    """The reference as it was kept before the ring (one array, re-concatenated per chunk)."""

    def __init__(self, rate: int, keep_secs: float = 2.0) -> None:
        self.rate, self.keep = rate, int(keep_secs * rate)
        self.buf = np.zeros(0, np.float32)
        self.end: float | None = None

    def record(self, pcm16: bytes, played_at: float) -> None:
        x = np.frombuffer(pcm16, np.int16).astype(np.float32)
        start = played_at - x.size / self.rate
        if self.end is not None:
            gap_secs = start - self.end
            gap = int(round(gap_secs * self.rate))
            if gap >= self.keep:
                self.buf = np.zeros(0, np.float32)
            elif gap_secs > EchoReference.JITTER_SECS:
                self.buf = np.concatenate([self.buf, np.zeros(gap, np.float32)])
        self.buf = np.concatenate([self.buf, x])[-self.keep :]
        self.end = max(played_at, self.end or played_at)

    def window(self, end_time: float, secs: float) -> np.ndarray:
        n = int(round(secs * self.rate))
        out = np.zeros(n, np.float32)
        if self.end is None or self.buf.size == 0:
            return out
        end_idx = self.buf.size - int(round((self.end - end_time) * self.rate))
        lo, hi = end_idx - n, end_idx
        src_lo, src_hi = max(lo, 0), min(hi, self.buf.size)
        if src_hi > src_lo:
            out[src_lo - lo : src_hi - lo] = self.buf[src_lo:src_hi]
        return out


def test_echo_reference_ring_keeps_exactly_what_the_played_audio_was():
    rng = np.random.default_rng(7)
    for trial in range(30):
        ring, oracle = EchoReference(RATE, keep_secs=0.5), _ConcatReference(RATE, 0.5)
        t = 100.0
        for _ in range(40):
            n = int(rng.choice([80, 320, 800, 4000, 6000]))  # chunks shorter and longer than keep
            t += n / RATE + float(rng.choice([0.0, 0.003, 0.05, 0.2, 0.7]))  # jitter or silence
            pcm = (rng.standard_normal(n) * 3000).astype(np.int16).tobytes()
            ring.record(pcm, RATE, t)
            oracle.record(pcm, t)
            for _ in range(3):
                end = t - float(rng.uniform(-0.1, 0.8))
                secs = float(rng.choice([0.2, 0.45, 0.7]))
                assert np.array_equal(ring.window(end, secs), oracle.window(end, secs)), trial
        assert ring.last_played_at == oracle.end
