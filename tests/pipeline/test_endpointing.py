"""End of speech without Silero's lag, and Smart Turn run during the pause.

The VAD tests feed real speech (the caller simulator's voice) and the real Silero model through
``EndpointVADAnalyzer`` in 20 ms buffers, as a phone does, and compare its stop with Pipecat's
own Silero rule on the same audio. The Smart Turn tests run the real Smart Turn v3 model.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer
from pipeline.turn_taking.shared_analyzers import SharedSileroVADAnalyzer
from pipeline.turn_taking.speculative_smart_turn import SpeculativeSmartTurnAnalyzer
from pipeline.turn_taking.speech_energy import SpeechEnergyTracker

RATE = 8000
CHUNK = 160  # 20 ms, a Twilio media message


def voiced_end(pcm: np.ndarray, threshold: float = 300.0) -> float:
    """End (s) of the last 10 ms frame above ``threshold`` RMS: the acoustic end of speech."""
    n = pcm.size // 80
    frames = pcm[: n * 80].astype(np.float32).reshape(n, 80)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > threshold)
    return (int(loud[-1]) + 1) * 80 / RATE


def trimmed(pcm: np.ndarray, threshold: float = 300.0) -> np.ndarray:
    """``pcm`` without its leading and trailing quiet (the voice's own padding)."""
    n = pcm.size // 80
    frames = pcm[: n * 80].astype(np.float32).reshape(n, 80)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > threshold)
    return pcm[int(loud[0]) * 80 : (int(loud[-1]) + 1) * 80]


