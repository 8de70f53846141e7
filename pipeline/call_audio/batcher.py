"""CallerAudioBatcher: which of the caller's 20 ms frames a phone input sends down together.

Every frame pushed into a call's pipeline costs the same Pipecat machinery whatever its length
(the observers, the user aggregator's queue hop, the VAD's and the turn strategies' bookkeeping,
the echo guard), so the phone inputs (the Twilio media transport, the loopback phone) send fewer,
longer frames where that changes nothing anyone could notice:

- **Quiet hold.** While no user turn is open and the VAD is quiet, a frame waits when it and the
  frames waiting before it are provably too quiet to start speech
  (:meth:`pipeline.turn_taking.endpoint_vad.EndpointVADAnalyzer.stays_quiet`: under the VAD's ``min_volume``
  in every window they complete, whatever their samples). Up to ``hold_secs`` go down as one
  frame. A frame that fails the test goes down at once, with the frames waiting before it: the
  VAD sees it exactly when it would have, so a start of speech (a barge-in) is not delayed at
  all, and the VAD's windows and states are the same, cut from the same byte stream.
- **Read pauses.** While audio waits in a quiet hold, the input may leave its socket unread
  until the hold is full, or for as long as ``pause_reading()`` of the input's
  ``coalesce_while`` allows if that is less (:meth:`BatchingInput.read_pause_secs`): the
  kernel keeps the frames that arrive meanwhile and one read takes them all. The frames, their
  order and their arrival stamps (:class:`pipeline.call_audio.caller_frame.CallerAudioFrame`) are
  the same; the process is woken about twice per hold instead of once per frame
  (``benchmarks/input_wakeups.py``: taking a Media Stream's 50 messages a second costs ~1.6 %
  of a core on a 2-vCPU VM, ~0.4 % in bursts of ten). On a call (``bots.call.read_pause``)
  the whole hold while the bot is idle (no answer under way, none playing): a caller who
  starts speaking then is heard up to ``hold_secs`` later, never a barge-in nor the end of a
  turn, which the quiet test and the bot's idleness rule out. While the bot answers, at most
  the VAD's :attr:`~pipeline.turn_taking.endpoint_vad.EndpointVADAnalyzer.start_lead_secs` (0.16 s): the
  VAD cannot start speech on less new audio, so a barge-in is decided on a frame read live,
  when it would have been frame by frame.
- **Speech holds.** While a user turn is open, the bot is idle and the caller speaks loudly
  (``speech``: :func:`speech_hold`, :meth:`EndpointVADAnalyzer.speech_hold_secs`), frames wait
  as long as no pause that anything acts on (the early Smart Turn inference, VAD's stop) could
  have grown inside them: about 60-90 ms with Smart Turn's early look 0.1 s into a pause. The
  frame that would make them longer goes down at once with them, so the VAD and the turn
  analyzer act at the same frame as without the hold; the audio reaches the model service up
  to that much later, and the end of the turn, which flushes it, not at all. Read pauses apply
  to speech holds too (the caller's words are read about every 80-100 ms instead of 50 times a
  second).
- **Pairs.** Otherwise, while ``steady()`` (:attr:`EndpointVADAnalyzer.steady`: nobody speaks,
  or the caller speaks and was loud a moment ago), a frame waits one frame time for the next one.

The batcher only decides; the input makes and pushes the frames. ``frames_in - pushes`` is how
many pushes it saved.
"""

from __future__ import annotations

from collections.abc import Callable

from pipecat.audio.utils import audioop

from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer

#: The longest a quiet caller frame waits at the input (10 phone frames go down as one).
HOLD_SECS = 0.2

#: The shortest read pause worth its timer: shorter than two phone frames, reading on costs less.
MIN_READ_PAUSE_SECS = 0.03

#: ``quiet(sum_squares, samples, last_sent)``: may audio of ``samples`` samples whose sum of
#: squares is at most ``sum_squares`` wait at the input, the last audio sent down being
#: ``last_sent``? (see :func:`quiet_hold`)
QuietTest = Callable[[float, int, "bytes | None"], bool]

