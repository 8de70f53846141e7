"""Silero VAD in NumPy against ONNX Runtime on the same bundled model file.

Real speech (flite) with noise, at both of Silero's rates, window by window through a reset;
the VAD's state sequence over a call-like stream on both runtimes; the runtime switch; and a
model file of another layout, which must fall back to ONNX Runtime instead of failing the call.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import soxr
from onnx import TensorProto, helper
from pipecat.audio.vad.silero import SileroOnnxModel
from pipecat.audio.vad.vad_analyzer import VADParams

import stepcall.audio.inference as turn_models
from pipeline.turn_taking.endpoint_vad import EndpointVADAnalyzer
from stepcall.audio.inference import (
    SILERO_MODEL,
    _model_path,
    configure_vad_runtime,
    silero_model,
)
from stepcall.audio.silero import SileroLayoutError, SileroNumpyModel, load_weights

PATH = _model_path(*SILERO_MODEL)


def _stream(speech, rate: int) -> np.ndarray:
    """Quiet noise, two utterances, louder noise: float32 at ``rate``."""
    rng = np.random.default_rng(7)
    pcm = np.concatenate([speech("What is the weather like in Paris today?"),
                          np.zeros(2400, np.int16), speech("Mm hmm, yes.")])
    voice = pcm.astype(np.float32) / 32768.0
    if rate != 8000:
        voice = soxr.resample(voice, 8000, rate).astype(np.float32)
    return np.concatenate([
        rng.normal(0, 0.002, rate // 2).astype(np.float32),
        voice + rng.normal(0, 0.003, voice.size).astype(np.float32),
        rng.normal(0, 0.02, rate).astype(np.float32),
    ])


@pytest.mark.parametrize("rate", [8000, 16000])
def test_matches_onnxruntime_window_by_window(speech, rate):
    audio = _stream(speech, rate)
    n = 512 if rate == 16000 else 256
    reference, model = SileroOnnxModel(PATH), SileroNumpyModel(PATH)
    ours, theirs = [], []
    for k, start in enumerate(range(0, audio.size - n, n)):
        window = audio[start : start + n]
        theirs.append(float(reference(window, rate)[0, 0]))
        ours.append(float(model(window, rate)[0, 0]))
        if k == 60:  # Pipecat resets the model between utterances: both must start afresh
            reference.reset_states()
            model.reset_states()
    ours_a, theirs_a = np.array(ours), np.array(theirs)
    assert np.abs(ours_a - theirs_a).max() < 1e-4
    assert (theirs_a > 0.7).sum() > 20 and (theirs_a < 0.1).sum() > 20  # speech and non-speech
    assert np.array_equal(ours_a > 0.5, theirs_a > 0.5)
    assert np.abs(model._state - reference._state).max() < 1e-3
    assert np.allclose(model._context, reference._context)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_scoring_pcm16_is_scoring_its_float_copy(speech, rate):
    pcm = (_stream(speech, rate) * 32768).astype(np.int16)
    n = 512 if rate == 16000 else 256
    direct, via_float = SileroNumpyModel(PATH), SileroNumpyModel(PATH)
    for k, start in enumerate(range(0, pcm.size - n, n)):
        window = pcm[start : start + n]
        ours = direct.score_pcm16(window.tobytes(), rate)
        assert np.float32(ours) == via_float(window.astype(np.float32) / 32768.0, rate)[0, 0]
        if k == 40:
            direct.reset_states()
            via_float.reset_states()
    assert np.array_equal(direct._state, via_float._state)
    assert np.array_equal(direct._context, via_float._context)
    with pytest.raises(ValueError, match="number of samples is 160"):
        direct.score_pcm16(bytes(320), 8000)
    with pytest.raises(ValueError, match="number of samples is 256.5"):
        direct.score_pcm16(bytes(513), 8000)
    with pytest.raises(ValueError, match="Supported sampling rates"):
        direct.score_pcm16(bytes(512), 22050)


def test_vad_states_are_the_same_on_both_runtimes(speech):
    audio = (_stream(speech, 8000) * 32768).astype(np.int16).tobytes()
    runs = {}
    for runtime in ("numpy", "onnxruntime"):
        configure_vad_runtime(runtime)
        try:
            vad = EndpointVADAnalyzer(sample_rate=8000, params=VADParams(stop_secs=0.2))
        finally:
            configure_vad_runtime("numpy")
        vad.set_sample_rate(8000)
        runs[runtime] = [vad._run_analyzer(audio[i : i + 320]) for i in range(0, len(audio), 320)]
        assert vad.scored_windows > 50
    assert isinstance(runs["numpy"][0], type(runs["onnxruntime"][0]))
    assert runs["numpy"] == runs["onnxruntime"]
    assert len(set(runs["numpy"])) >= 3  # quiet, speaking and the states between


def test_runtime_switch():
    assert isinstance(silero_model(), SileroNumpyModel)
    configure_vad_runtime("onnxruntime")
    try:
        assert isinstance(silero_model(), SileroOnnxModel)
    finally:
        configure_vad_runtime("numpy")
    with pytest.raises(ValueError, match="numpy, onnxruntime"):
        configure_vad_runtime("torch")


def test_rejects_input_it_cannot_score():
    model = SileroNumpyModel(PATH)
    with pytest.raises(ValueError, match="Provided number of samples is 320"):
        model(np.zeros(320, np.float32), 8000)
    with pytest.raises(ValueError, match="Supported sampling rates"):
        model(np.zeros(256, np.float32), 22050)
    with pytest.raises(ValueError, match="batch size 1"):
        model(np.zeros((2, 256), np.float32), 8000)
    with pytest.raises(ValueError, match="batch size 1"):
        model.reset_states(batch_size=2)


def _other_layout(path) -> str:
    """An ONNX file with an If on the sample rate whose branches hold no Silero weights."""
    branch = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["out"])], "b", [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["sr16"], value=helper.make_tensor(
            "v", TensorProto.INT64, [], [16000])),
         helper.make_node("Equal", ["sr", "sr16"], ["is16"]),
         helper.make_node("If", ["is16"], ["output"], then_branch=branch, else_branch=branch)],
        "not-silero",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 288]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph), str(path))
    return str(path)


def test_a_model_of_another_layout_falls_back_to_onnxruntime(tmp_path, monkeypatch):
    other = _other_layout(tmp_path / "other.onnx")
    with pytest.raises(SileroLayoutError, match="no constant"):
        load_weights(other)
    turn_models.shared_session(SILERO_MODEL)  # the real session, loaded before the swap
    monkeypatch.setattr(turn_models, "_model_path", lambda package, name: other)
    model = silero_model()
    assert isinstance(model, SileroOnnxModel)  # the call still gets a VAD
    assert 0.0 <= float(model(np.zeros(256, np.float32), 8000)[0, 0]) <= 1.0