def tone(secs: float, amplitude: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(secs * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def chunks(pcm: np.ndarray):
    for i in range(0, pcm.size - CHUNK + 1, CHUNK):
        yield (i + CHUNK) / RATE, pcm[i : i + CHUNK].tobytes()


def stop_time(vad, pcm: np.ndarray) -> float | None:
    """When (s into ``pcm``) the analyzer goes from speaking to quiet, fed 20 ms at a time."""
    vad.set_sample_rate(RATE)
    spoke = False
    for t, buf in chunks(pcm):
        state = vad._run_analyzer(buf)
        spoke = spoke or state == VADState.SPEAKING
        if spoke and state == VADState.QUIET:
            return t
    return None


# ------------------------------------------------------------------------ energy tracker
def test_energy_tracker_finds_the_end_of_a_burst_to_the_sub_frame():
    tracker = SpeechEnergyTracker(RATE)
    pcm = np.concatenate([tone(0.5, 8000), np.zeros(int(0.3 * RATE), np.int16)])
    for _, buf in chunks(pcm):
        tracker.update(buf)
    assert abs(tracker.last_loud_end / RATE - 0.5) <= 0.008
    assert tracker.quiet_secs == pytest.approx(0.3, abs=0.01)


def test_energy_tracker_threshold_follows_the_noise_floor_and_the_speech_peak():
    rng = np.random.default_rng(1)
    noise = (rng.normal(0, 100, int(1.0 * RATE))).astype(np.int16)  # ~40 dB
    tracker = SpeechEnergyTracker(RATE)
    for _, buf in chunks(noise):
        tracker.update(buf)
    assert 35 < tracker.noise_db < 45
    assert tracker.last_loud_end == 0  # steady noise is never speech
    assert tracker.threshold_db() == pytest.approx(tracker.noise_db + 10, abs=0.5)
    loud = tone(0.4, 10000) + noise[: int(0.4 * RATE)]
    for _, buf in chunks(loud):
        tracker.update(buf)
    # 30 dB under the loud tone's ~77 dB, or 10 dB over the noise, whichever is higher
    assert tracker.threshold_db() == pytest.approx(max(tracker.noise_db + 10, 77 - 30), abs=1.0)
    # a tail ~20 dB under the peak is still speech; the noise alone again is not
    for _, buf in chunks(tone(0.1, 1000) + noise[:800]):
        tracker.update(buf)
    assert tracker.quiet_secs < 0.01
    for _, buf in chunks(noise[:1600]):
        tracker.update(buf)
    assert tracker.quiet_secs == pytest.approx(0.2, abs=0.01)


def test_energy_tracker_refuses_a_bad_rate():
    with pytest.raises(ValueError, match="sample_rate"):
        SpeechEnergyTracker(0)


# -------------------------------------------------------------------------- endpoint VAD
@pytest.mark.parametrize(
    ("text", "tail"),
    [
        ("What is the weather like in Paris today?", 0.04),
        ("I would like to order a pizza", 0.04),
        # the final "z" fades under 300 RMS for ~100 ms, still speech: counted as such
        ("Yes please.", 0.11),
    ],
)
def test_vad_stops_stop_secs_after_the_acoustic_end(speech, text, tail):
    """Pipecat's Silero rule ends speech ~60-130 ms late; ours stop_secs after the voice."""
    utterance = speech(text)
    pcm = np.concatenate([np.zeros(4000, np.int16), utterance, np.zeros(8000, np.int16)])
    end = 0.5 + voiced_end(utterance)
    params = VADParams(stop_secs=0.2)
    ours = stop_time(EndpointVADAnalyzer(sample_rate=RATE, params=params), pcm)
    pipecat = stop_time(SharedSileroVADAnalyzer(sample_rate=RATE, params=params), pcm)
    assert ours is not None and pipecat is not None
    assert 0.2 - 0.01 <= ours - end <= 0.2 + tail
    assert pipecat - ours >= 0.05


def test_vad_does_not_stop_in_a_pause_shorter_than_stop_secs(speech):
    words = trimmed(speech("I would like to order a pizza"))
    pcm = np.concatenate(
        [np.zeros(4000, np.int16), words, np.zeros(1000, np.int16), words, np.zeros(8000, np.int16)]
    )
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    vad.set_sample_rate(RATE)
    states = [vad._run_analyzer(buf) for _, buf in chunks(pcm)]
    first_speech = states.index(VADState.SPEAKING)
    stops = [
        i
        for i in range(first_speech + 1, len(states))
        if states[i] == VADState.QUIET and states[i - 1] != VADState.QUIET
    ]
    assert len(stops) == 1  # one stop, after the second phrase (125 ms pause bridged)
    assert stops[0] * CHUNK / RATE > 0.5 + (2 * words.size + 1000) / RATE


def test_vad_pause_key_changes_when_speech_resumes(speech):
    words = trimmed(speech("Yes please."))
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.5))
    vad.set_sample_rate(RATE)
    pcm = np.concatenate([np.zeros(2000, np.int16), words, np.zeros(1600, np.int16)])
    for _, buf in chunks(pcm):
        vad._run_analyzer(buf)
    assert vad.state in (VADState.SPEAKING, VADState.STOPPING)
    assert vad.pause_secs == pytest.approx(0.2, abs=0.04)
    key = vad.pause_key
    for _, buf in chunks(np.zeros(800, np.int16)):
        vad._run_analyzer(buf)
    assert vad.pause_key == key  # same pause, longer
    for _, buf in chunks(words):
        vad._run_analyzer(buf)
    assert vad.pause_key != key


def _arrivals(vad, pcm: np.ndarray, paired: bool):
    """(arrival time of each buffer the VAD gets, its state after it): 20 ms phone frames,
    a frame held for its partner while ``vad.steady`` when ``paired`` (as the phone inputs do)."""
    vad.set_sample_rate(RATE)
    out, held = [], None
    for t, buf in chunks(pcm):
        if held is not None:
            buf, held = held + buf, None
        elif paired and vad.steady:
            held = buf
            continue
        out.append((t, len(buf), vad._run_analyzer(buf)))
    return out


