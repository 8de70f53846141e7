"""The VAD's volume measured only where it can matter: Pipecat's numbers wherever they are read."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.audio.utils import calculate_audio_volume, exp_smoothing
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.audio.volume import AudioVolumeTracker

from pipeline.turn_taking import vad_loudness as vad_volume
from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer
from pipeline.turn_taking.vad_loudness import K_WEIGHTING_MAX_GAIN, MAX_DEFERRED, LazyVADVolume

MIN_VOLUME = VADParams().min_volume


def _windows(pcm: np.ndarray, size: int):
    for i in range(0, pcm.size - size + 1, size):
        yield pcm[i : i + size].tobytes()


def _call_audio(speech, rate: int, rng) -> np.ndarray:
    """Quiet line, speech, silence longer than the catch-up, hiss near the threshold, speech."""
    utterance = speech("Yes, I would like to book a table for two.")
    if rate != 8000:
        utterance = np.repeat(utterance, rate // 8000)
    n = lambda secs: int(secs * rate)  # noqa: E731
    return np.concatenate(
        [
            rng.normal(0, 20, n(1.0)).astype(np.int16),
            utterance,
            np.zeros(n(3.0), dtype=np.int16),  # > MAX_DEFERRED windows of digital silence
            utterance[: n(0.3)],
            rng.normal(0, 60, n(1.5)).astype(np.int16),  # louder hiss: the bound cannot tell
            rng.normal(0, 8, n(1.0)).astype(np.int16),
            utterance,
        ]
    )


@pytest.mark.parametrize("rate, window", [(8000, 256), (16000, 512)])
def test_every_volume_read_is_pipecats_and_every_skip_is_below(speech, rate, window):
    rng = np.random.default_rng(5)
    tracker, smoothed = AudioVolumeTracker(), 0.0
    lazy = LazyVADVolume(rate, window)
    exact_reads = skips = 0
    worst = 0.0
    for k, win in enumerate(_windows(_call_audio(speech, rate, rng), window)):
        tracker.update(win, rate)  # Pipecat: measure and smooth every window
        smoothed = exp_smoothing(tracker.volume, smoothed, 0.2)
        lazy.push(win)
        if lazy.certainly_below(MIN_VOLUME):
            assert smoothed < MIN_VOLUME, k
            skips += 1
            continue
        got = lazy.volume()
        exact_reads += 1
        worst = max(worst, abs(got - smoothed))
    assert skips > 0.3 * (skips + exact_reads)  # the silences go unmeasured
    assert lazy.deferred_total == skips and lazy.measured == exact_reads
    assert worst <= 0.8**MAX_DEFERRED  # exact but after the 3 s silence


def test_catch_up_within_the_limit_is_bit_exact(speech):
    utterance = speech("Thanks.")
    pcm = np.concatenate([utterance, np.zeros(int(1.5 * 8000), dtype=np.int16), utterance])
    tracker, smoothed, lazy = AudioVolumeTracker(), 0.0, LazyVADVolume(8000, 256)
    pending = 0
    for win in _windows(pcm, 256):
        tracker.update(win, 8000)
        smoothed = exp_smoothing(tracker.volume, smoothed, 0.2)
        lazy.push(win)
        if lazy.certainly_below(MIN_VOLUME):
            pending += 1
            continue
        assert pending <= MAX_DEFERRED
        assert lazy.volume() == smoothed  # the same floats, not merely close
        pending = 0
    assert lazy.deferred_total > 20


@pytest.mark.parametrize("rate", [8000, 16000])
def test_k_weighting_gain_bound_holds(rate):
    """Loudness of any 400 ms block never exceeds its plain energy times the bound."""
    rng = np.random.default_rng(7)
    n = int(0.4 * rate)
    t = np.arange(n) / rate
    blocks = [np.sin(2 * np.pi * f * t) * 0.2 for f in np.linspace(10, rate / 2 - 10, 200)]
    blocks += [rng.normal(0, rng.uniform(0.001, 0.3), n) for _ in range(100)]
    blocks += [np.cumsum(rng.normal(0, 0.01, n)) + rng.uniform(-0.3, 0.3) for _ in range(100)]
    for x in blocks:
        pcm = np.clip(x * 32768, -32768, 32767).astype(np.int16)
        mean_square = float(np.mean((pcm / 32768.0) ** 2))
        lufs = -0.691 + 10 * np.log10(K_WEIGHTING_MAX_GAIN * mean_square)
        bound = min(1.0, max(0.0, (lufs + 110) / 100))
        assert calculate_audio_volume(pcm.tobytes(), rate) <= bound


def test_endpoint_vad_states_are_the_same_as_measuring_every_window(speech, monkeypatch):
    rng = np.random.default_rng(9)
    pcm = _call_audio(speech, 8000, rng)
    runs = {}
    for lazy in (True, False):
        if not lazy:
            monkeypatch.setattr(vad_volume.LazyVADVolume, "certainly_below", lambda *a: False)
        vad = EndpointVADAnalyzer(sample_rate=8000, params=VADParams(stop_secs=0.2))
        vad.set_sample_rate(8000)
        states = [vad._run_analyzer(buf) for buf in _windows(pcm, 160)]
        runs[lazy] = (states, vad.scored_windows, vad._volume.deferred_total)
    assert runs[True][0] == runs[False][0]
    assert VADState.SPEAKING in runs[True][0]
    assert runs[True][1] == runs[False][1]  # Silero scored the same windows
    assert runs[True][2] > 100 and runs[False][2] == 0


def test_bad_stream_is_refused():
    with pytest.raises(ValueError, match="bad stream"):
        LazyVADVolume(0, 256)
    with pytest.raises(ValueError, match="bad stream"):
        LazyVADVolume(8000, 0)
