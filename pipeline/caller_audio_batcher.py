"""CallerAudioBatcher: which of the caller's 20 ms frames a phone input sends down together.

Every frame pushed into a call's pipeline costs the same Pipecat machinery whatever its length
(the observers, the user aggregator's queue hop, the VAD's and the turn strategies' bookkeeping,
the echo guard), so the phone inputs (the Twilio media transport, the loopback phone) send fewer,
longer frames where that changes nothing anyone could notice:

- **Quiet hold.** While no user turn is open and the VAD is quiet, a frame waits when it and the
  frames waiting before it are provably too quiet to start speech
  (:meth:`pipeline.endpoint_vad.EndpointVADAnalyzer.stays_quiet`: under the VAD's ``min_volume``
  in every window they complete, whatever their samples). Up to ``hold_secs`` go down as one
  frame. A frame that fails the test goes down at once, with the frames waiting before it: the
  VAD sees it exactly when it would have, so a start of speech (a barge-in) is not delayed at
  all, and the VAD's windows and states are the same, cut from the same byte stream.
- **Pairs.** Otherwise, while ``steady()`` (:attr:`EndpointVADAnalyzer.steady`: nobody speaks,
  or the caller speaks and was loud a moment ago), a frame waits one frame time for the next one.

The batcher only decides; the input makes and pushes the frames. ``frames_in - pushes`` is how
many pushes it saved.
"""

from __future__ import annotations

from collections.abc import Callable

from pipecat.audio.utils import audioop

from pipeline.endpoint_vad import EndpointVADAnalyzer

#: The longest a quiet caller frame waits at the input (10 phone frames go down as one).
HOLD_SECS = 0.2

#: ``quiet(sum_squares, samples, last_sent)``: may audio of ``samples`` samples whose sum of
#: squares is at most ``sum_squares`` wait at the input, the last audio sent down being
#: ``last_sent``? (see :func:`quiet_hold`)
QuietTest = Callable[[float, int, "bytes | None"], bool]


def quiet_hold(vad: EndpointVADAnalyzer, idle: Callable[[], bool]) -> QuietTest:
    """The quiet-hold test of a call: no user turn open (``idle()``), the VAD has analyzed all
    audio sent down (it is not behind in the user aggregator's queue) and it stays quiet."""

    def may_wait(sum_squares: float, samples: int, last_sent: bytes | None) -> bool:
        return idle() and vad.has_analyzed_last(last_sent) and vad.stays_quiet(sum_squares, samples)

    return may_wait


class CallerAudioBatcher:
    """Joins a caller's consecutive 16-bit mono frames per the quiet hold and pairing rules."""

    def __init__(
        self,
        sample_rate: int,
        *,
        steady: Callable[[], bool] | None = None,
        quiet: QuietTest | None = None,
        hold_secs: float = HOLD_SECS,
        frame_secs: float = 0.02,
    ) -> None:
        """``steady``: pair frames while it is true (None: never). ``quiet``: the quiet-hold
        test (None: no quiet hold). Frames longer than ``frame_secs`` are never paired."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if hold_secs < 0 or frame_secs <= 0:
            raise ValueError(f"bad batching: hold {hold_secs} s, frames {frame_secs} s")
        self.sample_rate = sample_rate
        self._steady = steady
        self._quiet = quiet
        self._hold_samples = int(hold_secs * sample_rate)
        self._pair_bytes = int(frame_secs * sample_rate) * 2
        self._chunks: list[bytes] = []
        self._samples = 0
        self._sum_squares = 0.0  # an upper bound for the waiting audio
        #: Frames offered / audio pushes handed back / frames that waited as quiet / dropped.
        self.frames_in = 0
        self.pushes = 0
        self.quiet_frames = 0
        self.frames_dropped = 0
        #: The last audio handed back (the very object the input pushes).
        self.last_sent: bytes | None = None

    @property
    def waiting(self) -> bool:
        """True while audio waits for a later frame (or :meth:`take`)."""
        return bool(self._chunks)

    @property
    def frames_coalesced(self) -> int:
        """Frames that went down inside another frame's push (pushes saved)."""
        return self.frames_in - self.pushes - len(self._chunks) - self.frames_dropped

    def offer(self, pcm: bytes) -> bytes | None:
        """The next frame's PCM; returns the audio to push now (what waited, then this frame),
        or None when it waits."""
        self.frames_in += 1
        n = len(pcm) // 2
        sum_squares = 0.0
        if self._quiet is not None:
            sum_squares = (audioop.rms(pcm, 2) + 1.0) ** 2 * n  # rms is rounded down
            if self._quiet(self._sum_squares + sum_squares, self._samples + n, self.last_sent):
                self._wait(pcm, n, sum_squares)
                self.quiet_frames += 1
                return self.take() if self._samples >= self._hold_samples else None
        if self._chunks:
            self._wait(pcm, n, sum_squares)
            return self.take()
        if self._steady is not None and len(pcm) <= self._pair_bytes and self._steady():
            self._wait(pcm, n, sum_squares)  # its partner is due in one frame time
            return None
        self.pushes += 1
        self.last_sent = pcm
        return pcm

    def take(self) -> bytes | None:
        """What waits, as one PCM buffer (None if nothing): before any other message of the
        input, and when the input stops."""
        if not self._chunks:
            return None
        chunks, self._chunks = self._chunks, []
        self._samples, self._sum_squares = 0, 0.0
        self.pushes += 1
        self.last_sent = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.last_sent

    def drop(self) -> None:
        """Forget what waits (the input stopped taking audio)."""
        self.frames_dropped += len(self._chunks)
        self._chunks = []
        self._samples, self._sum_squares = 0, 0.0

    def _wait(self, pcm: bytes, n: int, sum_squares: float) -> None:
        self._chunks.append(pcm)
        self._samples += n
        self._sum_squares += sum_squares


class BatchingInput:
    """What a phone input that batches caller frames shows: the rules in use and their count.

    Mixed into the Twilio media input and the loopback phone's microphone, which push what
    :meth:`CallerAudioBatcher.offer` hands back.
    """

    _batcher: CallerAudioBatcher | None = None

    @property
    def batcher(self) -> CallerAudioBatcher | None:
        """The batching rules in use (``coalesce_while``), if any."""
        return self._batcher

    @property
    def frames_coalesced(self) -> int:
        """Caller frames that went down inside another one's push (pushes saved)."""
        return self._batcher.frames_coalesced if self._batcher is not None else 0

    def _use_batching(
        self,
        sample_rate: int,
        steady: Callable[[], bool] | None,
        quiet: QuietTest | None,
        hold_secs: float,
        frame_secs: float,
    ) -> None:
        """Batch per ``steady`` and ``quiet`` (both None: every frame on its own)."""
        self._batcher = None
        if steady is not None or quiet is not None:
            self._batcher = CallerAudioBatcher(
                sample_rate, steady=steady, quiet=quiet, hold_secs=hold_secs, frame_secs=frame_secs
            )
