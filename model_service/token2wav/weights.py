"""Loading ``flow.pt`` / ``hift.pt`` state dicts into our modules.

Name mapping we assume (the official files could not be downloaded here to verify):

flow.pt (``CausalMaskedDiffWithXvec``) -> ``CausalMaskedDiffWithXvec`` in ``flow.py``: identity.
    input_embedding.weight, spk_embed_affine_layer.*, encoder_proj.*,
    encoder.embed.out.{0,1}.*, encoder.pre_lookahead_layer.conv{1,2}.*,
    encoder.encoders.N.{self_attn.linear_{q,k,v,out,pos},self_attn.pos_bias_{u,v},
    feed_forward.w_{1,2},norm_mha,norm_ff}.*, encoder.up_layer.conv.*, encoder.up_embed.out.*,
    encoder.up_encoders.N.*, encoder.after_norm.*,
    decoder.estimator.{t_embedder.mlp.{0,2},in_proj,blocks.N.{attn.to_{q,k,v},attn.{q,k}_norm,
    attn.proj,mlp.fc{1,2},conv.block.{1,3,6},adaLN_modulation.1},final_layer.{adaLN_modulation.1,
    linear}}.*
    Dropped if present: non-parameter buffers such as ``decoder.rand_noise`` or ``*.pe``.

hift.pt (``HiFTGenerator``) -> ``HiFTGenerator`` in ``hift.py``:
    a leading ``generator.`` is stripped; weight-normed convs are folded:
    ``X.weight_g`` + ``X.weight_v`` (old API) or ``X.parametrizations.weight.original0`` (g) +
    ``...original1`` (v) (new API) -> ``X.weight = g * v / ||v||`` (norm over all dims but 0).
    Everything else (``m_source.l_linear``, ``f0_predictor.classifier``, Snake ``alpha``) by name.

Both loads are strict: a missing or unexpected tensor, or a shape mismatch, raises
``WeightsError`` naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

_IGNORED_SUFFIXES = ("rand_noise", ".pe", "stft_window")


class WeightsError(RuntimeError):
    """A token2wav weight file does not match the configured network."""


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm (g, v) pairs by plain ``weight`` tensors."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            pairs.setdefault(key[: -len(".weight_g")], {})["g"] = value
        elif key.endswith(".weight_v"):
            pairs.setdefault(key[: -len(".weight_v")], {})["v"] = value
        elif key.endswith(".parametrizations.weight.original0"):
            pairs.setdefault(key[: -len(".parametrizations.weight.original0")], {})["g"] = value
        elif key.endswith(".parametrizations.weight.original1"):
            pairs.setdefault(key[: -len(".parametrizations.weight.original1")], {})["v"] = value
        else:
            out[key] = value
    for base, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise WeightsError(f"weight-norm tensor {base!r} is missing its g or v half")
        v = gv["v"].float()
        dims = tuple(range(1, v.dim()))
        norm = v.norm(dim=dims, keepdim=True).clamp_min(1e-12)
        out[base + ".weight"] = (gv["g"].float() * v / norm).to(gv["v"].dtype)
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict")
    return obj


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise WeightsError(
            f"{source}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    if unexpected:
        raise WeightsError(
            f"{source}: unexpected tensor(s) {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)}, the config expects "
                f"{tuple(own[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


def load_flow_weights(module: nn.Module, path: Path) -> None:
    load_state_strict(module, _read(path), str(path))


def load_hift_weights(module: nn.Module, path: Path) -> None:
    state = {k.removeprefix("generator."): v for k, v in _read(path).items()}
    load_state_strict(module, fold_weight_norm(state), str(path))
