"""HiFT vocoder: 80-bin mel at 50 Hz -> 24 kHz waveform (HiFi-GAN + iSTFT with an NSF source).

Parameter names follow CosyVoice's ``HiFTGenerator`` (``f0_predictor.condnet.{0,2,..}``,
``f0_predictor.classifier``, ``m_source.l_linear``, ``conv_pre``, ``ups.i``, ``source_downs.i``,
``source_resblocks.i``, ``resblocks.i`` with ``convs1/convs2/activations1/activations2`` (Snake
``alpha``), ``conv_post``). Our convolutions are plain (weight norm already folded); the official
``hift.pt`` stores weight-normed tensors and ``weights.py`` folds them on load.

Streaming support: ``forward`` takes the harmonic phase to start from and the absolute sample
offset (the NSF noise is a fixed table indexed by absolute sample position), and returns the
running phase so the next chunk's source continues without a phase jump.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import HiFTConfig


def _pad(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class Snake(nn.Module):
    """x + 1/alpha * sin^2(alpha x), per-channel alpha."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha[None, :, None]
        return x + (1.0 / (a + 1e-9)) * torch.sin(a * x) ** 2


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            [
                nn.Conv1d(channels, channels, kernel, dilation=d, padding=_pad(kernel, d))
                for d in dilations
            ]
        )
        self.convs2 = nn.ModuleList(
            [nn.Conv1d(channels, channels, kernel, padding=_pad(kernel)) for _ in dilations]
        )
        self.activations1 = nn.ModuleList([Snake(channels) for _ in dilations])
        self.activations2 = nn.ModuleList([Snake(channels) for _ in dilations])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2, strict=False
        ):
            x = x + c2(a2(c1(a1(x))))
        return x


class ConvRNNF0Predictor(nn.Module):
    """Mel -> f0 per frame (ELU conv stack, linear head, abs)."""

    def __init__(self, in_channels: int, cond_channels: int, num_convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [
                nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1),
                nn.ELU(),
            ]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.abs(self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1))


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise source: sines at f0*(1..H+1) merged by ``l_linear`` + tanh."""

    def __init__(self, cfg: HiFTConfig, noise_len: int = 1 << 16) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.nb_harmonics + 1
        self.l_linear = nn.Linear(self.dim, 1)
        gen = torch.Generator().manual_seed(1234)
        # Fixed tables (not in the state dict): noise indexed by absolute sample position and
        # the harmonics' starting phases, so chunked synthesis matches one-shot synthesis.
        self._noise = torch.randn(self.dim, noise_len, generator=gen)
        phase0 = torch.rand(self.dim, generator=gen, dtype=torch.float64) * 2 * math.pi
        phase0[0] = 0.0
        self._phase0 = phase0
        self._noise_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def noise_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        table = self._noise_cache.get(key)
        if table is None:
            table = self._noise.to(device=device, dtype=dtype)
            self._noise_cache[key] = table
        return table

    def initial_phase(self, batch: int) -> torch.Tensor:
        return self._phase0[None, :].expand(batch, -1).clone()

    def forward(
        self, f0: torch.Tensor, phase: torch.Tensor, sample_offset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 [b, n] per sample (Hz); phase [b, H+1] float64 radians at sample 0; sample_offset [b].

        Returns (source [b, 1, n], phase per sample [b, H+1, n] float64, before the sample's step).
        """
        cfg = self.cfg
        b, n = f0.shape
        harm = torch.arange(1, self.dim + 1, device=f0.device, dtype=torch.float64)
        inc = (f0.double()[:, None, :] * harm[None, :, None]) / cfg.sampling_rate * 2 * math.pi
        steps = torch.cumsum(inc, dim=2) - inc  # phase before each sample
        ph = phase.to(f0.device)[:, :, None] + steps
        sines = cfg.nsf_alpha * torch.sin(ph).to(f0.dtype)
        uv = (f0 > cfg.nsf_voiced_threshold).to(f0.dtype)[:, None, :]
        noise_amp = uv * cfg.nsf_sigma + (1 - uv) * cfg.nsf_alpha / 3
        idx = (
            sample_offset.to(f0.device)[:, None] + torch.arange(n, device=f0.device)[None, :]
        ) % self._noise.shape[1]
        noise = self.noise_table(f0.device, f0.dtype)[:, idx].permute(1, 0, 2)  # [b, H+1, n]
        sines = sines * uv + noise_amp * noise
        src = torch.tanh(self.l_linear(sines.transpose(1, 2))).transpose(1, 2)
        return src, ph


