"""CallerAudioGate: the service gets a turn's audio with its pre-roll, and no audio between turns."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    TextFrame,
    UserSpeakingFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from pipeline.call_audio.gate import CallerAudioGate

RATE = 8000
DOWN, UP = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM


def frame(k: int) -> InputAudioRawFrame:
    return InputAudioRawFrame(bytes([k % 256, 0]) * 160, RATE, 1)  # 20 ms, tagged by k


@pytest.fixture
def gate():
    gate = CallerAudioGate(preroll_secs=0.1)  # five 20 ms frames
    gate.out = []

    async def capture(f, direction=DOWN):
        gate.out.append(f)

    gate.push_frame = capture
    return gate


def tags(frames) -> list[int]:
    return [f.audio[0] for f in frames if isinstance(f, InputAudioRawFrame)]


async def test_audio_between_turns_is_held_and_the_preroll_leads_the_turn(gate):
    for k in range(12):
        await gate.process_frame(frame(k), DOWN)
    assert gate.out == [] and gate.frames_held == 12
    start = UserStartedSpeakingFrame()
    await gate.process_frame(start, DOWN)
    assert gate.out[0] is start and gate.in_turn
    assert tags(gate.out) == [7, 8, 9, 10, 11]  # the last 0.1 s before the turn, oldest first
    for k in (12, 13):
        await gate.process_frame(frame(k), DOWN)
    stop = UserStoppedSpeakingFrame()
    await gate.process_frame(stop, DOWN)
    await gate.process_frame(frame(14), DOWN)
    assert tags(gate.out) == [7, 8, 9, 10, 11, 12, 13] and gate.out[-1] is stop
    # the next turn's pre-roll is only what came after the last one
    await gate.process_frame(UserStartedSpeakingFrame(), DOWN)
    assert tags(gate.out)[-1:] == [14]


async def test_other_frames_pass_in_order_in_both_directions(gate):
    frames = [(TextFrame("a"), DOWN), (InterruptionFrame(), DOWN), (TextFrame("b"), UP)]
    for f, d in frames:
        await gate.process_frame(f, d)
    assert gate.out == [f for f, _ in frames]


async def test_the_user_speaking_heartbeat_stops_here_on_its_way_down(gate):
    up = UserSpeakingFrame()
    await gate.process_frame(UserSpeakingFrame(), DOWN)
    await gate.process_frame(up, UP)
    assert gate.out == [up]


def test_negative_preroll_is_refused():
    with pytest.raises(ValueError, match="preroll_secs"):
        CallerAudioGate(preroll_secs=-0.1)