@pytest.mark.parametrize("text", ["What is the weather like in Paris today?", "Yes please."])
def test_frames_paired_while_steady_end_speech_at_the_same_moment(speech, text):
    """Pairs go down while nobody speaks and while the caller speaks steadily, never in the
    pause after speech: the VAD's start is at most one frame late, its stop not at all."""
    words = speech(text)
    rng = np.random.default_rng(2)
    hiss = lambda n: rng.normal(0, 15, n).astype(np.int16)  # noqa: E731
    pcm = np.concatenate([hiss(4000), words, hiss(1200), words, hiss(8000)])
    params = VADParams(stop_secs=0.2)
    runs = {
        paired: _arrivals(EndpointVADAnalyzer(sample_rate=RATE, params=params), pcm, paired)
        for paired in (False, True)
    }

    def moments(run, state):
        prev, out = VADState.QUIET, []
        for t, _, s in run:
            if s == state and prev != state:
                out.append(t)
            prev = s
        return out

    alone, paired = runs[False], runs[True]
    assert moments(paired, VADState.QUIET) == moments(alone, VADState.QUIET)  # the stops
    assert len(moments(alone, VADState.QUIET)) >= 1
    starts_alone = moments(alone, VADState.SPEAKING)
    starts_paired = moments(paired, VADState.SPEAKING)
    assert len(starts_alone) == len(starts_paired)
    assert all(0 <= b - a <= 0.02 + 1e-9 for a, b in zip(starts_alone, starts_paired, strict=True))
    speaking_pairs = [n for _, n, s in paired if s == VADState.SPEAKING and n == 4 * CHUNK]
    assert len(paired) < 0.7 * len(alone) and speaking_pairs  # pairs during speech too
    # in the pause after speech (from 30 ms after the acoustic end) nothing waits
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=params)
    vad.set_sample_rate(RATE)
    for _, buf in chunks(np.concatenate([hiss(4000), trimmed(words)])):
        vad._run_analyzer(buf)
    for _, buf in chunks(hiss(480)):
        vad._run_analyzer(buf)
    assert vad.state in (VADState.SPEAKING, VADState.STOPPING) and not vad.steady


# ---------------------------------------------------------------- speculative Smart Turn
async def feed_turn(vad, analyzer, pcm: np.ndarray):
    """Feed ``pcm`` as the user aggregator does (VAD first, then the turn analyzer); at VAD's
    stop return Smart Turn's verdict as the stop strategy would ask for it."""
    vad.set_sample_rate(RATE)
    analyzer.set_sample_rate(RATE)
    speaking = False
    for _, buf in chunks(pcm):
        state = vad._run_analyzer(buf)
        if state == VADState.SPEAKING:
            speaking = True
        elif speaking and state == VADState.QUIET:
            return await analyzer.analyze_end_of_turn()
        analyzer.append_audio(buf, speaking)
    raise AssertionError("VAD never ended speech")


async def test_smart_turn_verdict_comes_from_the_inference_run_during_the_pause(speech):
    utterance = speech("What is the weather like in Paris today?")
    pcm = np.concatenate([np.zeros(4000, np.int16), utterance, np.zeros(8000, np.int16)])
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    analyzer = SpeculativeSmartTurnAnalyzer(vad=vad)
    state, result = await feed_turn(vad, analyzer, pcm)
    assert state == EndOfTurnState.COMPLETE and result is not None and result.is_complete
    assert (analyzer.early_runs, analyzer.early_hits, analyzer.late_runs) == (1, 1, 0)
    assert not analyzer.speech_triggered  # cleared for the next turn, as Pipecat does
    await analyzer.cleanup()


async def test_speech_after_the_early_inference_discards_it(speech):
    """The caller goes on after a pause long enough for an early look: that look is stale."""
    first = trimmed(speech("What is the weather like in Paris today?"))
    more = trimmed(speech("And in London?"))
    gap = np.zeros(int(0.16 * RATE), np.int16)  # > 0.1 s: early look; < 0.2 s: no VAD stop
    pcm = np.concatenate([np.zeros(4000, np.int16), first, gap, more, np.zeros(8000, np.int16)])
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    analyzer = SpeculativeSmartTurnAnalyzer(vad=vad)
    await feed_turn(vad, analyzer, pcm)
    assert analyzer.early_runs == 2  # one in the gap, one after "London"
    assert analyzer.early_hits + analyzer.late_runs == 1
    await analyzer.cleanup()


