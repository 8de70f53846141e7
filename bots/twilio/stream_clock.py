"""StreamClock: when each frame of a Twilio Media Stream reached this host, read late or not.

Twilio stamps every ``media`` message with its place in the stream (``timestamp``: milliseconds
from the stream's start) and sends them in real time. The input may leave the WebSocket unread
for a while (read pauses: the kernel keeps the messages) and take a burst at once; the frames of
such a burst arrived over the pause, not at the moment they were read. The clock maps stream time
to this host's monotonic clock by the smallest ``read time - stream time`` seen, the frames read
the moment they came (the lower edge of the network's delay, as a jitter buffer does), and lets
that offset creep later by ``DRIFT`` seconds a second, so that a Twilio clock running slower
than this host's is followed too: a stream read at once renews it at every message, and the
quiet holds that pause the reading leave a frame read at once at least every 200 ms.
"""

from __future__ import annotations

#: How fast the offset may creep later without a fresh reading: ten times the drift of a cheap
#: audio clock (100 ppm), a tenth of a millisecond per 200 ms hold.
DRIFT = 1e-3


class StreamClock:
    """Maps one Media Stream's timestamps (ms) to the monotonic time each frame arrived."""

    def __init__(self) -> None:
        self._offset: float | None = None  # arrival - stream time, seconds
        self._read_at = 0.0  # when the offset was last updated

    def arrival(self, stream_ms: float, read_at: float) -> float:
        """The monotonic time the frame at ``stream_ms`` came, read at ``read_at``: ``read_at``
        itself for a frame read the moment it came, earlier for one that waited unread."""
        lag = read_at - stream_ms / 1000.0
        if self._offset is None:
            self._offset = lag
        else:
            self._offset = min(lag, self._offset + DRIFT * max(0.0, read_at - self._read_at))
        self._read_at = read_at
        return stream_ms / 1000.0 + self._offset