#: ``speech(last_sent)``: seconds of audio that may wait now in a speech hold (0: none), the last
#: audio sent down being ``last_sent`` (see :func:`speech_hold`).
SpeechHoldTest = Callable[["bytes | None"], float]


def quiet_hold(vad: EndpointVADAnalyzer, idle: Callable[[], bool]) -> QuietTest:
    """The quiet-hold test of a call: no user turn open (``idle()``), the VAD has analyzed all
    audio sent down (it is not behind in the user aggregator's queue) and it stays quiet."""

    def may_wait(sum_squares: float, samples: int, last_sent: bytes | None) -> bool:
        return idle() and vad.has_analyzed_last(last_sent) and vad.stays_quiet(sum_squares, samples)

    return may_wait


def speech_hold(
    vad: EndpointVADAnalyzer,
    allowed: Callable[[], bool],
    act_after_secs: Callable[[], float],
) -> SpeechHoldTest:
    """The speech-hold test of a call: while ``allowed()`` (a user turn is open and the bot is
    idle), the VAD has analyzed all audio sent down, and per
    :meth:`EndpointVADAnalyzer.speech_hold_secs` with the pause ``act_after_secs()`` that acts
    (Smart Turn's early inference; VAD's ``stop_secs`` without Smart Turn)."""

    def may_wait_secs(last_sent: bytes | None) -> float:
        if not (allowed() and vad.has_analyzed_last(last_sent)):
            return 0.0
        return vad.speech_hold_secs(act_after_secs())

    return may_wait_secs


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
        speech: SpeechHoldTest | None = None,
    ) -> None:
        """``steady``: pair frames while it is true (None: never). ``quiet``: the quiet-hold
        test (None: no quiet hold). ``speech``: the speech-hold test (None: no speech hold;
        a speech hold is at most ``hold_secs`` too). Frames longer than ``frame_secs`` are
        never paired or held as speech."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if hold_secs < 0 or frame_secs <= 0:
            raise ValueError(f"bad batching: hold {hold_secs} s, frames {frame_secs} s")
        self.sample_rate = sample_rate
        self._steady = steady
        self._quiet = quiet
        self._speech = speech
        self._hold_samples = int(hold_secs * sample_rate)
        self._pair_bytes = int(frame_secs * sample_rate) * 2
        self._chunks: list[bytes] = []
        self._samples = 0
        self._sum_squares = 0.0  # an upper bound for the waiting audio
        self._all_quiet = False  # everything waiting waits in a quiet hold
        self._speech_samples = 0  # > 0: what waits is a speech hold of at most this many samples
        #: Counts the batches handed back or dropped: which batch is filling now.
        self.batch_serial = 0
        #: Frames offered / audio pushes handed back / frames that waited as quiet / as speech /
        #: dropped.
        self.frames_in = 0
        self.pushes = 0
        self.quiet_frames = 0
        self.speech_frames = 0
        self.frames_dropped = 0
        #: The last audio handed back (the very object the input pushes).
        self.last_sent: bytes | None = None

    @property
    def waiting(self) -> bool:
        """True while audio waits for a later frame (or :meth:`take`)."""
        return bool(self._chunks)

    def hold_left_secs(self) -> float:
        """Seconds of audio the hold that fills now may still take: > 0 only while all the
        waiting audio waits in a quiet hold (until it is full) or in a speech hold (until the
        next frame would go down with it)."""
        if not self._chunks:
            return 0.0
        if self._speech_samples:
            return max(0, self._speech_samples - self._samples) / self.sample_rate
        if not self._all_quiet:
            return 0.0
        return max(0, self._hold_samples - self._samples) / self.sample_rate

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
        if self._speech_samples:  # a speech hold fills: this frame waits, or goes with it
            self._wait(pcm, n, sum_squares)
            if self._samples > self._speech_samples:
                return self.take()
            self.speech_frames += 1
            return None
        if self._quiet is not None:
            sum_squares = (audioop.rms(pcm, 2) + 1.0) ** 2 * n  # rms is rounded down
            if self._quiet(self._sum_squares + sum_squares, self._samples + n, self.last_sent):
                self._all_quiet = self._all_quiet or not self._chunks
                self._wait(pcm, n, sum_squares)
                self.quiet_frames += 1
                return self.take() if self._samples >= self._hold_samples else None
        if self._chunks:
            self._wait(pcm, n, sum_squares)
            return self.take()
        if self._speech is not None and len(pcm) <= self._pair_bytes:
            limit = min(int(self._speech(self.last_sent) * self.sample_rate), self._hold_samples)
            if limit >= n:  # at least this frame may wait
                self._speech_samples = limit
                self._wait(pcm, n, sum_squares)
                self.speech_frames += 1
                return None
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
        self._samples, self._sum_squares, self._all_quiet = 0, 0.0, False
        self._speech_samples = 0
        self.batch_serial += 1
        self.pushes += 1
        self.last_sent = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.last_sent

    def drop(self) -> None:
        """Forget what waits (the input stopped taking audio)."""
        self.frames_dropped += len(self._chunks)
        self._chunks = []
        self._samples, self._sum_squares, self._all_quiet = 0, 0.0, False
        self._speech_samples = 0
        self.batch_serial += 1

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
    _may_pause_reading: Callable[[], float] | None = None
    #: Times the input left its socket unread, and for how long in all (seconds).
    read_pauses = 0
    read_paused_secs = 0.0
    _paused_batch = -1  # the batch the last pause was for

    @property
    def batcher(self) -> CallerAudioBatcher | None:
        """The batching rules in use (``coalesce_while``), if any."""
        return self._batcher

    @property
    def frames_coalesced(self) -> int:
        """Caller frames that went down inside another one's push (pushes saved)."""
        return self._batcher.frames_coalesced if self._batcher is not None else 0

    def read_pause_secs(self) -> float:
        """How long the input may leave its socket unread now (0: read on): right after a frame
        went into a quiet or speech hold, until the hold has what it may take, but at most
        ``pause_reading()`` seconds (the longest pause allowed now); once per hold (the frames
        read after the pause fill it without another).
        Pauses of less than ``MIN_READ_PAUSE_SECS`` are not worth a timer."""
        batcher, allowed = self._batcher, self._may_pause_reading
        if batcher is None or allowed is None or batcher.batch_serial == self._paused_batch:
            return 0.0
        secs = batcher.hold_left_secs()
        if secs < MIN_READ_PAUSE_SECS:
            return 0.0
        secs = min(secs, allowed())
        return secs if secs >= MIN_READ_PAUSE_SECS else 0.0

    def _count_read_pause(self, secs: float) -> None:
        """Note a pause of ``secs`` for the hold filling now."""
        if self._batcher is not None:
            self._paused_batch = self._batcher.batch_serial
        self.read_pauses += 1
        self.read_paused_secs += secs

    def _use_batching(
        self,
        sample_rate: int,
        steady: Callable[[], bool] | None,
        quiet: QuietTest | None,
        hold_secs: float,
        frame_secs: float,
        pause_reading: Callable[[], float] | None = None,
        speech: SpeechHoldTest | None = None,
    ) -> None:
        """Batch per ``steady``, ``quiet`` and ``speech`` (all None: every frame on its own);
        leave the socket unread during quiet and speech holds for at most ``pause_reading()``
        seconds (``math.inf``: until the hold is full; None: never)."""
        holds = quiet is not None or speech is not None
        self._may_pause_reading = pause_reading if holds else None
        self._batcher = None
        if steady is not None or holds:
            self._batcher = CallerAudioBatcher(
                sample_rate,
                steady=steady,
                quiet=quiet,
                hold_secs=hold_secs,
                frame_secs=frame_secs,
                speech=speech,
            )
