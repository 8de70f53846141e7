"""A ``transformers`` config class for ``model_type: step_audio_2``, so vLLM can read config.json.

transformers does not know Step-Audio 2 and we never run the checkpoint's remote code, so the
plugin registers ``StepAudio2HFConfig`` with ``AutoConfig``. It wraps our validated
``stepaudio2.config.StepAudio2Config``: ``text_config`` is the decoder's ``Qwen2Config`` (what vLLM
sizes the KV cache and builds ``Qwen2ForCausalLM`` from) and ``audio_encoder_config`` the
encoder/adapter geometry. Needs transformers only, so it is tested without vllm.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig, Qwen2Config

from model_service.stepaudio2.config import StepAudio2Config

MODEL_TYPE = "step_audio_2"


class StepAudio2HFConfig(PretrainedConfig):
    """config.json of a Step-Audio 2 checkpoint as a ``PretrainedConfig`` (composite: text + audio)."""

    model_type = MODEL_TYPE
    sub_configs = {"text_config": Qwen2Config}

    def __init__(
        self,
        text_config: dict[str, Any] | Qwen2Config | None = None,
        audio_encoder_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(text_config, Qwen2Config):
            text_config = text_config.to_dict()
        text_dict = dict(text_config or {"hidden_size": 3584})
        audio_dict = dict(audio_encoder_config or {})
        # Our config class validates the geometry and normalises text_config (kv groups, eos).
        parsed = StepAudio2Config.from_dict(
            {
                "text_config": text_dict,
                "audio_encoder_config": audio_dict
                or {"llm_dim": text_dict.get("hidden_size", 3584)},
                "torch_dtype": kwargs.get("torch_dtype") or kwargs.get("dtype") or "bfloat16",
            }
        )
        self.text_config = parsed.text
        self.audio_encoder_config = parsed.audio.to_dict()
        kwargs.setdefault("architectures", ["StepAudio2ForCausalLM"])
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def step_audio2_config(self) -> StepAudio2Config:
        """Our typed config (same geometry) for the modules shared with the reference model."""
        from model_service.stepaudio2.config import AudioEncoderConfig

        dtype = str(
            getattr(self, "torch_dtype", None) or getattr(self, "dtype", None) or "bfloat16"
        )
        dtype = dtype.removeprefix("torch.")
        return StepAudio2Config(
            text=self.text_config,
            audio=AudioEncoderConfig.from_dict(self.audio_encoder_config),
            torch_dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "bfloat16",
        )


def register_hf_config() -> None:
    """Make ``AutoConfig`` map ``model_type: step_audio_2`` to ``StepAudio2HFConfig`` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, StepAudio2HFConfig, exist_ok=True)


__all__ = ["MODEL_TYPE", "StepAudio2HFConfig", "register_hf_config"]
