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

STREAM_SID = "MZ" + "0" * 32


def audio() -> TTSAudioRawFrame:
    return TTSAudioRawFrame(b"\0\0" * 160, 8000, 1)


async def marks_sent(frames: list, expected_down: list[type]) -> list[dict]:
    """Run ``frames`` through the processor (the frames going down must be ``expected_down``);
    the mark messages it added, in order."""
    down, _ = await run_test(
        TwilioMarkProcessor(STREAM_SID), frames_to_send=frames, expected_down_frames=expected_down
    )
    return [f.message for f in down if isinstance(f, OutputTransportMessageFrame)]


async def test_mark_after_each_response():
    response = [TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame]
    marks = await marks_sent(
        [TTSStartedFrame(), audio(), TTSStoppedFrame()] * 2,
        [*response, OutputTransportMessageFrame] * 2,
    )
    assert [m["mark"]["name"] for m in marks] == ["response-1", "response-2"]
    assert all(m["event"] == "mark" and m["streamSid"] == STREAM_SID for m in marks)


async def test_holding_line_gets_its_own_mark_before_the_answers():
    """The holding line's audio, then its ``holding-N`` mark; the answer's mark stays
    ``response-N`` (the far side tells "still to come" from "done")."""
    marks = await marks_sent(
        [TTSStartedFrame(), audio(), HoldingLineFrame(), audio(), TTSStoppedFrame()],
        [
            TTSStartedFrame,
            TTSAudioRawFrame,
            HoldingLineFrame,
            OutputTransportMessageFrame,
            TTSAudioRawFrame,
            TTSStoppedFrame,
            OutputTransportMessageFrame,
        ],
    )
    assert [m["mark"]["name"] for m in marks] == ["holding-1", "response-1"]
    assert all(m["event"] == "mark" and m["streamSid"] == STREAM_SID for m in marks)
