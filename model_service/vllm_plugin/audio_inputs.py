"""How audio travels from our prompt builder into the vLLM model (pure; no vllm import).

Our ``PromptBuilder`` renders each audio chunk as ``<audio_start>`` + N × ``<audio_patch>`` +
``<audio_end>``. vLLM wants one placeholder per multimodal item that its processor expands, so
the request carries the *collapsed* prompt (one ``<audio_patch>`` per chunk,
``collapse_audio_placeholders``) and the chunks' log-mels as
``multi_modal_data={"audio": {"audio_mels": [mel, ...]}}`` (``audio_mm_data``). The processor
(``step_audio2.py``) replaces each patch with ``patch_counts`` patches again
(``expand_audio_placeholders`` is the same expansion as a function), and the model encodes the
mels with ``encode_mels`` (encoder + adapter, exactly like the reference model's
``encode_audio``) and merges the features at the patch positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from model_service.stepaudio2.mel import MAX_MEL_FRAMES, N_MELS, AudioInputError, audio_token_count

#: Key of the mel list inside ``multi_modal_data["audio"]``.
MELS_FIELD = "audio_mels"


def check_mel(mel: Any, index: int = 0) -> torch.Tensor:
    """A mel chunk as a float32 CPU tensor ``[128, T]``; raises ``AudioInputError`` if unusable."""
    t = torch.as_tensor(mel)
    if t.dim() != 2 or t.shape[0] != N_MELS:
        raise AudioInputError(
            f"audio chunk {index}: mel has shape {tuple(t.shape)}, expected [128, T]"
        )
    frames = int(t.shape[1])
    if frames > MAX_MEL_FRAMES:
        raise AudioInputError(
            f"audio chunk {index}: {frames} mel frames (> {MAX_MEL_FRAMES}, ~30 s); split into "
            "<= 25 s chunks"
        )
    if audio_token_count(frames) < 1:
        raise AudioInputError(f"audio chunk {index}: {frames} mel frames is too short")
    return t.detach().to("cpu", torch.float32).contiguous()


def patch_counts(mels: Sequence[Any]) -> list[int]:
    """``<audio_patch>`` tokens each mel chunk expands to."""
    return [audio_token_count(int(check_mel(m, i).shape[1])) for i, m in enumerate(mels)]


def audio_mm_data(mels: Sequence[Any]) -> dict[str, Any] | None:
    """``multi_modal_data`` for a request (None when the prompt has no audio)."""
    if not mels:
        return None
    return {"audio": {MELS_FIELD: [check_mel(m, i) for i, m in enumerate(mels)]}}


def mels_from_mm_data(mm_data: Mapping[str, Any] | None) -> list[torch.Tensor]:
    """The mel chunks inside ``multi_modal_data`` (inverse of ``audio_mm_data``)."""
    if not mm_data:
        return []
    audio = mm_data.get("audio")
    return [] if audio is None else parse_audio_items(audio)


def parse_audio_items(data: Any) -> list[torch.Tensor]:
    """``multi_modal_data["audio"]`` as vLLM's processor sees it → checked mel chunks.

    Accepts our request form (``{"audio_mels": [mel, ...]}``) and a plain list of ``[128, T]``
    mels (vLLM re-parses cache-missing items in that form). Raw waveforms are refused: the
    backend computes mels itself while the user speaks.
    """
    if isinstance(data, Mapping):
        if MELS_FIELD not in data:
            raise AudioInputError(
                f'Step-Audio 2 audio input must be {{"{MELS_FIELD}": [mel [128, T], ...]}}, '
                f"got keys {sorted(data)}"
            )
        items = split_batched(data[MELS_FIELD])
    elif isinstance(data, torch.Tensor) and data.dim() == 2:
        items = [data]
    elif isinstance(data, (list, tuple)) or (isinstance(data, torch.Tensor) and data.dim() == 3):
        items = split_batched(data)
    else:
        raise AudioInputError(
            f"Step-Audio 2 audio input must be log-mel chunks [128, T], got {type(data).__name__}"
        )
    for i, item in enumerate(items):
        if torch.as_tensor(item).dim() == 1:
            raise AudioInputError(
                f"audio item {i} is a waveform; send log-mels (stepaudio2.mel.log_mel_spectrogram)"
            )
    return [check_mel(m, i) for i, m in enumerate(items)]


def split_batched(value: Any) -> list[torch.Tensor]:
    """A batched field as vLLM may hand it over (list of tensors or one stacked tensor) → list."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 2:
            return [value]
        return list(value.unbind(0))
    return [torch.as_tensor(v) for v in value]


