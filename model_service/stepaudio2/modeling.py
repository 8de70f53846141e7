"""Step-Audio 2 mini in plain PyTorch: audio encoder + adapter + Qwen2 LLM + untied LM head.

The module tree and parameter names equal the official checkpoint's, so its safetensors load
with no renaming (``encoder.*``, ``adapter.*``, ``model.*`` = ``transformers.Qwen2Model``,
``lm_head.weight``). Audio enters the LLM by overwriting the embeddings at the
``<audio_patch>`` positions with the adapter outputs, chunk by chunk in order.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, Qwen2Model

from .adapter import Adapter
from .config import StepAudio2Config
from .encoder import AudioEncoder
from .hf_compat import run_decoder
from .mel import MAX_MEL_FRAMES, N_MELS, AudioInputError, audio_token_count


class StepAudio2ForCausalLM(nn.Module):
    """The full speech-to-speech LLM; weights named like the official checkpoint."""

    def __init__(self, config: StepAudio2Config) -> None:
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config.audio)
        self.adapter = Adapter(config.audio)
        self.model = Qwen2Model(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.config.text.hidden_size

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this model."""
        return DynamicCache(config=self.config.text)

    # ------------------------------------------------------------------ audio
    @torch.no_grad()
    def encode_audio(self, mels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mel chunks ``[128, T_i]`` → LLM-space features ``[audio_token_count(T_i), hidden]``.

        Chunks are batched with zero padding; results equal encoding each chunk alone.
        """
        if not mels:
            return []
        lens: list[int] = []
        for i, m in enumerate(mels):
            if m.dim() != 2 or m.shape[0] != N_MELS:
                raise AudioInputError(
                    f"mel chunk {i} has shape {tuple(m.shape)}, expected [128, T]"
                )
            t = int(m.shape[1])
            if t > MAX_MEL_FRAMES:
                raise AudioInputError(
                    f"mel chunk {i} has {t} frames (> {MAX_MEL_FRAMES}, ~30 s); split audio into "
                    "<= 25 s chunks"
                )
            if audio_token_count(t) < 1:
                raise AudioInputError(
                    f"mel chunk {i} is too short ({t} frames) to give audio tokens"
                )
            lens.append(t)
        enc_dtype = self.encoder.conv1.weight.dtype
        dev = self.encoder.conv1.weight.device
        batch = torch.zeros(len(mels), N_MELS, max(lens), dtype=enc_dtype, device=dev)
        for i, m in enumerate(mels):
            batch[i, :, : lens[i]] = m.to(device=dev, dtype=enc_dtype)
        mel_lens = torch.tensor(lens, device=dev)
        feats, _own, _valid = self.encoder(batch, mel_lens, mel_lens - 2)
        out = self.adapter(feats)
        return [out[i, : audio_token_count(t)].to(self.dtype) for i, t in enumerate(lens)]

    # ------------------------------------------------------------------ text side
    def embed(
        self,
        input_ids: torch.Tensor,
        audio_features: list[torch.Tensor] | None = None,
        patch_id: int = 151690,
    ) -> torch.Tensor:
        """Token embeddings ``[1, L, hidden]`` with audio features at the ``patch_id`` positions."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"input_ids must have shape [1, L], got {tuple(input_ids.shape)}")
        input_ids = input_ids.to(self.device)
        embeds = self.model.embed_tokens(input_ids)
        positions = (input_ids[0] == patch_id).nonzero(as_tuple=True)[0]
        feats = list(audio_features or [])
        n_feat = sum(int(f.shape[0]) for f in feats)
        if n_feat != positions.numel():
            raise ValueError(
                f"prompt has {positions.numel()} <audio_patch> (id {patch_id}) tokens but the audio "
                f"features have {n_feat} frames ({[int(f.shape[0]) for f in feats]} per chunk)"
            )
        if n_feat:
            cat = torch.cat([f.to(device=embeds.device, dtype=embeds.dtype) for f in feats], dim=0)
            embeds = embeds.clone()
            embeds[0, positions] = cat
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, DynamicCache]:
        """Run the LLM; returns ``(logits [1, L or logits_to_keep, vocab], cache)``.

        ``past_key_values`` is extended in place (a new one is created when None).
        ``logits_to_keep`` > 0 computes logits only for the last that many positions.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            assert input_ids is not None
            inputs_embeds = self.model.embed_tokens(input_ids.to(self.device))
        cache = past_key_values if past_key_values is not None else self.new_cache()
        hidden = run_decoder(self.model, inputs_embeds, cache, position_ids)
        if logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        return self.lm_head(hidden), cache
