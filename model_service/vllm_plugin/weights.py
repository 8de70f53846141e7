"""Checkpoint tensor names → parameter names of the vLLM Step-Audio 2 model (pure, no vllm).

The official checkpoint names its tensors ``encoder.*``, ``adapter.*``, ``model.*`` (the Qwen2
decoder) and ``lm_head.*``. Our vLLM model keeps ``encoder`` and ``adapter`` as they are and
holds vLLM's ``Qwen2ForCausalLM`` as ``language_model``, so ``model.X`` becomes
``language_model.model.X`` and ``lm_head.X`` becomes ``language_model.lm_head.X``. Inside the
decoder vLLM fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``
(``vllm_param_name`` gives the fused name a tensor ends up in). ``expected_param_names`` lists
every parameter the model has for a config, so a checkpoint can be checked for completeness
without building the model.
"""

from __future__ import annotations

from collections.abc import Iterable

from model_service.stepaudio2.config import StepAudio2Config

#: Checkpoint prefix → vLLM module prefix (first match wins).
PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("encoder.", "encoder."),
    ("adapter.", "adapter."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
#: Decoder projections vLLM stores fused: checkpoint piece → fused parameter piece.
FUSED: dict[str, str] = {
    ".self_attn.q_proj.": ".self_attn.qkv_proj.",
    ".self_attn.k_proj.": ".self_attn.qkv_proj.",
    ".self_attn.v_proj.": ".self_attn.qkv_proj.",
    ".mlp.gate_proj.": ".mlp.gate_up_proj.",
    ".mlp.up_proj.": ".mlp.gate_up_proj.",
}
#: Tensors some exports carry that no model parameter holds (recomputed buffers).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightNameError(ValueError):
    """A checkpoint tensor has no place in the model, or model parameters got no tensor."""


def is_ignored(name: str) -> bool:
    """Whether a checkpoint tensor is dropped on purpose (e.g. rotary ``inv_freq``)."""
    return name.endswith(IGNORED_SUFFIXES)


def vllm_weight_name(name: str) -> str:
    """The name a checkpoint tensor is handed to the vLLM model under (before q/k/v fusion)."""
    for src, dst in PREFIX_MAP:
        if name.startswith(src):
            return dst + name[len(src) :]
    known = ", ".join(src for src, _ in PREFIX_MAP)
    raise WeightNameError(f"checkpoint tensor {name!r} has no place in the model (known: {known})")


def vllm_param_name(name: str) -> str:
    """The vLLM parameter a checkpoint tensor is loaded into (fused names for q/k/v, gate/up)."""
    mapped = vllm_weight_name(name)
    if mapped.startswith("language_model.model."):
        for piece, fused in FUSED.items():
            if piece in mapped:
                return mapped.replace(piece, fused)
    return mapped


def expected_param_names(config: StepAudio2Config) -> set[str]:
    """Every parameter of the vLLM Step-Audio 2 model for ``config`` (fused decoder names)."""
    names: set[str] = set()
    wb = ("weight", "bias")
    enc = "encoder."
    names |= {f"{enc}conv1.{p}" for p in wb} | {f"{enc}conv2.{p}" for p in wb}
    names |= {f"{enc}positional_embedding.weight"} | {f"{enc}after_norm.{p}" for p in wb}
    for i in range(config.audio.n_audio_layer):
        b = f"{enc}blocks.{i}."
        names |= {f"{b}attn.{m}.{p}" for m in ("query", "value", "out") for p in wb}
        names.add(f"{b}attn.key.weight")  # the key projection has no bias
        names |= {f"{b}{ln}.{p}" for ln in ("attn_ln", "mlp_ln") for p in wb}
        names |= {f"{b}mlp.{k}.{p}" for k in (0, 2) for p in wb}
    names |= {f"adapter.{m}.{p}" for m in ("conv", "linear1", "linear2") for p in wb}
    lm = "language_model.model."
    names.add(f"{lm}embed_tokens.weight")
    names.add(f"{lm}norm.weight")
    for i in range(config.text.num_hidden_layers):
        b = f"{lm}layers.{i}."
        names |= {f"{b}self_attn.qkv_proj.{p}" for p in wb}  # q/k/v carry a bias in Qwen2
        names.add(f"{b}self_attn.o_proj.weight")
        names |= {f"{b}mlp.gate_up_proj.weight", f"{b}mlp.down_proj.weight"}
        names |= {f"{b}input_layernorm.weight", f"{b}post_attention_layernorm.weight"}
    names.add("language_model.lm_head.weight")
    return names


def missing_params(model_params: Iterable[str], loaded: Iterable[str]) -> list[str]:
    """Model parameters that no checkpoint tensor filled (sorted)."""
    return sorted(set(model_params) - set(loaded))


def check_checkpoint_names(names: Iterable[str], config: StepAudio2Config) -> None:
    """Raise ``WeightNameError`` unless ``names`` fill every parameter and nothing else."""
    got: set[str] = set()
    for name in names:
        if not is_ignored(name):
            got.add(vllm_param_name(name))  # raises on names with no place
    expected = expected_param_names(config)
    missing = sorted(expected - got)
    extra = sorted(got - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing: {_fmt(missing)}")
        if extra:
            parts.append(f"unexpected: {_fmt(extra)}")
        raise WeightNameError("checkpoint does not match the vLLM model: " + "; ".join(parts))


def _fmt(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


__all__ = [
    "FUSED",
    "PREFIX_MAP",
    "WeightNameError",
    "check_checkpoint_names",
    "expected_param_names",
    "is_ignored",
    "missing_params",
    "vllm_param_name",
    "vllm_weight_name",
]