def test_a_quiet_hold_brings_no_more_pre_speech_audio_to_smart_turn(speech, monkeypatch):
    """A phone input's 200 ms quiet hold arrives as one buffer; Pipecat stamps buffers when they
    come and keeps those stamped within ``pre_speech_ms`` of the speech, so the analyzer splits
    it into 20 ms pieces stamped when their audio ended: the model sees the pre-speech audio it
    would have seen in 20 ms frames (not up to 200 ms more)."""
    from types import SimpleNamespace

    from pipecat.audio.turn.smart_turn import base_smart_turn

    clock = {"t": 100.0}
    fake_time = SimpleNamespace(
        monotonic=lambda: clock["t"], perf_counter=base_smart_turn.time.perf_counter
    )
    monkeypatch.setattr(base_smart_turn, "time", fake_time)
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    analyzer = SpeculativeSmartTurnAnalyzer(vad=vad)
    vad.set_sample_rate(RATE)
    analyzer.set_sample_rate(RATE)
    pre_ms = analyzer.params.pre_speech_ms
    hold = np.zeros(1600, np.int16).tobytes()  # 200 ms
    for _ in range(5):
        clock["t"] += 0.2
        analyzer.append_audio(hold, False)
    assert len(analyzer._audio_buffer) == 50  # 20 ms pieces
    stamps = [t for t, _ in analyzer._audio_buffer[-10:]]
    np.testing.assert_allclose(np.diff(stamps), 0.02)
    assert stamps[-1] == clock["t"]  # the last piece ends when the buffer came
    assert all(chunk.base is not None for _, chunk in analyzer._audio_buffer)  # views, no copy
    clock["t"] += 0.02
    pair = np.zeros(320, np.int16).tobytes()  # a 40 ms pair stays one entry
    analyzer.append_audio(pair, False)
    assert len(analyzer._audio_buffer) == 51 and analyzer._audio_buffer[-1][1].base is pair
    words = trimmed(speech("Hello there."))
    spoken = 0
    for _, buf in chunks(words):
        clock["t"] += 0.02
        analyzer.append_audio(buf, True)
        spoken += len(buf) // 2
    seen: list[int] = []
    real = analyzer._predict_endpoint

    def spy(audio: np.ndarray):
        seen.append(audio.size)
        return real(audio)

    monkeypatch.setattr(analyzer, "_predict_endpoint", spy)
    analyzer._process_speech_segment(list(analyzer._audio_buffer))
    before_speech = seen[0] - spoken
    # the buffers stamped within pre_speech_ms of the first speech buffer's stamp: 20 ms frames
    # would bring pre_speech_ms give or take one frame (the 200 ms buffers as they came: 640 ms)
    assert abs(before_speech - pre_ms / 1000 * RATE) <= 160, before_speech


async def test_incomplete_early_look_is_judged_again_after_vad_stop(speech, monkeypatch):
    utterance = speech("What is the weather like in Paris today?")
    pcm = np.concatenate([np.zeros(4000, np.int16), utterance, np.zeros(8000, np.int16)])
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    analyzer = SpeculativeSmartTurnAnalyzer(vad=vad)
    real = analyzer._predict_endpoint
    verdicts: list[int] = []

    def first_incomplete(audio: np.ndarray):
        out = real(audio)
        out = {**out, "prediction": 0 if not verdicts else out["prediction"]}
        verdicts.append(out["prediction"])
        return out

    monkeypatch.setattr(analyzer, "_predict_endpoint", first_incomplete)
    state, _ = await feed_turn(vad, analyzer, pcm)
    assert verdicts == [0, 1] and state == EndOfTurnState.COMPLETE
    assert (analyzer.early_runs, analyzer.early_hits, analyzer.late_runs) == (1, 0, 1)
    await analyzer.cleanup()


