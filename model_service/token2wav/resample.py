"""Streaming, low-latency resampling of token2wav output (24 kHz) to the transport's rate.

``StreamResampler(in_rate, out_rate)`` defaults to our own rational polyphase FIR (Kaiser-windowed
sinc, 32 taps per phase, cutoff 0.45 x the lower rate): it keeps its input history between calls,
delays by 16 input samples (0.67 ms at 24 kHz) and returns, on every call, every output sample
whose inputs have arrived - so 20 ms in gives 20 ms out (+-1 sample), never a burst. It also
low-passes properly when going down to 8 kHz (soxr's "QQ" cubic does not). ``method="soxr"``
uses ``soxr.ResampleStream`` (quality "QQ" by default) instead; note soxr's "LQ"/"HQ" streams
emit in ~12-95 ms bursts (measured in tests/token2wav/test_resample.py).
"""

from __future__ import annotations

from math import gcd

import numpy as np
import soxr

_TAPS = 32  # per output phase (input samples spanned)


def _design(up: int, down: int, in_rate: int, out_rate: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-phase weights [up, taps] and start offsets [up] for output k = q*up + r."""
    half = _TAPS // 2
    c = half * up  # prototype half-length, in up-sampled samples
    fs_up = in_rate * up
    fcut = 0.45 * min(in_rate, out_rate)
    m = np.arange(-c, c + 1, dtype=np.float64)
    norm = 2.0 * fcut / fs_up
    proto = up * norm * np.sinc(norm * m) * np.kaiser(len(m), 8.0)
    weights = np.zeros((up, _TAPS + 1), dtype=np.float64)
    starts = np.zeros(up, dtype=np.int64)
    for r in range(up):
        u = r * down
        n0 = -((c - u) // up)  # ceil((u - c) / up)
        starts[r] = n0
        for j in range(_TAPS + 1):
            idx = u - (n0 + j) * up
            if -c <= idx <= c:
                weights[r, j] = proto[idx + c]
    # unity DC gain per phase
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32), starts, half


class _PolyphaseFIR:
    def __init__(self, in_rate: int, out_rate: int) -> None:
        g = gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        self.w, self.starts, self.delay = _design(self.up, self.down, in_rate, out_rate)
        self.reset()

    def reset(self) -> None:
        self.pad = _TAPS + 1  # zeros before the first real sample
        self.buf = np.zeros(self.pad, np.float32)
        self.buf_start = -self.pad  # absolute input index of buf[0]
        self.n_in = 0
        self.k = 0  # next output index

    def _emit(self, limit_in: int, max_k: int | None = None) -> np.ndarray:
        """Outputs whose last needed input index < ``limit_in``."""
        up, down, taps = self.up, self.down, self.w.shape[1]
        # last index needed by output k: q*down + starts[r] + taps - 1
        outs = []
        k = self.k
        # conservative bound on how many outputs are computable
        k_hi = ((limit_in - taps - int(self.starts.max())) * up) // down + up
        if max_k is not None:
            k_hi = min(k_hi, max_k)
        ks = np.arange(k, max(k, k_hi + 1))
        if ks.size:
            q, r = np.divmod(ks, up)
            first = q * down + self.starts[r]
            ok = first + taps - 1 < limit_in
            ks, first, r = ks[ok], first[ok], r[ok]
            if max_k is not None:
                sel = ks < max_k
                ks, first, r = ks[sel], first[sel], r[sel]
            if ks.size:
                idx = (first - self.buf_start)[:, None] + np.arange(taps)[None, :]
                outs = np.einsum("ij,ij->i", self.buf[idx], self.w[r])
                self.k = int(ks[-1]) + 1
        # drop history no future output needs
        q, r = divmod(self.k, up)
        need_from = q * down + int(self.starts.min()) - 1
        drop = need_from - self.buf_start
        if drop > 0:
            self.buf = self.buf[drop:]
            self.buf_start += drop
        return np.asarray(outs, dtype=np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        self.buf = np.concatenate([self.buf, x])
        self.n_in += len(x)
        return self._emit(self.n_in)

    def flush(self) -> np.ndarray:
        total_out = (self.n_in * self.up) // self.down
        self.buf = np.concatenate([self.buf, np.zeros(2 * (_TAPS + 1), np.float32)])
        out = self._emit(self.n_in + 2 * (_TAPS + 1), max_k=total_out)
        self.reset()
        return out


class StreamResampler:
    """Stateful mono float32 resampler for one audio stream (one per call session)."""

    def __init__(
        self, in_rate: int, out_rate: int, method: str = "fir", quality: str = "QQ"
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(
                f"StreamResampler: rates must be positive, got {in_rate} -> {out_rate}"
            )
        if method not in ("fir", "soxr"):
            raise ValueError(f"StreamResampler: unknown method {method!r} (use 'fir' or 'soxr')")
        self.in_rate, self.out_rate, self.method, self.quality = in_rate, out_rate, method, quality
        self._fir: _PolyphaseFIR | None = None
        self._soxr = None
        if in_rate != out_rate:
            if method == "fir":
                self._fir = _PolyphaseFIR(in_rate, out_rate)
            else:
                self._soxr = soxr.ResampleStream(
                    in_rate, out_rate, 1, dtype="float32", quality=quality
                )

    @property
    def delay_s(self) -> float:
        """Algorithmic delay in seconds (FIR half-length; 0 for pass-through)."""
        return (self._fir.delay / self.in_rate) if self._fir is not None else 0.0

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next piece of the stream; returns what is ready (float32)."""
        x = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
        if self._fir is not None:
            return self._fir.process(x)
        if self._soxr is not None:
            return self._soxr.resample_chunk(x, last=False)
        return x.copy()

    def flush(self) -> np.ndarray:
        """End of stream: the samples still inside the filter. The resampler can then be reused."""
        if self._fir is not None:
            return self._fir.flush()
        if self._soxr is not None:
            out = self._soxr.resample_chunk(np.zeros(0, np.float32), last=True)
            self._soxr = soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=self.quality
            )
            return out
        return np.zeros(0, np.float32)


class Resampler24k(StreamResampler):
    """``StreamResampler`` from token2wav's 24 kHz to ``to_rate`` (8/16/48 kHz ...)."""

    def __init__(self, to_rate: int, method: str = "fir", quality: str = "QQ") -> None:
        super().__init__(24000, to_rate, method, quality)
