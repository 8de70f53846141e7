"""SileroNumpyModel: Silero VAD v5 run in NumPy, with the weights of Pipecat's bundled ONNX file.

Pipecat scores every 32 ms window of a call's audio with ONNX Runtime. On a call that window
comes alone, 20-30 ms after the previous bit of work, and ONNX Runtime's fixed cost per ``run``
dominates: the network itself is five small matrix products and one LSTM step. Measured on the
2-core KVM guest of ``benchmarks/RESULTS.md``: ~96 µs per window back to back and ~600-700 µs
for a window that follows a 20 ms pause (a call's cadence: caches and predictors have gone cold),
against ~65 µs and ~400-490 µs here (``benchmarks/silero_runtime.py`` prints the ratios).

The network (both branches of the ONNX graph, 8 and 16 kHz) is read from the graph itself:
reflect padding and an STFT as a strided convolution, the magnitude of its bins, four 3-tap
convolutions with ReLU, one LSTM cell step (PyTorch gate order i, f, g, o, which is how the
weights are stored before the graph reorders them for ONNX's LSTM), a 1x1 convolution and a
sigmoid. Shapes, strides and padding come from the graph; a graph of another layout is refused
(:class:`SileroLayoutError`), and :func:`pipeline.turn_models.silero_model` then keeps ONNX
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
    convs: tuple[tuple[np.ndarray, np.ndarray, int], ...]  # (taps*C_in, C_out) weight, bias, stride
    lstm: np.ndarray  # (2 * hidden, 4 * hidden): [input; hidden] -> gates i, f, g, o
    lstm_bias: np.ndarray
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
        # rows: tap-major, then input channel, to match a window of `taps` consecutive frames
        packed = np.ascontiguousarray(w.transpose(2, 1, 0).reshape(taps * c_in, c_out))
        layers.append((packed, b.astype(np.float32), int(conv["strides"][0])))
    return SileroWeights(
        basis=np.ascontiguousarray(basis[:, 0, :].T),
        hop=int(convs[0]["strides"][0]),
        pad=int(pads[-1]),
        convs=tuple(layers),
        lstm=np.ascontiguousarray(np.concatenate([w_ih, w_hh], axis=1).T),
        lstm_bias=(b_ih + b_hh).astype(np.float32),
        out_weight=np.ascontiguousarray(w_out[0, :, 0]),
        out_bias=float(b_out.reshape(-1)[0]),
    )


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
    """One sample rate's forward pass with preallocated buffers (one per model instance)."""

    def __init__(self, weights: SileroWeights, sample_rate: int) -> None:
        w = self.w = weights
        n_in = WINDOW[sample_rate] + CONTEXT[sample_rate]
        self.padded = np.zeros(n_in + w.pad, np.float32)
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
        for packed, _, stride in w.convs:
            buf = np.zeros((t + 2, c), np.float32)
            t_out = (t - 1) // stride + 1
            cols = np.lib.stride_tricks.as_strided(
                buf, (t_out, 3 * c), (stride * c * 4, 4), writeable=False
            )
            self.layer_in.append(buf)
            self.windows.append(cols)
            self.layer_out.append(np.empty((t_out, packed.shape[1]), np.float32))
            t, c = t_out, packed.shape[1]
        if t != 1:
            raise SileroLayoutError(f"Silero graph: the encoder leaves {t} frames, not 1")
        self.xh = np.zeros(2 * w.hidden, np.float32)  # [encoder output; LSTM hidden state]
        self.gates = np.empty(4 * w.hidden, np.float32)

    def __call__(self, x: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Score ``x`` (context + window) from state (``self.xh``'s hidden part, ``c``)."""
        w, n = self.w, x.size
        padded = self.padded
        padded[:n] = x
        padded[n:] = x[n - 2 : n - 2 - w.pad : -1]  # reflect: mirror without the edge sample
        spec = np.matmul(self.frames, w.basis, out=self.spec)
        np.hypot(spec[:, : w.bins], spec[:, w.bins :], out=self.layer_in[0][1:-1])
        last = len(w.convs) - 1
        for i, (packed, bias, _) in enumerate(w.convs):
            out = np.matmul(self.windows[i], packed, out=self.layer_out[i])
            out += bias
            dest = self.xh[None, : w.hidden] if i == last else self.layer_in[i + 1][1:-1]
            np.maximum(out, 0.0, out=dest)
        h = w.hidden
        g = np.matmul(self.xh, w.lstm, out=self.gates)
        g += w.lstm_bias
        # sigmoid of all four gates at once; g (the cell input) wants tanh: 2 sigmoid(2x) - 1
        g[2 * h : 3 * h] *= 2.0
        np.clip(g, -80.0, 80.0, out=g)  # exp stays finite in float32; sigmoid is 0/1 beyond
        np.negative(g, out=g)
        np.exp(g, out=g)
        g += 1.0
        np.reciprocal(g, out=g)
        cell = g[2 * h : 3 * h]
        cell *= 2.0
        cell -= 1.0
        c_new = g[h : 2 * h] * c
        c_new += g[:h] * cell
        h_new = self.xh[h:]
        np.tanh(c_new, out=h_new)
        h_new *= g[3 * h :]
        logit = float(np.dot(np.maximum(h_new, 0.0), w.out_weight)) + w.out_bias
        return 1.0 / (1.0 + math.exp(-min(max(logit, -80.0), 80.0))), h_new, c_new


class SileroNumpyModel:
    """Drop-in for Pipecat's ``SileroOnnxModel`` (batch of one) computing in NumPy."""

    def __init__(self, path: str) -> None:
        self._weights = load_weights(path)
        self._runners: dict[int, _Runner] = {}
        self.sample_rates = [8000, 16000]
        self.reset_states()

    def reset_states(self, batch_size: int = 1) -> None:
        """Zero the recurrent state and the audio context (as Pipecat's model does)."""
        if batch_size != 1:
            raise ValueError("SileroNumpyModel scores one stream (batch size 1)")
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, 0), dtype=np.float32)
        self._last_sr = 0

    def __call__(self, x: np.ndarray, sr: int) -> np.ndarray:
        """Speech probability of one window (``x``: 256 samples at 8 kHz, 512 at 16 kHz)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            if x.shape[0] != 1:
                raise ValueError("SileroNumpyModel scores one stream (batch size 1)")
            x = x[0]
        if x.ndim != 1:
            raise ValueError(f"Too many dimensions for input audio chunk {x.ndim}")
        if sr not in WINDOW:
            raise ValueError(f"Supported sampling rates: {self.sample_rates}")
        if x.size != WINDOW[sr]:
            raise ValueError(
                f"Provided number of samples is {x.size} (Supported values: 256 for 8000 "
                "sample rate, 512 for 16000)"
            )
        if self._last_sr and self._last_sr != sr:
            self.reset_states()
        runner = self._runners.get(sr)
        if runner is None:
            runner = self._runners[sr] = _Runner(self._weights[sr], sr)
        context = CONTEXT[sr]
        if self._context.shape[1] != context:
            self._context = np.zeros((1, context), dtype=np.float32)
        full = np.concatenate((self._context[0], x))
        runner.xh[runner.w.hidden :] = self._state[0, 0]  # the hidden state the runner reads
        prob, h, c = runner(full, self._state[1, 0])
        self._state = np.stack((h, c))[:, None, :]
        self._context = full[None, -context:]
        self._last_sr = sr
        return np.array([[prob]], dtype=np.float32)
