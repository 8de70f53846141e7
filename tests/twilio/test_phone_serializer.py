"""PhoneSerializer decodes caller audio exactly as Pipecat's Twilio serializer does, faster."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame, StartFrame
from pipecat.serializers.twilio import TwilioFrameSerializer

from bots.twilio.serializer import CallerAudioFrame, PhoneSerializer
from harness.callers.twilio_messages import StreamIdentity, TwilioMessageBuilder
from stepcall.audio.mulaw import pcm16_to_ulaw


async def _pair(rate: int) -> tuple[PhoneSerializer, TwilioFrameSerializer]:
    out = []
    for cls in (PhoneSerializer, TwilioFrameSerializer):
        ser = cls(stream_sid="MZ1", params=cls.InputParams(auto_hang_up=False))
        await ser.setup(StartFrame(audio_in_sample_rate=rate, audio_out_sample_rate=rate))
        out.append(ser)
    return out[0], out[1]


async def test_caller_audio_at_8k_is_the_same_pcm_in_a_cheaply_printed_frame() -> None:
    ours, pipecat = await _pair(8000)
    b = TwilioMessageBuilder(StreamIdentity())
    rng = np.random.default_rng(1)
    for k in range(20):
        pcm = (rng.standard_normal(160) * 4000).astype(np.int16)
        text = json.dumps(b.media(k, k * 20, pcm16_to_ulaw(pcm)))
        mine, theirs = await ours.deserialize(text), await pipecat.deserialize(text)
        assert isinstance(mine, CallerAudioFrame) and isinstance(mine, InputAudioRawFrame)
        assert mine.audio == theirs.audio and mine.sample_rate == theirs.sample_rate == 8000
        assert str(mine) == mine.name  # no pts/size formatting on every hop
    assert ours.fast_frames == 20


async def test_other_messages_and_rates_are_pipecats() -> None:
    b = TwilioMessageBuilder(StreamIdentity())
    ours, _ = await _pair(8000)
    dtmf = await ours.deserialize(json.dumps(b.dtmf("7")))
    assert isinstance(dtmf, InputDTMFFrame) and dtmf.button.value == "7"
    assert await ours.deserialize("not json") is None
    assert await ours.deserialize(json.dumps({"event": "media", "media": {"payload": "%%"}})) is None
    assert await ours.deserialize(json.dumps({"event": "media", "media": {}})) is None
    wide, _ = await _pair(16000)  # a 16 kHz pipeline: Pipecat's resampling path
    text = json.dumps(b.media(0, 0, pcm16_to_ulaw(np.zeros(160, np.int16))))
    frames = [f for f in [await wide.deserialize(text) for _ in range(10)] if f is not None]
    assert frames and all(type(f) is InputAudioRawFrame for f in frames)  # the resampler buffers
    assert {f.sample_rate for f in frames} == {16000}
    assert wide.fast_frames == 0 and ours.fast_frames == 0


async def test_caller_frames_are_stamped_with_when_they_came() -> None:
    """The stream timestamp maps to this host's clock (``StreamClock``): frames read as they
    come are stamped about when they were read; a message without a usable timestamp gives a
    frame without a stamp (the echo guard then takes it as fresh)."""
    ours, _ = await _pair(8000)
    b = TwilioMessageBuilder(StreamIdentity())
    silence = pcm16_to_ulaw(np.zeros(160, np.int16))
    first_at = time.monotonic()
    first = await ours.deserialize(json.dumps(b.media(1, 0, silence)))
    assert first.captured_at == pytest.approx(first_at, abs=0.005)
    # the next frame read 150 ms after the first (it waited unread): it came 20 ms after it
    await asyncio.sleep(0.15)
    late = await ours.deserialize(json.dumps(b.media(2, 20, silence)))
    assert late.captured_at == pytest.approx(first.captured_at + 0.02, abs=0.001)
    assert time.monotonic() - late.captured_at > 0.12
    for stamp in (None, "soon", "nan", "inf", ["5"]):
        message = b.media(3, 40, silence)
        if stamp is None:
            del message["media"]["timestamp"]
        else:
            message["media"]["timestamp"] = stamp
        frame = await ours.deserialize(json.dumps(message))
        assert isinstance(frame, CallerAudioFrame) and frame.captured_at is None, stamp
