"""Load a Step-Audio 2 checkpoint (official layout) into :class:`StepAudio2ForCausalLM`.

Layout: ``config.json``; ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` shards with
``model.safetensors.index.json``; tokenizer files; ``token2wav/``. Weights are read lazily
tensor by tensor (``safetensors.safe_open``) into a model built on the meta device, so peak
memory stays near one copy of the weights. Every checkpoint tensor must map onto a model
parameter and vice versa; anything else is a :class:`CheckpointError` naming the tensors.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, StepAudio2Config
from .modeling import StepAudio2ForCausalLM

log = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class CheckpointError(RuntimeError):
    """The checkpoint is missing, unreadable, or does not match the model definition."""


@dataclass
class LoadedModel:
    """A ready-to-run model with its tokenizer, config and checkpoint directory."""

    model: StepAudio2ForCausalLM
    tokenizer: Any  # model_service.stepaudio2.tokenizer.StepAudio2Tokenizer (None if skipped)
    config: StepAudio2Config
    path: Path

    @property
    def token2wav_dir(self) -> Path:
        return self.path / "token2wav"


def resolve_dtype(dtype: str | torch.dtype, config: StepAudio2Config | None = None) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16" | "auto"`` (or a torch dtype) to a torch dtype.

    ``"auto"`` uses the config's ``torch_dtype``, except that half precision on CPU becomes
    float32 (CPU half kernels are slow or missing).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower()
    if key == "auto":
        return _DTYPES[config.torch_dtype if config is not None else "float32"]
    if key not in _DTYPES:
        raise CheckpointError(
            f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16, auto"
        )
    return _DTYPES[key]


def resolve_checkpoint_dir(path_or_hub_id: str | Path) -> Path:
    """A local checkpoint directory, downloading ``owner/name`` hub ids when possible."""
    p = Path(path_or_hub_id).expanduser()
    if p.is_dir():
        return p
    s = str(path_or_hub_id)
    looks_like_hub_id = s.count("/") == 1 and not s.startswith((".", "/", "~")) and not p.exists()
    if not looks_like_hub_id:
        raise CheckpointError(f"checkpoint directory {s!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=s))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear error
        raise CheckpointError(
            f"{s!r} is not a local directory and downloading it from the Hugging Face Hub "
            f"failed ({type(e).__name__}: {e}). Download the model (e.g. "
            f"`huggingface-cli download {s} --local-dir DIR`) and pass the local path."
        ) from e


def checkpoint_tensor_files(ckpt: Path) -> dict[str, Path]:
    """Tensor name → safetensors file, from the index or a single ``model.safetensors``."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from e
        files = {name: ckpt / fname for name, fname in weight_map.items()}
        missing_files = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if missing_files:
            raise CheckpointError(
                f"{ckpt}: shard file(s) listed in the index are missing: "
                + ", ".join(missing_files)
            )
        return files
    single = ckpt / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}
    raise CheckpointError(f"{ckpt} has no model.safetensors.index.json and no model.safetensors")


def _fmt(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


def load_model(
    path_or_hub_id: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    load_tokenizer: bool = True,
) -> LoadedModel:
    """Load config, weights (strictly) and tokenizer; returns a :class:`LoadedModel` in eval mode."""
    ckpt = resolve_checkpoint_dir(path_or_hub_id)
    try:
        config = StepAudio2Config.from_pretrained(ckpt)
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: {e}") from e
    torch_dtype = resolve_dtype(dtype, config)
    if str(dtype).lower() == "auto" and torch.device(device).type == "cpu":
        torch_dtype = torch.float32
    dev = torch.device(device)

    with torch.device("meta"):
        model = StepAudio2ForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    files = checkpoint_tensor_files(ckpt)
    missing = sorted(set(expected) - set(files))
    unexpected = sorted(set(files) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected tensor(s): {_fmt(unexpected)}")
        raise CheckpointError(f"{ckpt}: checkpoint does not match the model: " + "; ".join(parts))

    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in sorted(by_file.items()):
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            available = set(sf.keys())
            for name in sorted(names):
                if name not in available:
                    raise CheckpointError(
                        f"{f.name} does not contain tensor {name} (index is wrong)"
                    )
                t = sf.get_tensor(name)
                if tuple(t.shape) != expected[name]:
                    raise CheckpointError(
                        f"tensor {name} has shape {tuple(t.shape)} in {f.name}, "
                        f"but the model expects {expected[name]}"
                    )
                state[name] = t.to(device=dev, dtype=torch_dtype)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    _rebuild_buffers(model, dev)
    model.eval()
    model.requires_grad_(False)

    tokenizer = None
    if load_tokenizer:
        from transformers.utils import logging as hf_logging

        from .tokenizer import StepAudio2Tokenizer  # lazy: optional for weight-only uses

        # trust_remote_code=False: config.json has an auto_map; never prompt or run remote code.
        # (transformers also warns that "step_audio_2" is not a model type it knows; silence it.)
        previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = StepAudio2Tokenizer.from_pretrained(ckpt, trust_remote_code=False)
        finally:
            hf_logging.set_verbosity(previous)
    log.info("loaded Step-Audio 2 from %s (%s on %s)", ckpt, torch_dtype, dev)
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, path=ckpt)


def _rebuild_buffers(model: StepAudio2ForCausalLM, device: torch.device) -> None:
    """Recreate non-persistent buffers (rotary inv_freq) that the meta build left empty."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    model.model.rotary_emb = Qwen2RotaryEmbedding(config=model.config.text).to(device)
    leftovers = [n for n, b in model.named_buffers() if b.is_meta]
    leftovers += [n for n, p in model.named_parameters() if p.is_meta]
    if leftovers:
        raise CheckpointError(f"tensors left uninitialised after loading: {_fmt(leftovers)}")
