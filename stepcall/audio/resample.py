"""StreamResampler: the one streaming resampler of every process (polyphase windowed sinc).

Audio crosses rates where the call meets the model: a phone call's 8 kHz in to the model's
16 kHz, token2wav's 24 kHz out to the call's 8 or 16 kHz (``model_service/sessions.py``). Every
call to :meth:`StreamResampler.process` returns the output its input makes available (about
``len(x) * out_rate / in_rate`` samples, never a burst), and it low-passes properly going down
(soxr's streaming "QQ" aliases at 8 kHz and its "LQ"/"HQ" streams emit in ~12-95 ms bursts,
measured in tests/stepcall/test_resample.py). ``method="soxr"`` keeps soxr's stream for
comparison.
"""

from __future__ import annotations

import math

import numpy as np
import soxr


class StreamResampler:
    """Streaming rational resampler (polyphase windowed-sinc FIR) for speech.

    Every call to :meth:`process` returns the output that its input makes available (about
    ``len(x) * out_rate / in_rate`` samples, no buffering bursts). The filter's delay
    (``delay_ms``, 1–2 ms) is trimmed from the start of the stream, so the output is aligned with
    the input and, after :meth:`flush` (which returns the tail and resets), exactly
    ``n * out_rate / in_rate`` samples long.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        method: str = "fir",
        quality: str = "QQ",
        *,
        span: int = 32,
        beta: float = 8.0,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        if method not in ("fir", "soxr"):
            raise ValueError(f"StreamResampler: unknown method {method!r} (use 'fir' or 'soxr')")
        self.method, self.quality = method, quality
        self._soxr = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
            if method == "soxr" and in_rate != out_rate
            else None
        )
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = math.gcd(in_rate, out_rate)
        self._up = out_rate // g
        self._down = in_rate // g
        self.passthrough = in_rate == out_rate
        # Taps per phase = filter span in input samples; scaled so the transition band is a fixed
        # fraction of the lower rate.
        self._taps = max(4, math.ceil(span * in_rate / min(in_rate, out_rate)))
        n = self._taps * self._up
        fs_up = in_rate * self._up
        cutoff = 0.85 * 0.5 * min(in_rate, out_rate) / fs_up  # cycles per upsampled sample
        # Centre the filter on a whole number of output samples so the trimmed delay is exact.
        self._delay_out = max(1, int(round((n - 1) / 2.0 / self._down)))  # in output samples
        center = min(self._delay_out * self._down, n - 1)
        t = np.arange(n) - center
        half = max(center, n - 1 - center)
        window = np.i0(beta * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, 1.0))) / np.i0(beta)
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * window
        h = h / h.sum() * self._up
        # phase-major taps: _poly[phase, j] multiplies input sample p0 - j
        self._poly = h.reshape(self._taps, self._up).T.astype(np.float64)
        self.delay_ms = center / fs_up * 1000.0
        self.reset()

    def reset(self) -> None:
        """Forget all state (a new stream starts from silence)."""
        self._hist = np.zeros(self._taps - 1, dtype=np.float64)
        self._n_in = 0
        self._k_next = 0
        self._skip = self._delay_out
        self._n_out = 0

    @property
    def delay_s(self) -> float:
        """The filter's delay in seconds (trimmed from the output; 0 without a filter)."""
        return 0.0 if self.passthrough or self._soxr is not None else self.delay_ms / 1000.0

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk (float32 mono); returns float32."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if self._soxr is not None:
            return self._soxr.resample_chunk(x, last=False)
        if self.passthrough or x.size == 0:
            return x.copy() if self.passthrough else np.zeros(0, dtype=np.float32)
        base_index = self._n_in - (self._taps - 1)  # input index of buf[0]
        buf = np.concatenate([self._hist, x.astype(np.float64)])
        n_in = self._n_in + x.size
        k_end = (n_in * self._up - 1) // self._down + 1
        ks = np.arange(self._k_next, k_end, dtype=np.int64)
        if ks.size:
            pos = ks * self._down
            p0 = pos // self._up
            phase = pos % self._up
            idx = (p0 - base_index)[:, None] - np.arange(self._taps)[None, :]
            y = np.einsum("kt,kt->k", buf[idx], self._poly[phase])
        else:
            y = np.zeros(0)
        self._hist = buf[buf.size - (self._taps - 1) :] if self._taps > 1 else buf[:0]
        self._n_in = n_in
        self._k_next = int(k_end)
        if self._skip:
            dropped = min(self._skip, y.size)
            y = y[dropped:]
            self._skip -= dropped
        self._n_out += y.size
        return y.astype(np.float32)

    def flush(self) -> np.ndarray:
        """Emit the tail still inside the filter, then reset."""
        if self._soxr is not None:
            out = self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)
            self._soxr = soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=self.quality
            )
            return out
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        wanted = self._n_in * self._up // self._down - self._n_out
        tail = self.process(np.zeros(self._taps // 2 + 2, dtype=np.float32))[: max(0, wanted)]
        self.reset()
        return tail


class Resampler24k(StreamResampler):
    """``StreamResampler`` from token2wav's 24 kHz to ``to_rate`` (8/16/48 kHz ...)."""

    def __init__(self, to_rate: int, method: str = "fir", quality: str = "QQ") -> None:
        super().__init__(24000, to_rate, method, quality)