class HiFTGenerator(nn.Module):
    """Mel [b, 80, F] -> audio [b, F * hop]."""

    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.base_channels
        n_fft = cfg.istft_n_fft
        self.m_source = SourceModuleHnNSF(cfg)
        self.f0_predictor = ConvRNNF0Predictor(
            cfg.in_channels, cfg.f0_cond_channels, cfg.f0_num_convs
        )
        self.conv_pre = nn.Conv1d(cfg.in_channels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(
            zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=False)
        ):
            self.ups.append(
                nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            )
        down = [1] + cfg.upsample_rates[::-1][:-1]
        cum = list(np.cumprod(down))[::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(
                cum,
                cfg.source_resblock_kernel_sizes,
                cfg.source_resblock_dilation_sizes,
                strict=False,
            )
        ):
            c = ch // 2 ** (i + 1)
            u = int(u)
            if u == 1:
                self.source_downs.append(nn.Conv1d(n_fft + 2, c, 1, 1))
            else:
                self.source_downs.append(nn.Conv1d(n_fft + 2, c, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(c, k, d))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            c = ch // 2 ** (i + 1)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=False):
                self.resblocks.append(ResBlock(c, k, d))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), n_fft + 2, 7, padding=3)
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.register_buffer("stft_window", torch.hann_window(n_fft), persistent=False)

    @property
    def hop(self) -> int:
        return self.cfg.hop

    def _stft(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = torch.stft(
            x,
            self.cfg.istft_n_fft,
            self.cfg.istft_hop,
            self.cfg.istft_n_fft,
            window=self.stft_window,
            return_complex=True,
        )
        return spec.real, spec.imag

    @torch.inference_mode()
    def forward(
        self,
        mel: torch.Tensor,
        phase: torch.Tensor | None = None,
        sample_offset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (audio [b, F*hop], harmonic phase per sample [b, H+1, F*hop] float64)."""
        cfg = self.cfg
        b, _, frames = mel.shape
        mel = mel.float()
        if phase is None:
            phase = self.m_source.initial_phase(b)
        if sample_offset is None:
            sample_offset = torch.zeros(b, dtype=torch.long)
        f0 = self.f0_predictor(mel)  # [b, F]
        f0_up = f0.repeat_interleave(self.hop, dim=1)  # nearest upsampling to samples
        src, ph = self.m_source(f0_up, phase, sample_offset)
        s_re, s_im = self._stft(src.squeeze(1))
        s_stft = torch.cat([s_re, s_im], dim=1)

        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = F.leaky_relu(x, cfg.lrelu_slope)
            x = up(x)
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            si = self.source_resblocks[i](self.source_downs[i](s_stft))
            x = x + si
            acc = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x)
                acc = y if acc is None else acc + y
            x = acc / self.num_kernels
        x = F.leaky_relu(x)
        x = self.conv_post(x)
        half = cfg.istft_n_fft // 2 + 1
        magnitude = torch.clamp(torch.exp(x[:, :half]), max=1e2)
        angle = torch.sin(x[:, half:])
        spec = torch.complex(magnitude * torch.cos(angle), magnitude * torch.sin(angle))
        audio = torch.istft(
            spec,
            cfg.istft_n_fft,
            cfg.istft_hop,
            cfg.istft_n_fft,
            window=self.stft_window,
            length=frames * self.hop,
        )
        return torch.clamp(audio, -cfg.audio_limit, cfg.audio_limit), ph
