"""vLLM plugin that adds Step-Audio 2 (``StepAudio2ForCausalLM``) to a stock vLLM.

vLLM calls ``register()`` in every process it starts (API server, engine core, workers) through
the ``vllm.general_plugins`` entry point::

    [project.entry-points."vllm.general_plugins"]
    stepcall_step_audio2 = "model_service.vllm_plugin:register"

``register()`` teaches ``AutoConfig`` the ``step_audio_2`` model type and registers the model
class lazily (by import path), so loading the plugin imports neither vllm's model code nor CUDA.
The in-process backend (``model_service.backends.vllm``) also calls it before building the engine.

Modules: ``step_audio2`` (the vLLM model + multimodal processor; needs vllm), ``hf_config``,
``audio_inputs`` and ``weights`` (pure; tested without vllm).
"""

from __future__ import annotations

ARCHITECTURE = "StepAudio2ForCausalLM"
MODEL_CLASS_PATH = "model_service.vllm_plugin.step_audio2:StepAudio2ForCausalLM"


def register() -> None:
    """Register Step-Audio 2's config with transformers and its model class with vLLM."""
    from model_service.vllm_plugin.hf_config import register_hf_config

    register_hf_config()
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS_PATH)


__all__ = ["ARCHITECTURE", "MODEL_CLASS_PATH", "register"]
