"""Our caller's messages are understood by Pipecat's Twilio pieces (what the bot server uses)."""

from __future__ import annotations

import json

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer

from harness.callers.twilio_messages import StreamIdentity, TwilioMessageBuilder
from stepcall.audio.mulaw import pcm16_to_ulaw


class _TextSocket:
    """The one method of a Starlette WebSocket that parse_telephony_websocket reads."""

    def __init__(self, messages: list[dict]) -> None:
        self._messages = messages

    def iter_text(self):
        async def gen():
            for m in self._messages:
                yield json.dumps(m)

        return gen()


class _Setup:  # the attribute TwilioFrameSerializer.setup() reads
    audio_in_sample_rate = 8000


async def test_start_is_detected_as_twilio_with_our_parameters():
    ident = StreamIdentity()
    b = TwilioMessageBuilder(ident)
    params = {"bot": "support", "from_number": "+15550001111", "to_number": "+15550002222"}
    kind, call = await parse_telephony_websocket(_TextSocket([b.connected(), b.start(params)]))
    assert kind == "twilio"
    assert call["stream_id"] == ident.stream_sid and call["call_id"] == ident.call_sid
    assert call.body["bot"] == "support"
    assert call.from_number == "+15550001111" and call.to_number == "+15550002222"


async def test_media_and_dtmf_deserialize_to_pipecat_frames():
    ident = StreamIdentity()
    b = TwilioMessageBuilder(ident)
    ser = TwilioFrameSerializer(
        stream_sid=ident.stream_sid, params=TwilioFrameSerializer.InputParams(auto_hang_up=False)
    )
    await ser.setup(_Setup())
    pcm = (8000 * np.sin(np.arange(160) / 8000 * 2 * np.pi * 440)).astype(np.int16)
    frame = await ser.deserialize(json.dumps(b.media(1, 0, pcm16_to_ulaw(pcm))))
    assert isinstance(frame, InputAudioRawFrame) and frame.sample_rate == 8000
    got = np.frombuffer(frame.audio, np.int16)
    assert got.size == 160 and np.max(np.abs(got.astype(int) - pcm)) < 400
    dtmf = await ser.deserialize(json.dumps(b.dtmf("#")))
    assert isinstance(dtmf, InputDTMFFrame) and dtmf.button.value == "#"
