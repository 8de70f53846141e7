"""SileroNumpyModel: Silero VAD v5 run in NumPy, with the weights of Pipecat's bundled ONNX file.

Pipecat scores every 32 ms window of a call's audio with ONNX Runtime. On a call that window
comes alone, 20-30 ms after the previous bit of work, and ONNX Runtime's fixed cost per ``run``
dominates: the network itself is five small matrix products and one LSTM step. Measured on the
2-core KVM guest of ``benchmarks/RESULTS.md``: ~96 µs per window back to back and ~600-700 µs
for a window that follows a 20 ms pause (a call's cadence: caches and predictors have gone cold),
against ~45-60 µs and ~330-360 µs here, scoring from PCM16 (``benchmarks/silero_runtime.py``
prints the ratios).

The network (both branches of the ONNX graph, 8 and 16 kHz) is read from the graph itself:
reflect padding and an STFT as a strided convolution, the magnitude of its bins, four 3-tap
convolutions with ReLU, one LSTM cell step (PyTorch gate order i, f, g, o, which is how the
weights are stored before the graph reorders them for ONNX's LSTM), a 1x1 convolution and a
sigmoid. Shapes, strides and padding come from the graph; a graph of another layout is refused
(:class:`SileroLayoutError`), and :func:`stepcall.audio.inference.silero_model` then keeps ONNX
Runtime. Outputs match ONNX Runtime's to ~1e-6 (``tests/pipeline/test_silero_numpy.py``).

The interface is Pipecat's ``SileroOnnxModel`` one (``model(x, sr)``, ``reset_states()``), for a
batch of one: an instance per call keeps its state, context and scratch buffers; the weights are
loaded once per process and shared, read-only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

#: Samples per window and of prepended context, by sample rate (Silero v5).
WINDOW = {8000: 256, 16000: 512}
CONTEXT = {8000: 32, 16000: 64}


class SileroLayoutError(ValueError):
    """The ONNX file does not hold the Silero v5 network this module knows."""


@dataclass(frozen=True)
class SileroWeights:
    """One sample rate's branch of the graph, laid out for NumPy."""

    basis: np.ndarray  # (filter length, 2 * bins): the STFT as one matrix product
    hop: int
    pad: int  # reflect padding added after the input
    # per 3-tap convolution: its weight, ((C_in + 1) * taps, C_out), and stride; each frame of
    # the input carries a constant 1 after its channels, whose row in the first tap is the bias
    convs: tuple[tuple[np.ndarray, int], ...]
    # (2 * hidden + 1, 4 * hidden): [input; hidden; 1] -> gates i, f, o, g before their tanh;
    # the last row is the bias, and the columns of i, f, o are halved: sigmoid(x) is
    # (1 + tanh(x / 2)) / 2, so one tanh serves all four gates
    lstm: np.ndarray
    out_weight: np.ndarray  # (hidden,)
    out_bias: float

    @property
    def bins(self) -> int:
        return self.basis.shape[1] // 2

    @property
    def hidden(self) -> int:
        return self.out_weight.shape[0]


def _branch_weights(graph, expect_filter: int) -> SileroWeights:
    from onnx import helper, numpy_helper

    consts: dict[str, np.ndarray] = {}
    convs: list[dict] = []
    for node in graph.node:
        if node.op_type == "Constant":
            name = node.output[0].rsplit("__", 1)[-1]
            consts[name] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Conv":
            convs.append({a.name: helper.get_attribute_value(a) for a in node.attribute})
    try:
        basis = consts["stft.forward_basis_buffer"]
        pads = consts["/stft/padding/Constant_1_output_0"]
        enc = [
            (consts[f"encoder.{i}.reparam_conv.weight"], consts[f"encoder.{i}.reparam_conv.bias"])
            for i in range(4)
        ]
        w_ih, w_hh = consts["decoder.rnn.weight_ih"], consts["decoder.rnn.weight_hh"]
        b_ih, b_hh = consts["decoder.rnn.bias_ih"], consts["decoder.rnn.bias_hh"]
        w_out, b_out = consts["decoder.decoder.2.weight"], consts["decoder.decoder.2.bias"]
    except KeyError as e:
        raise SileroLayoutError(f"Silero graph: no constant {e}") from None
    if basis.ndim != 3 or basis.shape[1] != 1 or basis.shape[2] != expect_filter:
        raise SileroLayoutError(f"Silero graph: STFT basis of shape {basis.shape}")
    if len(convs) != 6 or [c["kernel_shape"][0] for c in convs[1:5]] != [3] * 4:
        raise SileroLayoutError("Silero graph: expected an STFT, four 3-tap convolutions, a 1x1")
    if any(c.get("pads", [0, 0]) != [1, 1] for c in convs[1:5]):
        raise SileroLayoutError("Silero graph: encoder convolutions are not padded by 1")
    hidden = w_hh.shape[1]
    if w_ih.shape != (4 * hidden, enc[3][0].shape[0]) or w_hh.shape != (4 * hidden, hidden):
        raise SileroLayoutError(f"Silero graph: LSTM weights {w_ih.shape}, {w_hh.shape}")
    layers = []
    for (w, b), conv in zip(enc, convs[1:5], strict=True):
        c_out, c_in, taps = w.shape
        # rows: tap-major, then input channel and the constant 1, to match a window of `taps`
        # consecutive frames
        packed = np.zeros((taps, c_in + 1, c_out), np.float32)
        packed[:, :c_in, :] = w.transpose(2, 1, 0)
        packed[0, c_in, :] = b
        layers.append((packed.reshape(taps * (c_in + 1), c_out), int(conv["strides"][0])))
    return SileroWeights(
        basis=np.ascontiguousarray(basis[:, 0, :].T),
        hop=int(convs[0]["strides"][0]),
        pad=int(pads[-1]),
        convs=tuple(layers),
        lstm=_lstm_matrix(w_ih, w_hh, b_ih + b_hh, hidden),
        out_weight=np.ascontiguousarray(w_out[0, :, 0]),
        out_bias=float(b_out.reshape(-1)[0]),
    )


