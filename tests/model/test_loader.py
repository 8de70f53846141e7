"""Loading the official checkpoint layout: strict names, shapes, dtypes, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint
from model_service.stepaudio2 import loader as loader_mod
from model_service.stepaudio2.loader import CheckpointError, load_model
from model_service.stepaudio2.modeling import StepAudio2ForCausalLM


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3, shards=2)


@pytest.fixture()
def ckpt_copy(ckpt: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(ckpt, dst)
    return dst


def _shard_with(path: Path, name: str) -> Path:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path / index["weight_map"][name]


def test_layout_written(ckpt: Path) -> None:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["StepAudio2ForCausalLM"]
    assert cfg["model_type"] == "step_audio_2"
    assert cfg["text_config"]["vocab_size"] == 158720
    assert (ckpt / "tokenizer.json").is_file()
    assert (ckpt / "token2wav" / "flow.yaml").is_file()  # the tiny token2wav is included
    lm = load_model(ckpt, load_tokenizer=False)
    assert lm.token2wav_dir == ckpt / "token2wav"


def test_load_sharded_checkpoint_exactly(ckpt: Path) -> None:
    lm = load_model(ckpt)
    assert isinstance(lm.model, StepAudio2ForCausalLM)
    assert lm.path == ckpt and lm.config.text.hidden_size == 64
    assert lm.tokenizer.ids.eot == 151665 and lm.tokenizer.ids.audio_patch == 151690
    assert not lm.model.training
    raw = {}
    for f in sorted(ckpt.glob("model-*.safetensors")):
        raw.update(load_file(str(f)))
    sd = lm.model.state_dict()
    assert set(raw) == set(sd)
    for k, v in raw.items():
        assert torch.equal(sd[k], v), k
    # rotary buffers were rebuilt (not left on meta) and the model runs
    logits, _ = lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(logits).all()


def test_load_single_file_checkpoint(tmp_path: Path) -> None:
    p = build_tiny_checkpoint(tmp_path / "single", seed=3, shards=1, token2wav=False)
    assert (p / "model.safetensors").is_file()
    assert not (p / "model.safetensors.index.json").exists()
    lm = load_model(p, load_tokenizer=False)
    assert lm.tokenizer is None
    assert lm.model.lm_head.weight.shape == (158720, 64)


def test_same_seed_same_weights(ckpt: Path, tmp_path: Path) -> None:
    other = build_tiny_checkpoint(tmp_path / "again", seed=3, shards=1, token2wav=False)
    a = load_model(ckpt, load_tokenizer=False).model.state_dict()
    b = load_model(other, load_tokenizer=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "dtype,expected",
    [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("auto", torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype_selection(ckpt: Path, dtype: object, expected: torch.dtype) -> None:
    lm = load_model(ckpt, dtype=dtype, load_tokenizer=False)  # type: ignore[arg-type]
    dtypes = {p.dtype for p in lm.model.parameters()}
    assert dtypes == {expected}


def test_bad_dtype_is_clear(ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="unknown dtype 'int8'"):
        load_model(ckpt, dtype="int8", load_tokenizer=False)


def test_missing_tensor_is_named(ckpt_copy: Path) -> None:
    name = "encoder.blocks.1.attn.key.weight"
    shard = _shard_with(ckpt_copy, name)
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard))
    with pytest.raises(
        CheckpointError, match=r"does not contain tensor encoder\.blocks\.1\.attn\.key"
    ):
        load_model(ckpt_copy, load_tokenizer=False)
    # and when the index agrees, it is reported as missing from the checkpoint
    index_path = ckpt_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"missing tensor\(s\): encoder\.blocks\.1\.attn\.key"
    ):
        load_model(ckpt_copy, load_tokenizer=False)


def test_unexpected_tensor_is_named(ckpt_copy: Path) -> None:
    shard = _shard_with(ckpt_copy, "lm_head.weight")
    tensors = load_file(str(shard))
    tensors["encoder.blocks.0.attn.key.bias"] = torch.zeros(64)
    save_file(tensors, str(shard))
    index_path = ckpt_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["encoder.blocks.0.attn.key.bias"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"unexpected tensor\(s\): encoder\.blocks\.0\.attn\.key\.bias"
    ):
        load_model(ckpt_copy, load_tokenizer=False)


def test_shape_mismatch_names_tensor_and_shapes(ckpt_copy: Path) -> None:
    name = "adapter.linear2.weight"
    shard = _shard_with(ckpt_copy, name)
    tensors = load_file(str(shard))
    tensors[name] = torch.zeros(32, 2048)
    save_file(tensors, str(shard))
    with pytest.raises(
        CheckpointError,
        match=r"adapter\.linear2\.weight has shape \(32, 2048\).*expects \(64, 2048\)",
    ):
        load_model(ckpt_copy, load_tokenizer=False)


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_missing_shard_file_is_named(ckpt_copy: Path) -> None:
    (ckpt_copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_model(ckpt_copy, load_tokenizer=False)


def test_hub_id_without_network_is_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> str:  # the Hub is an external edge
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="download the model|Download the model"):
        load_model("stepfun-ai/Step-Audio-2-mini")
    assert loader_mod.CheckpointError is CheckpointError


def test_auto_dtype_uses_config_but_float32_on_cpu(ckpt_copy: Path) -> None:
    cfg_path = ckpt_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg))
    lm = load_model(ckpt_copy, dtype="auto", load_tokenizer=False)
    assert lm.config.torch_dtype == "bfloat16"
    assert lm.model.dtype == torch.float32  # CPU half-precision kernels are slow; auto avoids them
    assert loader_mod.resolve_dtype("auto", lm.config) == torch.bfloat16  # what a GPU gets
