"""A tiny, random, deterministic token2wav checkpoint in the official file layout, for CPU tests.

``build_tiny_token2wav(out_dir)`` writes ``<out_dir>/token2wav/``:

* ``flow.yaml`` - hyperpyyaml-style (tags included, as upstream) with shrunk sizes;
* ``config.json`` - our addition: shrunk HiFT sizes (upstream builds HiFT with defaults);
* ``flow.pt`` / ``hift.pt`` - torch state dicts under the official names (``hift.pt`` with the
  ``generator.`` prefix and weight-norm ``parametrizations`` pairs, like upstream);
* ``voices/default.wav`` (3 s of synthetic voiced audio, 24 kHz PCM16) and ``voices/default.npz``
  (its codes, x-vector and mel - precomputed because the ONNX encoders can't be randomised).

No ONNX files are written. Weights are seeded; the vocoder's output gain is calibrated so random
codes give audio with RMS ~0.1 (audible, not clipped). Total size ~1.2 MB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from model_service.token2wav.config import SAMPLE_RATE, FlowConfig, HiFTConfig, Token2WavConfig
from model_service.token2wav.engine import Token2Wav
from model_service.token2wav.flow import CausalMaskedDiffWithXvec
from model_service.token2wav.hift import HiFTGenerator
from model_service.token2wav.voice import Voice, pad_mel_to_codes, prompt_mel_24k, save_voice_npz

SEED = 20250
TARGET_RMS = 0.1

TINY_FLOW = FlowConfig(
    input_size=32,
    encoder_dim=32,
    encoder_heads=2,
    encoder_ffn=64,
    encoder_blocks=2,
    encoder_up_blocks=1,
    dit_hidden=32,
    dit_depth=2,
    dit_heads=2,
    dit_head_dim=16,
    dit_mlp_ratio=2.0,
)
TINY_HIFT = HiFTConfig(base_channels=16, f0_cond_channels=16, f0_num_convs=2)

_FLOW_YAML = """\
# tiny random token2wav flow (test checkpoint); same structure as the official hyperpyyaml file
sample_rate: 24000
token_frame_rate: 25
token_mel_ratio: 2
flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithXvec
    input_size: {input_size}
    output_size: 80
    spk_embed_dim: 192
    output_type: 'mel'
    vocab_size: 6561
    encoder: !new:cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
        input_size: {input_size}
        output_size: {encoder_dim}
        input_layer: 'linear'
        pre_lookahead_len: {pre_lookahead_len}
        num_blocks: {encoder_blocks}
        num_up_blocks: {encoder_up_blocks}
        up_stride: {up_stride}
        up_scale_factor: {up_stride}
        attention_heads: {encoder_heads}
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        key_bias: true
        linear_units: {encoder_ffn}
        normalize_before: true
    decoder: !new:cosyvoice2.flow.flow_matching.CausalConditionalCFM
        inference_cfg_rate: {cfg_rate}
        estimator: !new:cosyvoice2.flow.decoder_dit.DiT
            in_channels: 320
            out_channels: 80
            mlp_ratio: {dit_mlp_ratio}
            depth: {dit_depth}
            num_heads: {dit_heads}
            head_dim: {dit_head_dim}
            hidden_size: {dit_hidden}
"""


def _voice_audio(seconds: float = 3.0) -> np.ndarray:
    """A vowel-like harmonic signal with a wandering pitch and syllable envelope."""
    rng = np.random.default_rng(SEED)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    sig = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t - np.pi / 2) ** 2
    sig = sig * env + 0.01 * rng.standard_normal(n)
    sig = sig / np.max(np.abs(sig)) * 0.5
    return sig.astype(np.float32)


def _weight_norm_state(hift: HiFTGenerator) -> dict[str, torch.Tensor]:
    """hift state dict as upstream stores it: ``generator.`` prefix, weight-norm (g, v) pairs."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hift.state_dict().items():
        base = key[: -len(".weight")] if key.endswith(".weight") else None
        is_conv = base is not None and value.dim() == 3
        if is_conv:
            dims = tuple(range(1, value.dim()))
            g = value.norm(dim=dims, keepdim=True)
            out[f"generator.{base}.parametrizations.weight.original0"] = g.clone()
            out[f"generator.{base}.parametrizations.weight.original1"] = value.clone()
        else:
            out[f"generator.{key}"] = value.clone()
    return out


def build_tiny_token2wav(out_dir: str | Path) -> Path:
    """Write ``<out_dir>/token2wav/`` (tiny random weights + test voice); returns that directory."""
    t2w = Path(out_dir) / "token2wav"
    (t2w / "voices").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    cfg = Token2WavConfig(flow=TINY_FLOW, hift=TINY_HIFT)

    flow = CausalMaskedDiffWithXvec(cfg.flow)
    with torch.no_grad():
        flow.input_embedding.weight.normal_(0.0, 1.0)
    hift = HiFTGenerator(cfg.hift)
    with torch.no_grad():
        hift.f0_predictor.classifier.bias.fill_(150.0)  # voiced NSF source around 150 Hz
        hift.conv_post.weight.mul_(0.3)

    # test voice
    wav = _voice_audio()
    sf.write(str(t2w / "voices" / "default.wav"), wav, SAMPLE_RATE, subtype="PCM_16")
    rng = np.random.default_rng(SEED + 1)
    n_codes = int(round(len(wav) / SAMPLE_RATE * 25))
    voice = Voice(
        name="default",
        codes=rng.integers(0, 6561, n_codes).astype(np.int64),
        embedding=rng.standard_normal(192).astype(np.float32),
        mel=pad_mel_to_codes(prompt_mel_24k(wav), n_codes),
    )
    save_voice_npz(voice, t2w / "voices" / "default.npz")
    # the official checkpoint's voice names (assets/default_female.wav, default_male.wav)
    for i, name in enumerate(("default_female", "default_male")):
        sf.write(str(t2w / "voices" / f"{name}.wav"), wav, SAMPLE_RATE, subtype="PCM_16")
        named = Voice(
            name=name,
            codes=voice.codes,
            embedding=np.roll(voice.embedding, 17 * (i + 1)),
            mel=voice.mel,
        )
        save_voice_npz(named, t2w / "voices" / f"{name}.npz")

    # calibrate the vocoder gain: magnitude = exp(conv_post[:half]) so a bias shift scales audio
    engine = Token2Wav(cfg, flow, hift)
    probe = rng.integers(0, 6561, 40).tolist()
    half = cfg.hift.istft_n_fft // 2 + 1
    for _ in range(3):
        audio = engine.synthesize(voice, probe)
        rms = float(np.sqrt(np.mean(audio**2))) + 1e-9
        with torch.no_grad():
            hift.conv_post.bias[:half] += float(np.log(TARGET_RMS / rms))

    (t2w / "flow.yaml").write_text(_FLOW_YAML.format(**cfg.flow.__dict__), encoding="utf-8")
    (t2w / "config.json").write_text(
        json.dumps({"hift": cfg.to_dict()["hift"]}, indent=1, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    torch.save({k: v.clone() for k, v in flow.state_dict().items()}, t2w / "flow.pt")
    torch.save(_weight_norm_state(hift), t2w / "hift.pt")
    return t2w


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(build_tiny_token2wav(sys.argv[1] if len(sys.argv) > 1 else "tiny_checkpoint"))