@pytest.mark.parametrize("text", ["What is the weather like in Paris today?", "Yeah."])
@pytest.mark.parametrize("line_noise", [20, 0])
def test_silero_is_not_run_on_windows_too_quiet_for_speech(speech, text, line_noise):
    """Quiet windows skip the model, and the speech after them (a short "yeah" too) is still
    found when Pipecat's VAD finds it."""
    utterance = speech(text)
    rng = np.random.default_rng(3)
    hiss = rng.normal(0, line_noise, int(3.0 * RATE)).astype(np.int16)  # a quiet phone line
    pcm = np.concatenate([hiss, utterance, hiss])
    params = VADParams(stop_secs=0.2)
    ours = EndpointVADAnalyzer(sample_rate=RATE, params=params)
    pipecat = SharedSileroVADAnalyzer(sample_rate=RATE, params=params)
    for vad in (ours, pipecat):
        vad.set_sample_rate(RATE)
    starts = {}
    for t, buf in chunks(pcm):
        for name, vad in (("ours", ours), ("pipecat", pipecat)):
            if vad._run_analyzer(buf) == VADState.SPEAKING and name not in starts:
                starts[name] = t
    windows = ours.scored_windows + ours.skipped_windows
    assert ours.skipped_windows > 0.6 * windows  # the 6 s of hiss, less the volume window's tail
    assert abs(starts["ours"] - starts["pipecat"]) <= 0.02  # same onset as Pipecat's VAD


# ---------------------------------------------------------------- Smart Turn on the model service
def test_segment_is_the_audio_pipecat_gives_its_model(speech, monkeypatch):
    """What the analyzer sends the model service's turn model is exactly what Pipecat's
    ``_process_speech_segment`` passes its own model (as int16), long turns cut to 8 s."""
    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    analyzer = SpeculativeSmartTurnAnalyzer(vad=vad)
    vad.set_sample_rate(RATE)  # never run: no pause, so no early inference either
    analyzer.set_sample_rate(RATE)
    analyzer.update_vad_start_secs(0.2)
    words = trimmed(speech("What is the weather like in Paris today?"))
    seen: list[np.ndarray] = []
    verdict = {"prediction": 0, "probability": 0.0}
    monkeypatch.setattr(analyzer, "_predict_endpoint", lambda a: seen.append(a) or verdict)
    quiet = np.zeros(8000, np.int16)
    for pcm, turns in ((np.concatenate([quiet, words]), 1), (np.tile(words, 5), 2)):
        for _, buf in chunks(pcm):
            analyzer.append_audio(buf, bool(np.abs(np.frombuffer(buf, np.int16)).max() > 300))
        buffer = list(analyzer._audio_buffer)
        analyzer._process_speech_segment(buffer)
        segment = analyzer.segment(buffer)
        assert len(seen) == turns and segment.dtype == np.int16
        np.testing.assert_array_equal(segment.astype(np.float32) / 32768.0, seen[-1])
    assert segment.size == 8 * RATE  # the long turn: its last 8 s
    assert analyzer.segment([]).size == 0


async def _turn_service_client(turn_model):
    """A model-service stand-in running ``turn_model`` and a connected client reading events."""
    from harness.canned_model_service import CannedModelService
    from pipeline.step_audio2.client import ModelServiceClient, SessionStart

    service = CannedModelService(b"\0\0" * 80, turn_model=turn_model)
    serving = service.serving()
    url = await serving.__aenter__()
    client = ModelServiceClient(url)
    await client.connect(SessionStart(input_sample_rate=RATE, output_sample_rate=RATE))

    async def read() -> None:
        async for _ in client.events():
            pass

    reader = asyncio.create_task(read())

    async def close() -> None:
        await client.close()
        await reader
        await serving.__aexit__(None, None, None)

    return service, client, close


