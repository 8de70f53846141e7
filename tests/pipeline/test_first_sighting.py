"""FirstSighting: one count per frame, whatever its hops and broadcast sibling."""

from __future__ import annotations

from pipecat.frames.frames import InterruptionFrame, TextFrame

from pipeline.observers.first_sighting import FirstSighting


def test_a_frame_and_its_broadcast_sibling_count_once() -> None:
    seen = FirstSighting()
    down, up = InterruptionFrame(), InterruptionFrame()
    up.broadcast_sibling_id = down.id
    down.broadcast_sibling_id = up.id
    assert seen.first(down)
    assert not seen.first(down)  # the next hop of the same push
    assert not seen.first(up)  # its sibling going the other way
    assert seen.first(TextFrame("x"))


def test_past_the_limit_it_forgets() -> None:
    seen = FirstSighting(limit=3)
    frames = [TextFrame(str(i)) for i in range(4)]
    assert all(seen.first(f) for f in frames)  # the fourth clears the memory
    assert seen.first(frames[0])
