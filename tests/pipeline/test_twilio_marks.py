"""A Twilio mark follows the last audio of every bot response, and of every holding line."""

from pipecat.frames.frames import (
    OutputTransportMessageFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.tests.utils import run_test

from bots.twilio.marks import TwilioMarkProcessor
from pipeline.step_audio2.frames import HoldingLineFrame


async def test_mark_after_each_response():
    frames = [TTSStartedFrame(), TTSAudioRawFrame(b"\0\0" * 160, 8000, 1), TTSStoppedFrame()] * 2
    down, _ = await run_test(
        TwilioMarkProcessor("MZ" + "0" * 32),
        frames_to_send=frames,
        expected_down_frames=[
            TTSStartedFrame,
            TTSAudioRawFrame,
            TTSStoppedFrame,
            OutputTransportMessageFrame,
            TTSStartedFrame,
            TTSAudioRawFrame,
            TTSStoppedFrame,
            OutputTransportMessageFrame,
        ],
    )
    marks = [f.message for f in down if isinstance(f, OutputTransportMessageFrame)]
    assert [m["mark"]["name"] for m in marks] == ["response-1", "response-2"]
    assert all(m["event"] == "mark" and m["streamSid"] == "MZ" + "0" * 32 for m in marks)


async def test_holding_line_gets_its_own_mark_before_the_answers():
    """The holding line's audio, then its ``holding-N`` mark; the answer's mark stays
    ``response-N`` (the far side tells "still to come" from "done")."""
    audio = TTSAudioRawFrame(b"\0\0" * 160, 8000, 1)
    frames = [TTSStartedFrame(), audio, HoldingLineFrame(), audio, TTSStoppedFrame()]
    down, _ = await run_test(
        TwilioMarkProcessor("MZ" + "0" * 32),
        frames_to_send=frames,
        expected_down_frames=[
            TTSStartedFrame,
            TTSAudioRawFrame,
            HoldingLineFrame,
            OutputTransportMessageFrame,
            TTSAudioRawFrame,
            TTSStoppedFrame,
            OutputTransportMessageFrame,
        ],
    )
    marks = [f.message["mark"]["name"] for f in down if isinstance(f, OutputTransportMessageFrame)]
    assert marks == ["holding-1", "response-1"]
