"""Whisper-large-style audio encoder of Step-Audio 2 (mel 100 Hz → features 25 Hz).

conv1 (k3 s1) + GELU, conv2 (k3 s2) + GELU, learned positional embedding (``n_audio_ctx``
positions at 50 Hz), pre-LN Transformer blocks with an additive key-padding mask,
``AvgPool1d(2, 2)`` and a final LayerNorm (``after_norm``). Parameter names equal the official
checkpoint's (``encoder.conv1.weight``, ``encoder.blocks.0.attn.query.weight`` …; ``key`` has
no bias).

Batching is exact: positions beyond an item's own length are zeroed wherever a convolution
would otherwise read them, so a chunk encoded in a padded batch gives the same features as
the chunk encoded alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioEncoderConfig


class EncoderAttention(nn.Module):
    """Multi-head self-attention with Whisper's names (query/key/value/out; key has no bias)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        h = self.n_head

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, c // h).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class EncoderBlock(nn.Module):
    """Pre-LN residual block: attention then a 4x GELU MLP (``mlp.0`` / ``mlp.2``)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = EncoderAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(
            nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state)
        )
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Mel frames ``[B, n_mels, T]`` + valid lengths → 25 Hz features ``[B, T', n_state]``."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_audio_state
        self.conv1 = nn.Conv1d(cfg.n_mels, n, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n, n, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(cfg.n_audio_ctx, n)
        self.blocks = nn.ModuleList(
            [EncoderBlock(n, cfg.n_audio_head) for _ in range(cfg.n_audio_layer)]
        )
        self.avg_pooler = nn.AvgPool1d(2, 2)
        self.after_norm = nn.LayerNorm(n)

    def forward(
        self, mels: torch.Tensor, mel_lens: torch.Tensor, valid_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a padded batch.

        ``mel_lens``: real mel frames per item (padding beyond them is zero).
        ``valid_lens``: the official "wav_lens" (``T - 2``) that define the attention mask.
        Returns ``(features, own_lens, valid_out_lens)``: features ``[B, P, n_state]`` (zeros
        beyond each item's own pooled length ``own_lens``) and the valid 25 Hz lengths
        ``(valid + 1) // 2 // 2``.
        """
        b, _, t = mels.shape
        dev = mels.device
        x = F.gelu(self.conv1(mels))
        frame = torch.arange(t, device=dev)
        x = x * (frame[None, :] < mel_lens[:, None]).unsqueeze(1).to(x.dtype)
        x = F.gelu(self.conv2(x))  # [B, n, ceil(T/2)]
        t2 = x.shape[-1]
        if t2 > self.cfg.n_audio_ctx:
            raise ValueError(
                f"audio chunk too long: {t2} encoder positions > n_audio_ctx "
                f"{self.cfg.n_audio_ctx} (split audio into <= 25 s chunks)"
            )
        x = x.transpose(1, 2)
        x = x + self.positional_embedding.weight[:t2].to(x.dtype)
        pos = torch.arange(t2, device=dev)
        key_ok = pos[None, :] < ((valid_lens + 1) // 2)[:, None]  # [B, t2]
        mask = torch.zeros(b, 1, 1, t2, dtype=x.dtype, device=dev)
        mask = mask.masked_fill(~key_ok[:, None, None, :], torch.finfo(x.dtype).min)
        for block in self.blocks:
            x = block(x, mask)
        x = self.avg_pooler(x.transpose(1, 2)).transpose(1, 2)
        x = self.after_norm(x)
        own = (mel_lens + 1) // 2 // 2
        pooled = torch.arange(x.shape[1], device=dev)
        x = x * (pooled[None, :] < own[:, None]).unsqueeze(-1).to(x.dtype)
        return x, own, (valid_lens + 1) // 2 // 2