def collapse_audio_placeholders(
    ids: Sequence[int], runs: Sequence[tuple[int, int]], patch_id: int
) -> list[int]:
    """Replace every audio chunk's run of patches by a single ``<audio_patch>``.

    ``runs`` are ``(start, n_patches)`` per chunk in prompt order (``AudioSlot.start`` /
    ``n_patches``); every position they cover must hold ``patch_id`` and no patch may sit
    outside them.
    """
    out: list[int] = []
    pos = 0
    for k, (start, n) in enumerate(runs):
        if start < pos or n < 1 or start + n > len(ids):
            raise ValueError(f"audio chunk {k}: bad patch run (start {start}, {n} patches)")
        if any(int(t) != patch_id for t in ids[start : start + n]):
            raise ValueError(
                f"audio chunk {k}: positions {start}..{start + n - 1} are not all patches"
            )
        out.extend(int(t) for t in ids[pos:start])
        out.append(patch_id)
        pos = start + n
    out.extend(int(t) for t in ids[pos:])
    if sum(1 for t in out if t == patch_id) != len(runs):
        raise ValueError("the prompt has <audio_patch> tokens outside its audio chunks")
    return out


def expand_audio_placeholders(
    ids: Sequence[int], counts: Sequence[int], patch_id: int
) -> list[int]:
    """Inverse of ``collapse_audio_placeholders``: the i-th patch becomes ``counts[i]`` patches."""
    n_patches = sum(1 for t in ids if int(t) == patch_id)
    if n_patches != len(counts):
        raise ValueError(
            f"prompt has {n_patches} <audio_patch> placeholders but {len(counts)} audio chunks"
        )
    out: list[int] = []
    k = 0
    for t in ids:
        if int(t) == patch_id:
            if counts[k] < 1:
                raise ValueError(f"audio chunk {k} expands to {counts[k]} patches")
            out.extend([patch_id] * int(counts[k]))
            k += 1
        else:
            out.append(int(t))
    return out


def encode_mels(
    encoder: torch.nn.Module,
    adapter: torch.nn.Module,
    mels: Sequence[torch.Tensor],
    out_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Mel chunks ``[128, T_i]`` → LLM features ``[audio_token_count(T_i), hidden]`` each.

    Zero-padded batch through ``AudioEncoder`` (valid lengths ``T - 2``) and ``Adapter``; equal to
    ``StepAudio2ForCausalLM.encode_audio``.
    """
    if not mels:
        return []
    checked = [check_mel(m, i) for i, m in enumerate(mels)]
    lens = [int(m.shape[1]) for m in checked]
    weight = encoder.conv1.weight
    batch = torch.zeros(len(checked), N_MELS, max(lens), dtype=weight.dtype, device=weight.device)
    for i, m in enumerate(checked):
        batch[i, :, : lens[i]] = m.to(device=weight.device, dtype=weight.dtype)
    mel_lens = torch.tensor(lens, device=weight.device)
    feats, _own, _valid = encoder(batch, mel_lens, mel_lens - 2)
    out = adapter(feats)
    dtype = out_dtype or out.dtype
    return [out[i, : audio_token_count(t)].to(dtype) for i, t in enumerate(lens)]


__all__ = [
    "MELS_FIELD",
    "audio_mm_data",
    "check_mel",
    "collapse_audio_placeholders",
    "encode_mels",
    "expand_audio_placeholders",
    "mels_from_mm_data",
    "parse_audio_items",
    "patch_counts",
    "split_batched",
]
