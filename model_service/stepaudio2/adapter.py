"""Adapter from 25 Hz encoder features to 12.5 Hz LLM embeddings.

Conv1d (k3, s2, p1) + GELU, ``linear1`` (n_state → 2048, hard-coded width) + ReLU, ``linear2``
(2048 → llm_dim). Parameter names equal the official checkpoint's (``adapter.conv.weight`` …).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ADAPTER_HIDDEN, AudioEncoderConfig


class Adapter(nn.Module):
    """Downsample x2 and project encoder features ``[B, T, n_state]`` to ``[B, T', llm_dim]``."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        n = cfg.n_audio_state
        self.conv = nn.Conv1d(n, n, cfg.kernel_size, cfg.adapter_stride, padding=1)
        self.linear1 = nn.Linear(n, ADAPTER_HIDDEN)
        self.linear2 = nn.Linear(ADAPTER_HIDDEN, cfg.llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(F.relu(self.linear1(x)))
