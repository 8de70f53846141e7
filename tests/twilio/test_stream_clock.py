"""StreamClock: a Media Stream frame's arrival on this host, whether it was read at once or late."""

from __future__ import annotations

import numpy as np
import pytest

from bots.twilio.stream_clock import DRIFT, StreamClock


def test_frames_read_as_they_come_arrive_when_read_less_the_network_jitter() -> None:
    rng = np.random.default_rng(3)
    clock = StreamClock()
    base = 1000.0  # this host's monotonic clock at the stream's start, plus the least delay
    jitter = rng.uniform(0.0, 0.004, 200)
    jitter[0] = 0.0  # the first frame came with the least delay
    for k in range(200):
        read_at = base + 0.02 * k + jitter[k]
        came = clock.arrival(20.0 * k, read_at)
        # the lower edge of the delay: never later than the read, at most the jitter earlier
        assert read_at - 0.004 - 1e-9 <= came <= read_at + 1e-9


def test_a_burst_read_after_a_pause_keeps_the_time_each_frame_came() -> None:
    """Frames read together after 160 ms unread map to when each came, as read one by one."""
    clock, paused = StreamClock(), StreamClock()
    base, late = 50.0, []
    for k in range(40):
        came = base + 0.02 * k
        expected = clock.arrival(20.0 * k, came)
        # the same stream, with frames 11..18 left in the socket until frame 18 came
        read_at = base + 0.02 * 18 if 11 <= k <= 18 else came
        got = paused.arrival(20.0 * k, read_at)
        # the offset may creep by DRIFT over the 160 ms without a frame read at once
        assert got == pytest.approx(expected, abs=DRIFT * 0.16 + 1e-9), k
        if read_at > came:
            late.append(read_at - came)
    assert len(late) == 7 and max(late) == pytest.approx(0.14)


def test_a_slower_twilio_clock_is_followed() -> None:
    """Twilio's stream clock 200 ppm slower than this host's: the offset creeps along (up to
    ``DRIFT`` a second, more than the drift), so frames read at once still map to when they
    came."""
    clock = StreamClock()
    for k in range(30_000):  # ten minutes
        read_at = 7.0 + 0.02 * k * (1 + 2e-4)
        came = clock.arrival(20.0 * k, read_at)
    # the offset kept up: without its creep the last frame would map 0.12 s before it came
    assert abs(read_at - came) < 1e-6