async def test_the_model_services_turn_model_judges_the_turn(speech):
    """With a judge (the model service's ``turn.check``), the early inference is the service's:
    the bot runs none, and the verdict and probability are the ones it would have computed."""
    from model_service.turn_checks import TurnModel

    utterance = speech("What is the weather like in Paris today?")
    pcm = np.concatenate([np.zeros(4000, np.int16), utterance, np.zeros(8000, np.int16)])
    model = TurnModel(1)
    service, client, close = await _turn_service_client(model)
    sent: list[tuple[bytes, int]] = []

    async def judge(audio: bytes, rate: int) -> float | None:
        sent.append((audio, rate))
        verdict = await client.check_turn(audio, rate)
        return None if verdict is None else verdict.probability

    try:
        assert client.turn_model == model.name == "smart-turn-v3.2-cpu"
        vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
        remote = SpeculativeSmartTurnAnalyzer(vad=vad, judge=judge)
        state, result = await feed_turn(vad, remote, pcm)
        assert state == EndOfTurnState.COMPLETE and result.is_complete
        assert (remote.early_runs, remote.early_hits, remote.late_runs) == (1, 1, 0)
        assert (remote.judged, remote.local_runs, service.turn_checks, model.checks) == (1, 0, 1, 1)
        # the same turn judged in the bot: the same probability
        vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
        local = SpeculativeSmartTurnAnalyzer(vad=vad)
        seen: list[np.ndarray] = []
        real = local._predict_endpoint
        local._predict_endpoint = lambda a: seen.append(a) or real(a)
        _, local_result = await feed_turn(vad, local, pcm)
        assert local.local_runs == 1 and local.judged == 0
        assert result.probability == local_result.probability
        audio, rate = sent[0]
        assert rate == RATE
        np.testing.assert_array_equal(np.frombuffer(audio, np.int16) / 32768.0, seen[0])
        assert not remote.speech_triggered  # cleared for the next turn
    finally:
        await close()
        model.close()


async def test_without_the_services_verdict_the_bot_judges_the_turn_itself(speech):
    """A service with no turn model (or one that cannot answer): the inference runs here."""
    utterance = speech("What is the weather like in Paris today?")
    pcm = np.concatenate([np.zeros(4000, np.int16), utterance, np.zeros(8000, np.int16)])
    service, client, close = await _turn_service_client(None)
    asked: list[float | None] = []

    async def judge(audio: bytes, rate: int) -> float | None:
        verdict = await client.check_turn(audio, rate)
        asked.append(verdict)
        return None if verdict is None else verdict.probability

    try:
        assert client.turn_model is None
        vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
        analyzer = SpeculativeSmartTurnAnalyzer(vad=vad, judge=judge)
        state, result = await feed_turn(vad, analyzer, pcm)
        assert state == EndOfTurnState.COMPLETE and result.is_complete
        assert asked == [None] and service.turn_checks == 0  # nothing was sent
        assert (analyzer.judged, analyzer.local_runs, analyzer.early_hits) == (0, 1, 1)
    finally:
        await close()
        await analyzer.cleanup()


async def test_a_failing_judge_never_loses_the_turn(speech):
    """A judge that raises (a model-service client bug, a dropped socket mid-send): the
    analyzer logs it and judges the turn itself, early look and all."""
    utterance = speech("What is the weather like in Paris today?")
    pcm = np.concatenate([np.zeros(4000, np.int16), utterance, np.zeros(8000, np.int16)])

    async def judge(audio: bytes, rate: int) -> float | None:
        raise ConnectionError("socket gone")

    vad = EndpointVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.2))
    analyzer = SpeculativeSmartTurnAnalyzer(vad=vad, judge=judge)
    state, result = await feed_turn(vad, analyzer, pcm)
    assert state == EndOfTurnState.COMPLETE and result.is_complete
    assert (analyzer.judged, analyzer.local_runs, analyzer.early_hits) == (0, 1, 1)
    await analyzer.cleanup()
