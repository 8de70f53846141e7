"""Loading token2wav: file layout, errors, config parsing, weight mapping, voices, tiny checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.checkpoints.tiny_token2wav import TINY_FLOW, build_tiny_token2wav
from model_service.token2wav import (
    Token2Wav,
    Token2WavFileError,
    Voice,
    WeightsError,
    save_voice_npz,
)
from model_service.token2wav.config import load_config, read_flow_yaml
from model_service.token2wav.voice import pad_mel_to_codes, prompt_mel_24k
from model_service.token2wav.weights import fold_weight_norm


def _copy(tiny_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, dst)
    return dst


@pytest.mark.parametrize("name", ["flow.yaml", "flow.pt", "hift.pt"])
def test_missing_file_is_named(tiny_dir: Path, tmp_path: Path, name: str) -> None:
    root = _copy(tiny_dir, tmp_path)
    (root / "token2wav" / name).unlink()
    with pytest.raises(Token2WavFileError, match=name.replace(".", r"\.")):
        Token2Wav.load(root)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(Token2WavFileError, match="token2wav"):
        Token2Wav.load(tmp_path)


def test_wrong_shapes_name_the_tensor(tiny_dir: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dir, tmp_path)
    path = root / "token2wav" / "flow.pt"
    state = torch.load(path)
    state["encoder_proj.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(WeightsError, match="encoder_proj.weight"):
        Token2Wav.load(root)
    del state["encoder_proj.weight"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match="missing.*encoder_proj.weight"):
        Token2Wav.load(root)


def test_flow_yaml_with_hyperpyyaml_tags_is_read(tiny_dir: Path) -> None:
    t2w_dir = tiny_dir / "token2wav"
    assert "!new:" in (t2w_dir / "flow.yaml").read_text()
    raw = read_flow_yaml(t2w_dir / "flow.yaml")
    assert raw["flow"]["encoder"]["num_blocks"] == TINY_FLOW.encoder_blocks
    cfg = load_config(t2w_dir)
    assert cfg.flow.encoder_dim == TINY_FLOW.encoder_dim
    assert cfg.flow.dit_depth == TINY_FLOW.dit_depth and cfg.flow.cfg_rate == 0.7
    assert cfg.hift.base_channels == 16 and cfg.hift.hop == 480


def test_weight_norm_fold() -> None:
    v = torch.randn(4, 3, 5)
    g = torch.rand(4, 1, 1) + 0.5
    out = fold_weight_norm(
        {
            "c.parametrizations.weight.original0": g,
            "c.parametrizations.weight.original1": v,
            "d.weight_g": g,
            "d.weight_v": v,
            "c.bias": torch.zeros(4),
        }
    )
    expect = g * v / v.norm(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out["c.weight"], expect)
    torch.testing.assert_close(out["d.weight"], expect)
    assert set(out) == {"c.weight", "d.weight", "c.bias"}


def test_tiny_checkpoint_is_small_deterministic_and_audible(
    tiny_dir: Path, tmp_path: Path, t2w: Token2Wav, voice: Voice
) -> None:
    files = [p for p in (tiny_dir / "token2wav").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    again = build_tiny_token2wav(tmp_path / "again")
    for name in ("flow.pt", "hift.pt"):
        a = torch.load(tiny_dir / "token2wav" / name)
        b = torch.load(again / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "voices" / "default.wav").read_bytes() == (
        tiny_dir / "token2wav" / "voices" / "default.wav"
    ).read_bytes()
    assert any(
        k.startswith("generator.") and "parametrizations" in k
        for k in torch.load(again / "hift.pt")
    )
    audio = t2w.synthesize(voice, np.random.default_rng(3).integers(0, 6561, 50).tolist())
    rms = float(np.sqrt(np.mean(audio**2)))
    assert 0.03 < rms < 0.3, rms
    assert np.abs(audio).max() < 0.99  # not clipped


def test_voice_cache_and_reload_on_change(t2w: Token2Wav, voice: Voice, tmp_path: Path) -> None:
    path = tmp_path / "v.npz"
    save_voice_npz(voice, path)
    v1 = t2w.prepare_voice(path)
    assert t2w.prepare_voice(path) is v1
    np.testing.assert_array_equal(v1.codes, voice.codes)
    changed = Voice("v", voice.codes[:50], voice.embedding * 2, voice.mel[:100])
    save_voice_npz(changed, path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    v2 = t2w.prepare_voice(path)
    assert v2 is not v1 and len(v2.codes) == 50


def test_voice_next_to_wav_uses_npz(t2w: Token2Wav, tiny_dir: Path) -> None:
    wav = tiny_dir / "token2wav" / "voices" / "default.wav"
    v = t2w.prepare_voice(wav)
    assert v.mel.shape == (2 * len(v.codes), 80) and v.embedding.shape == (192,)
    assert len(v.codes) == 75  # 3 s at 25 Hz


def test_voice_errors(t2w: Token2Wav, tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        t2w.prepare_voice(tmp_path / "nope.wav")
    wav = tmp_path / "lonely.wav"
    shutil.copy(tiny_dir / "token2wav" / "voices" / "default.wav", wav)
    # no .npz and the tiny checkpoint ships no ONNX encoders -> a clear error naming the model
    with pytest.raises(FileNotFoundError, match=r"\.onnx"):
        t2w.prepare_voice(wav)
    with pytest.raises(ValueError, match="2 x"):
        Voice(
            "bad", np.zeros(10, np.int64), np.zeros(192, np.float32), np.zeros((19, 80), np.float32)
        )


def test_prompt_mel_rate_and_padding() -> None:
    wav = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    mel = prompt_mel_24k(wav)
    assert mel.shape == (50, 80)
    padded = pad_mel_to_codes(mel[:45], 25)
    assert padded.shape == (50, 80)
    np.testing.assert_array_equal(padded[45:], np.repeat(mel[44:45], 5, axis=0))


def test_dtype_names_and_half_precision_flow(tiny_dir: Path, voice: Voice, t2w: Token2Wav) -> None:
    half = Token2Wav.load(tiny_dir, dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and next(half.hift.parameters()).dtype == torch.float32
    codes = np.random.default_rng(5).integers(0, 6561, 20).tolist()
    a, b = half.synthesize(voice, codes), t2w.synthesize(voice, codes)
    assert a.shape == b.shape and np.isfinite(a).all()
    with pytest.raises(ValueError, match="dtype"):
        Token2Wav.load(tiny_dir, dtype="int8")
