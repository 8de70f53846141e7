"""Step-Audio 2 mini configuration: the official ``config.json`` parsed into typed pieces.

``StepAudio2Config.text`` is a ``transformers.Qwen2Config`` built from ``text_config`` (the LLM),
``StepAudio2Config.audio`` an :class:`AudioEncoderConfig` built from ``audio_encoder_config``
(Whisper-style encoder + adapter). Inconsistent geometry raises :class:`ConfigError` naming the
offending keys, so a bad checkpoint fails at load time rather than deep inside a matmul.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from transformers import Qwen2Config

# Stop ids the official config class always adds: <|endoftext|>, <|im_end|>, <|EOT|>.
DEFAULT_EOS_IDS: tuple[int, ...] = (151643, 151645, 151665)

# The adapter's inner width is hard-coded in the official modelling code (not in the config).
ADAPTER_HIDDEN = 2048

_DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """The checkpoint's config.json is missing keys or describes an impossible geometry."""


@dataclass
class AudioEncoderConfig:
    """Geometry of the Whisper-style audio encoder and the adapter (``audio_encoder_config``)."""

    n_mels: int = 128
    n_audio_ctx: int = 1500
    n_audio_state: int = 1280
    n_audio_head: int = 20
    n_audio_layer: int = 32
    n_codebook_size: int = 4096
    llm_dim: int = 3584
    kernel_size: int = 3
    adapter_stride: int = 2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioEncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class StepAudio2Config:
    """The whole model config: LLM (``text``), audio encoder/adapter (``audio``) and weight dtype."""

    text: Qwen2Config
    audio: AudioEncoderConfig
    torch_dtype: str = "bfloat16"
    raw: dict[str, Any] | None = None

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.text.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]

    @classmethod
    def from_pretrained(cls, path: str | Path) -> StepAudio2Config:
        """Read ``config.json`` from a checkpoint directory (or the file itself)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise ConfigError(f"no config.json at {p}")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepAudio2Config:
        """Build and validate from the parsed ``config.json`` dict."""
        if "text_config" not in d:
            raise ConfigError("config.json has no 'text_config'")
        if "audio_encoder_config" not in d:
            raise ConfigError("config.json has no 'audio_encoder_config'")
        tc = dict(d["text_config"])
        groups = tc.pop("num_attention_groups", None)
        kv = tc.get("num_key_value_heads")
        if groups is not None and kv is not None and int(groups) != int(kv):
            raise ConfigError(
                f"text_config.num_attention_groups ({groups}) must equal "
                f"text_config.num_key_value_heads ({kv})"
            )
        if kv is None and groups is not None:
            tc["num_key_value_heads"] = int(groups)
        eos = tc.get("eos_token_id")
        eos_list = list(eos) if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        merged: list[int] = []
        for e in [*DEFAULT_EOS_IDS, *eos_list]:
            if int(e) not in merged:
                merged.append(int(e))
        tc["eos_token_id"] = merged
        tc.setdefault("pad_token_id", 151643)
        tc.pop("torch_dtype", None)
        tc.pop("dtype", None)
        tc["use_sliding_window"] = False
        tc["tie_word_embeddings"] = False
        text = Qwen2Config(**tc)
        text._attn_implementation = "sdpa"

        audio = AudioEncoderConfig.from_dict(d["audio_encoder_config"])
        dtype = str(
            d.get("torch_dtype")
            or d["text_config"].get("torch_dtype")
            or d["text_config"].get("dtype")
            or "bfloat16"
        )
        if dtype not in _DTYPES:
            raise ConfigError(f"torch_dtype {dtype!r} is not one of {_DTYPES}")
        cfg = cls(text=text, audio=audio, torch_dtype=dtype, raw=dict(d))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` for geometry the modelling code cannot run."""
        t, a = self.text, self.audio
        problems: list[str] = []
        if a.llm_dim != t.hidden_size:
            problems.append(
                f"audio_encoder_config.llm_dim ({a.llm_dim}) must equal "
                f"text_config.hidden_size ({t.hidden_size})"
            )
        if t.hidden_size % t.num_attention_heads:
            problems.append(
                f"text_config.hidden_size ({t.hidden_size}) is not divisible by "
                f"num_attention_heads ({t.num_attention_heads})"
            )
        if t.num_attention_heads % t.num_key_value_heads:
            problems.append(
                f"text_config.num_attention_heads ({t.num_attention_heads}) is not divisible by "
                f"num_key_value_heads ({t.num_key_value_heads})"
            )
        if a.n_audio_state % a.n_audio_head:
            problems.append(
                f"audio_encoder_config.n_audio_state ({a.n_audio_state}) is not divisible by "
                f"n_audio_head ({a.n_audio_head})"
            )
        if a.n_mels != 128:
            problems.append(f"audio_encoder_config.n_mels must be 128 (got {a.n_mels})")
        if a.kernel_size != 3 or a.adapter_stride != 2:
            problems.append(
                "audio_encoder_config.kernel_size/adapter_stride must be 3/2 "
                f"(got {a.kernel_size}/{a.adapter_stride}); the placeholder formula assumes them"
            )
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """A config.json-shaped dict (as read, when read from disk)."""
        if self.raw is not None:
            return dict(self.raw)
        t = self.text
        return {
            "architectures": ["StepAudio2ForCausalLM"],
            "model_type": "step_audio_2",
            "torch_dtype": self.torch_dtype,
            "text_config": {
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_attention_heads": t.num_attention_heads,
                "num_attention_groups": t.num_key_value_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "num_hidden_layers": t.num_hidden_layers,
                "max_position_embeddings": t.max_position_embeddings,
                "vocab_size": t.vocab_size,
                "rms_norm_eps": t.rms_norm_eps,
                "eos_token_id": self.eos_token_ids,
                "pad_token_id": t.pad_token_id,
                "rope_theta": t.rope_parameters["rope_theta"],
            },
            "audio_encoder_config": self.audio.to_dict(),
        }