def _lstm_matrix(w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray, h: int) -> np.ndarray:
    """PyTorch's gate order (i, f, g, o) to the layout of :attr:`SileroWeights.lstm`."""
    full = np.concatenate([np.concatenate([w_ih, w_hh], axis=1).T, bias[None, :]])
    i, f, g, o = (full[:, k * h : (k + 1) * h] for k in range(4))
    return np.ascontiguousarray(np.concatenate([i / 2, f / 2, o / 2, g], axis=1), np.float32)


@functools.cache
def load_weights(path: str) -> dict[int, SileroWeights]:
    """Both branches of the Silero ONNX file at ``path`` (once per process)."""
    import onnx

    model = onnx.load(path)
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    if len(ifs) != 1:
        raise SileroLayoutError("Silero graph: expected one If node choosing the sample rate")
    branches = {a.name: a.g for a in ifs[0].attribute}
    if set(branches) != {"then_branch", "else_branch"}:
        raise SileroLayoutError("Silero graph: the If node has no then/else branches")
    # the If tests sr == 16000: then is the 16 kHz network, else the 8 kHz one
    return {
        16000: _branch_weights(branches["then_branch"], WINDOW[16000] // 2),
        8000: _branch_weights(branches["else_branch"], WINDOW[8000] // 2),
    }


class _Runner:
    """One sample rate's forward pass, its recurrent state and the audio context, in preallocated
    buffers (one per model instance and rate)."""

    def __init__(self, weights: SileroWeights, sample_rate: int) -> None:
        w = self.w = weights
        self.n = WINDOW[sample_rate]
        self.ctx = CONTEXT[sample_rate]
        n_in = self.n + self.ctx
        # [context | window | reflect padding]: the context is the previous window's tail
        self.padded = np.zeros(n_in + w.pad, np.float32)
        self.window = self.padded[self.ctx : n_in]
        frames = (self.padded.size - w.basis.shape[0]) // w.hop + 1
        step = self.padded.strides[0]
        self.frames = np.lib.stride_tricks.as_strided(
            self.padded, (frames, w.basis.shape[0]), (step * w.hop, step), writeable=False
        )
        self.spec = np.empty((frames, 2 * w.bins), np.float32)
        # each layer's input, with a zero frame before and after (the convolution's padding)
        self.layer_in: list[np.ndarray] = []
        self.windows: list[np.ndarray] = []
        self.layer_out: list[np.ndarray] = []
        t, c = frames, w.bins
        for packed, stride in w.convs:
            buf = np.zeros((t + 2, c + 1), np.float32)  # channels and a constant 1
            buf[:, c] = 1.0
            t_out = (t - 1) // stride + 1
            cols = np.lib.stride_tricks.as_strided(
                buf, (t_out, 3 * (c + 1)), (stride * (c + 1) * 4, 4), writeable=False
            )
            self.layer_in.append(buf)
            self.windows.append(cols)
            self.layer_out.append(np.empty((t_out, packed.shape[1]), np.float32))
            t, c = t_out, packed.shape[1]
        if t != 1:
            raise SileroLayoutError(f"Silero graph: the encoder leaves {t} frames, not 1")
        # [encoder output; LSTM hidden state; 1 (the bias row's input)]
        self.xh = np.zeros(2 * w.hidden + 1, np.float32)
        self.xh[-1] = 1.0
        self.h = self.xh[w.hidden : 2 * w.hidden]
        self.c = np.zeros(w.hidden, np.float32)  # LSTM cell state
        self.gates = np.empty(4 * w.hidden, np.float32)

    def reset(self) -> None:
        """Zero the recurrent state and the audio context."""
        self.padded[: self.ctx] = 0.0
        self.h[:] = 0.0
        self.c[:] = 0.0

    def step(self) -> float:
        """Score the window in ``self.window`` (after the context) and advance the state."""
        w, n_in = self.w, self.n + self.ctx
        padded = self.padded
        padded[n_in:] = padded[n_in - 2 : n_in - 2 - w.pad : -1]  # reflect, without the edge
        spec = np.matmul(self.frames, w.basis, out=self.spec)
        np.hypot(spec[:, : w.bins], spec[:, w.bins :], out=self.layer_in[0][1:-1, :-1])
        last = len(w.convs) - 1
        for i, (packed, _) in enumerate(w.convs):
            out = np.matmul(self.windows[i], packed, out=self.layer_out[i])  # bias included
            dest = self.xh[None, : w.hidden] if i == last else self.layer_in[i + 1][1:-1, :-1]
            np.maximum(out, 0.0, out=dest)
        h = w.hidden
        g = np.matmul(self.xh, w.lstm, out=self.gates)
        np.tanh(g, out=g)
        sig = g[: 3 * h]  # i, f, o: sigmoid = (1 + tanh(x / 2)) / 2, the halving is in lstm
        sig *= 0.5
        sig += 0.5
        cell = g[3 * h :]
        cell *= g[:h]  # input gate x cell input
        self.c *= g[h : 2 * h]  # forget gate x old cell
        self.c += cell
        np.tanh(self.c, out=self.h)
        self.h *= g[2 * h : 3 * h]  # output gate
        logit = float(np.dot(np.maximum(self.h, 0.0), w.out_weight)) + w.out_bias
        padded[: self.ctx] = padded[self.n : n_in]  # the next window's context
        return 1.0 / (1.0 + math.exp(-min(max(logit, -80.0), 80.0)))


_PCM16_SCALE = np.float32(1.0 / 32768.0)


class SileroNumpyModel:
    """Drop-in for Pipecat's ``SileroOnnxModel`` (batch of one) computing in NumPy.

    :meth:`score_pcm16` scores a window straight from the call's 16-bit PCM: the same numbers
    as ``model(pcm / 32768, sr)`` without the conversions and copies around it (a call scores
    ~30 windows a second, each after a pause that leaves caches cold, where every NumPy call
    costs several microseconds).
    """

    def __init__(self, path: str) -> None:
        self._weights = load_weights(path)
        self._runners: dict[int, _Runner] = {}
        self.sample_rates = [8000, 16000]
        self._last_sr = 0

    def reset_states(self, batch_size: int = 1) -> None:
        """Zero the recurrent state and the audio context (as Pipecat's model does)."""
        if batch_size != 1:
            raise ValueError("SileroNumpyModel scores one stream (batch size 1)")
        for runner in self._runners.values():
            runner.reset()
        self._last_sr = 0

    @property
    def _state(self) -> np.ndarray:
        """(2, 1, hidden): hidden and cell state, as Pipecat's model keeps them."""
        runner = self._runners.get(self._last_sr)
        if runner is None:
            return np.zeros((2, 1, 128), dtype=np.float32)
        return np.stack((runner.h, runner.c))[:, None, :]

    @property
    def _context(self) -> np.ndarray:
        """(1, context): the audio prepended to the next window (empty before the first)."""
        runner = self._runners.get(self._last_sr)
        if runner is None:
            return np.zeros((1, 0), dtype=np.float32)
        return runner.padded[None, : runner.ctx].copy()

    def _runner(self, sr: int) -> _Runner:
        if self._last_sr != sr:
            if self._last_sr:
                self.reset_states()  # a new rate starts afresh, as in Pipecat's model
            self._last_sr = sr
        runner = self._runners.get(sr)
        if runner is None:
            runner = self._runners[sr] = _Runner(self._weights[sr], sr)
        return runner

    def __call__(self, x: np.ndarray, sr: int) -> np.ndarray:
        """Speech probability of one window (``x``: 256 samples at 8 kHz, 512 at 16 kHz)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            if x.shape[0] != 1:
                raise ValueError("SileroNumpyModel scores one stream (batch size 1)")
            x = x[0]
        if x.ndim != 1:
            raise ValueError(f"Too many dimensions for input audio chunk {x.ndim}")
        self._check(x.size, sr)
        runner = self._runner(sr)
        runner.window[:] = x
        return np.array([[runner.step()]], dtype=np.float32)

    def score_pcm16(self, window: bytes | bytearray | memoryview, sr: int) -> float:
        """Speech probability of one window of 16-bit mono PCM (512 bytes at 8 kHz)."""
        self._check(len(window) / 2 if len(window) % 2 else len(window) // 2, sr)
        runner = self._runner(sr)
        np.multiply(np.frombuffer(window, np.int16), _PCM16_SCALE, out=runner.window)
        return runner.step()

    def _check(self, samples: int, sr: int) -> None:
        if sr not in WINDOW:
            raise ValueError(f"Supported sampling rates: {self.sample_rates}")
        if samples != WINDOW[sr]:
            raise ValueError(
                f"Provided number of samples is {samples} (Supported values: 256 for 8000 "
                "sample rate, 512 for 16000)"
            )
