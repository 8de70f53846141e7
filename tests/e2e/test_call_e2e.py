"""The first real call path, end to end, on loopback.

`stepcall call` (Twilio Media Streams protocol, flite speech at real-time pace)
  → `stepcall serve` (Pipecat: Twilio serializer, Silero VAD + Smart Turn v3, StepAudio2Service)
  → `stepcall model` (reference backend: tiny Step-Audio 2 checkpoint + token2wav)
  → bot audio back as Twilio `media` on the caller's streamSid.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave

import numpy as np
import pytest

from harness.callers import CallerTurn, CallOptions, run_call
from stepcall.audio.mulaw import ulaw_to_pcm16
from stepcall.audio.speech import SpeechUnavailableError, synthesize

pytestmark = pytest.mark.slow


def _speech(text: str) -> np.ndarray:
    try:
        return synthesize(text, rate=8000)
    except SpeechUnavailableError as e:
        pytest.skip(f"no speech engine: {e}")


async def test_call_gets_spoken_reply_on_its_stream(stack, tmp_path):
    audio = _speech("Hello, what time do you open tomorrow morning?")
    record = tmp_path / "call.wav"
    result = await run_call(
        stack.stream_url,
        [CallerTurn(audio=audio)],
        CallOptions(wait_secs=25.0, record_path=record, greeting_wait_secs=0.5),
    )
    assert not result.errors, result.errors
    turn = result.turns[0]
    assert turn.replied, f"no reply\nweb:\n{stack.web.tail()}\nmodel:\n{stack.model.tail()}"
    # the bot's media arrived on OUR stream, and only there
    assert result.stream_sids_seen and set(result.stream_sids_seen) == {result.stream_sid}
    # valid mu-law of non-trivial length: >= 1 s of audio, decodes to non-silent PCM
    bot = bytes(turn.bot_audio)
    assert len(bot) >= 8000, len(bot)
    pcm = ulaw_to_pcm16(bot).astype(np.float64)
    assert np.sqrt(np.mean(pcm**2)) > 100.0
    # the reply began after the caller stopped speaking: the turn came from the speech
    assert turn.first_bot_media_ms > turn.speech_end_ms
    assert 0 < turn.latency_ms < 15000
    # a mark followed the response's audio and was echoed
    assert result.marks, "no Twilio mark after the response"
    with wave.open(str(record)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000


async def test_silent_caller_gets_no_reply(stack):
    """Without speech no turn ends, so the bot never answers: replies are not timer-driven."""
    silence = np.zeros(8000 * 2, dtype=np.int16)
    result = await run_call(
        stack.stream_url,
        [CallerTurn(audio=silence, expect_reply=True)],
        CallOptions(wait_secs=6.0, greeting_wait_secs=0.5),
    )
    assert not result.turns[0].replied
    assert len(result.bot_audio_total) == 0


def test_cli_call_prints_latency(stack, tmp_path):
    out = tmp_path / "cli.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "bots.cli", "call", stack.stream_url, "--say",
         "Can I book a table for two?", "--out", str(out), "--json", "--wait", "25"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["turns"][0]["latency_ms"] > 0
    assert out.exists()
