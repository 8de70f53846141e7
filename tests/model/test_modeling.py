"""Config validation, module/weight names, audio encoding and embedding injection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from harness.checkpoints.tiny_checkpoint import TINY_CONFIG
from model_service.stepaudio2.config import ConfigError, StepAudio2Config
from model_service.stepaudio2.mel import AudioInputError, audio_token_count, log_mel_spectrogram
from model_service.stepaudio2.modeling import StepAudio2ForCausalLM

PATCH = 151690


@pytest.fixture(scope="module")
def model() -> StepAudio2ForCausalLM:
    torch.manual_seed(0)
    m = StepAudio2ForCausalLM(StepAudio2Config.from_dict(TINY_CONFIG)).eval()
    return m


def _cfg(**text_or_audio: object) -> dict:
    d = copy.deepcopy(TINY_CONFIG)
    for k, v in text_or_audio.items():
        section, key = k.split("__")
        d[section][key] = v
    return d


def test_config_parses_tiny_and_merges_eos() -> None:
    cfg = StepAudio2Config.from_dict(TINY_CONFIG)
    assert cfg.text.hidden_size == 64 and cfg.text.num_key_value_heads == 2
    assert cfg.audio.n_audio_ctx == 1500 and cfg.audio.llm_dim == 64
    assert cfg.torch_dtype == "float32"
    assert cfg.eos_token_ids[:3] == [151643, 151645, 151665]
    assert cfg.text.rope_parameters["rope_theta"] == 1e6
    assert cfg.text.tie_word_embeddings is False


@pytest.mark.parametrize(
    "change,match",
    [
        ({"text_config__num_attention_groups": 4}, "num_attention_groups"),
        ({"audio_encoder_config__llm_dim": 32}, "llm_dim"),
        (
            {
                "text_config__num_attention_heads": 3,
                "text_config__num_attention_groups": 3,
                "text_config__num_key_value_heads": 3,
            },
            "hidden_size .* not divisible",
        ),
        (
            {"text_config__num_key_value_heads": 3, "text_config__num_attention_groups": 3},
            "num_attention_heads .* not divisible",
        ),
        ({"audio_encoder_config__n_audio_head": 5}, "n_audio_state"),
        ({"audio_encoder_config__n_mels": 80}, "n_mels"),
    ],
)
def test_config_rejects_bad_geometry(change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        StepAudio2Config.from_dict(_cfg(**change))


def test_config_requires_sections() -> None:
    with pytest.raises(ConfigError, match="audio_encoder_config"):
        StepAudio2Config.from_dict({"text_config": TINY_CONFIG["text_config"]})


def test_weight_names_match_official(model: StepAudio2ForCausalLM) -> None:
    names = set(model.state_dict())
    expected = {
        "encoder.conv1.weight",
        "encoder.conv1.bias",
        "encoder.conv2.weight",
        "encoder.conv2.bias",
        "encoder.positional_embedding.weight",
        "encoder.after_norm.weight",
        "encoder.after_norm.bias",
        "adapter.conv.weight",
        "adapter.conv.bias",
        "adapter.linear1.weight",
        "adapter.linear1.bias",
        "adapter.linear2.weight",
        "adapter.linear2.bias",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    }
    for i in range(2):
        b = f"encoder.blocks.{i}."
        expected |= {b + f"attn.{n}.weight" for n in ("query", "key", "value", "out")}
        expected |= {b + f"attn.{n}.bias" for n in ("query", "value", "out")}
        expected |= {b + f"{ln}.{p}" for ln in ("attn_ln", "mlp_ln") for p in ("weight", "bias")}
        expected |= {b + f"mlp.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")}
        lyr = f"model.layers.{i}."
        expected |= {lyr + f"self_attn.{n}_proj.weight" for n in "qkvo"}
        expected |= {lyr + f"self_attn.{n}_proj.bias" for n in "qkv"}
        expected |= {lyr + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
        expected |= {lyr + f"{n}_layernorm.weight" for n in ("input", "post_attention")}
    assert names == expected
    sd = model.state_dict()
    assert tuple(sd["adapter.linear1.weight"].shape) == (2048, 64)
    assert tuple(sd["encoder.positional_embedding.weight"].shape) == (1500, 64)
    assert sd["lm_head.weight"].data_ptr() != sd["model.embed_tokens.weight"].data_ptr()


def _mel(secs: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return log_mel_spectrogram(0.1 * rng.standard_normal(int(secs * 16000)).astype(np.float32))


def test_encode_audio_lengths_and_batch_invariance(model: StepAudio2ForCausalLM) -> None:
    mels = [_mel(1.0, 1), _mel(0.37, 2), _mel(2.013, 3), _mel(0.05, 4)]
    feats = model.encode_audio(mels)
    for m, f in zip(mels, feats, strict=True):
        assert tuple(f.shape) == (audio_token_count(m.shape[1]), 64)
    alone = [model.encode_audio([m])[0] for m in mels]
    for a, b in zip(alone, feats, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_encode_audio_rejects_bad_chunks(model: StepAudio2ForCausalLM) -> None:
    with pytest.raises(AudioInputError, match="too short"):
        model.encode_audio([torch.zeros(128, 4)])
    with pytest.raises(AudioInputError, match="split audio"):
        model.encode_audio([torch.zeros(128, 3001)])
    with pytest.raises(AudioInputError, match="expected \\[128, T\\]"):
        model.encode_audio([torch.zeros(80, 100)])


def test_embed_injects_features_at_patch_positions(model: StepAudio2ForCausalLM) -> None:
    f1, f2 = torch.randn(3, 64), torch.randn(2, 64)
    ids = torch.tensor([[10, 151688, PATCH, PATCH, PATCH, 151689, 11, 151688, PATCH, PATCH, 12]])
    emb = model.embed(ids, [f1, f2], PATCH)
    torch.testing.assert_close(emb[0, 2:5], f1)
    torch.testing.assert_close(emb[0, 8:10], f2)
    plain = model.model.embed_tokens(ids)
    torch.testing.assert_close(emb[0, [0, 1, 5, 6, 7, 10]], plain[0, [0, 1, 5, 6, 7, 10]])
    with pytest.raises(ValueError, match="5 <audio_patch>.*4 frames"):
        model.embed(ids, [f1, f2[:1]], PATCH)


def test_forward_with_cache_matches_full_forward(model: StepAudio2ForCausalLM) -> None:
    ids = torch.tensor([[5, 17, 151693, 151700, 151701, 42, 151665]])
    with torch.no_grad():
        full, _ = model(input_ids=ids)
        part, cache = model(input_ids=ids[:, :4])
        rest, cache = model(input_ids=ids[:, 4:], past_key_values=cache)
        last, _ = model(input_ids=ids, logits_to_keep=1)
    assert tuple(full.shape) == (1, 7, 158720)
    torch.testing.assert_close(torch.cat([part, rest], dim=1), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last[0, 0], full[0, -1])
    assert cache.get_seq_length() == 7
    with pytest.raises(ValueError, match="exactly one"):
        model()
