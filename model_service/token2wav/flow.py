"""Flow-matching decoder: speech codes (25 Hz) -> 80-bin log-mel (50 Hz), conditioned on a voice.

Structure and parameter names follow CosyVoice 2's ``CausalMaskedDiffWithXvec`` so the official
``flow.pt`` state dict loads by name (see ``weights.py``):

* ``input_embedding`` (6561 x 512), ``spk_embed_affine_layer`` (192 -> 80), ``encoder_proj``;
* ``encoder``: ``UpsampleConformerEncoderV2`` = ``embed`` (Linear+LayerNorm, ESPnet rel-pos),
  ``pre_lookahead_layer`` (conv with 3 codes of look-ahead), ``encoders`` (6 conformer blocks,
  rel-pos attention, SiLU FFN), ``up_layer`` (nearest x2 + causal conv), ``up_embed``,
  ``up_encoders`` (4 blocks), ``after_norm``;
* ``decoder.estimator``: a DiT (``t_embedder``, ``in_proj`` 320 -> hidden, ``blocks`` with adaLN
  modulation of attention (QK-norm), a causal conv block and an MLP, ``final_layer``).

Design choice (documented simplification): attention in both the encoder and the DiT is *causal
per frame* (each position sees itself and the past; the encoder's only look-ahead is the 3-code
pre-lookahead conv). The official model uses chunk-causal masks with KV caches; we instead
recompute over a context window each chunk. With per-frame causality the mel for a code depends
only on the prompt, earlier codes and 3 look-ahead codes, so chunked streaming reproduces the
non-streaming mel exactly while the context window holds the whole response, and right-padding a
batch never changes the real positions (batched == sequential).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlowConfig


def rel_positional_encoding(
    size: int, dim: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """ESPnet relative sinusoid table for relative positions ``size-1 .. -(size-1)``: [2*size-1, dim]."""
    rel = torch.arange(size - 1, -size, -1, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim)
    )
    pe = torch.zeros(2 * size - 1, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(rel * div)
    pe[:, 1::2] = torch.cos(rel * div)
    return pe.to(dtype)


def causal_mask(size: int, device: torch.device) -> torch.Tensor:
    """Boolean [size, size], True where attention is allowed (key index <= query index)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


class LinearEmbed(nn.Module):
    """``LinearNoSubsampling``: Linear + LayerNorm (+dropout slot), then x * sqrt(d)."""

    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5), nn.Identity())
        self.scale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.scale


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with ESPnet relative positions (Transformer-XL u/v biases)."""

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.h = heads
        self.d_k = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(-1, self.h, self.d_k).transpose(0, 1)  # [h, 2t-1, d]
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))  # [b,h,t,t]
        bd_full = torch.matmul(
            (q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)
        )  # [b,h,t,2t-1]
        # relative position i-j sits at index (t-1) - (i-j) of the table
        idx = (
            (t - 1)
            - torch.arange(t, device=x.device)[:, None]
            + torch.arange(t, device=x.device)[None, :]
        )
        bd = torch.gather(bd_full, 3, idx.expand(b, self.h, t, t))
        scores = (ac + bd) / math.sqrt(self.d_k)
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


class FeedForward(nn.Module):
    """``PositionwiseFeedForward`` with SiLU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm block: rel-pos self-attention then FFN (no macaron, no conv module)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(heads, dim)
        self.feed_forward = FeedForward(dim, ffn)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-12)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_emb, mask)
        return x + self.feed_forward(self.norm_ff(x))


class PreLookaheadLayer(nn.Module):
    """Conv over the current code and ``lookahead`` future codes, then a causal conv; residual."""

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [b, t, c]
        y = F.pad(x.transpose(1, 2), (0, self.lookahead))
        y = F.leaky_relu(self.conv1(y))
        y = self.conv2(F.pad(y, (2, 0)))
        return y.transpose(1, 2) + x


class Upsample1D(nn.Module):
    """Nearest-neighbour x``stride`` then a causal conv (kernel 2*stride+1)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [b, c, t]
        y = F.interpolate(x, scale_factor=float(self.stride), mode="nearest")
        return self.conv(F.pad(y, (self.stride * 2, 0)))


class UpsampleConformerEncoderV2(nn.Module):
    """Codes' embeddings (25 Hz) -> hidden states at 50 Hz."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        d = cfg.encoder_dim
        self.dim = d
        self.embed = LinearEmbed(cfg.input_size, d)
        self.pre_lookahead_layer = PreLookaheadLayer(d, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(
            [
                ConformerBlock(d, cfg.encoder_heads, cfg.encoder_ffn)
                for _ in range(cfg.encoder_blocks)
            ]
        )
        self.up_layer = Upsample1D(d, cfg.up_stride)
        self.up_embed = LinearEmbed(d, d)
        self.up_encoders = nn.ModuleList(
            [
                ConformerBlock(d, cfg.encoder_heads, cfg.encoder_ffn)
                for _ in range(cfg.encoder_up_blocks)
            ]
        )
        self.after_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``emb`` [b, t, input_size], ``lengths`` [b] -> [b, t*stride, dim].

        Positions at or past a row's length are zeroed after ``embed`` (what the official model
        does with the look-ahead padding of the last chunk), so a row's short tail sees zeros.
        """
        b, t, _ = emb.shape
        x = self.embed(emb)
        valid = torch.arange(t, device=emb.device)[None, :] < lengths[:, None]
        x = x * valid[..., None].to(x.dtype)
        x = self.pre_lookahead_layer(x)
        pos = rel_positional_encoding(t, self.dim, x.device, x.dtype)
        mask = causal_mask(t, x.device)
        for layer in self.encoders:
            x = layer(x, pos, mask)
        x = self.up_layer(x.transpose(1, 2)).transpose(1, 2)
        x = self.up_embed(x)
        t2 = x.shape[1]
        pos = rel_positional_encoding(t2, self.dim, x.device, x.dtype)
        mask = causal_mask(t2, x.device)
        for layer in self.up_encoders:
            x = layer(x, pos, mask)
        return self.after_norm(x)


# ----------------------------------------------------------------------------------- DiT


class Transpose(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.a, self.b)


class CausalConv1d(nn.Conv1d):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(cin, cout, kernel)
        self.left = kernel - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class CausalConvBlock(nn.Module):
    """``block`` = [T, conv, T, LayerNorm, Mish, T, conv, T] (indices match the official names)."""

    def __init__(self, channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Transpose(1, 2),
            CausalConv1d(channels, channels, kernel),
            Transpose(1, 2),
            nn.LayerNorm(channels),
            nn.Mish(),
            Transpose(1, 2),
            CausalConv1d(channels, channels, kernel),
            Transpose(1, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DiTAttention(nn.Module):
    """Self-attention with LayerNorm on q and k per head."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.q_norm = nn.LayerNorm(head_dim)
        self.k_norm = nn.LayerNorm(head_dim)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q = self.q_norm(heads(self.to_q(x)))
        k = self.k_norm(heads(self.to_k(x)))
        v = heads(self.to_v(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class DiTMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """adaLN-modulated attention, causal conv block and MLP, each gated."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = DiTAttention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = DiTMLP(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.conv = CausalConvBlock(dim, 3)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sa, ca, ga, sm, cm, gm, sc, cc, gc = self.adaLN_modulation(c).chunk(9, dim=-1)
        x = x + ga * self.attn(_modulate(self.norm1(x), sa, ca), mask)
        x = x + gc * self.conv(_modulate(self.norm3(x), sc, cc))
        return x + gm * self.mlp(_modulate(self.norm2(x), sm, cm))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)
        return self.mlp(emb)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Velocity estimator: [x, mu, spk, cond] (4 x 80 channels) + t -> 80 channels."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        h = cfg.dit_hidden
        self.t_embedder = TimestepEmbedder(h)
        self.in_proj = nn.Linear(4 * cfg.output_size, h)
        self.blocks = nn.ModuleList(
            [
                DiTBlock(h, cfg.dit_heads, cfg.dit_head_dim, cfg.dit_mlp_ratio)
                for _ in range(cfg.dit_depth)
            ]
        )
        self.final_layer = FinalLayer(h, cfg.output_size)

    def forward(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        """All of x, mu, cond are [b, 80, T]; spks [b, 80]; t [b]. Returns [b, 80, T]."""
        T = x.shape[-1]
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, T), cond], dim=1).transpose(1, 2)
        h = self.in_proj(h)
        c = self.t_embedder(t)[:, None, :]
        mask = causal_mask(T, x.device)
        for block in self.blocks:
            h = block(h, c, mask)
        return self.final_layer(h, c).transpose(1, 2)


class CausalConditionalCFM(nn.Module):
    """Euler ODE solver with a cosine t schedule and classifier-free guidance."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.estimator = DiT(cfg)
        self.cfg_rate = cfg.cfg_rate
        self.n_timesteps = cfg.n_timesteps

    def forward(
        self, noise: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        b = mu.shape[0]
        t_span = 1 - torch.cos(
            torch.linspace(0, 1, self.n_timesteps + 1, device=mu.device) * 0.5 * math.pi
        )
        t_span = t_span.to(mu.dtype)
        x = noise
        mu_in = torch.cat([mu, torch.zeros_like(mu)], dim=0)
        spk_in = torch.cat([spks, torch.zeros_like(spks)], dim=0)
        cond_in = torch.cat([cond, torch.zeros_like(cond)], dim=0)
        for step in range(self.n_timesteps):
            t = t_span[step].expand(2 * b)
            v = self.estimator(x.repeat(2, 1, 1), mu_in, t, spk_in, cond_in)
            v_cond, v_uncond = v[:b], v[b:]
            v = (1.0 + self.cfg_rate) * v_cond - self.cfg_rate * v_uncond
            x = x + (t_span[step + 1] - t_span[step]) * v
        return x


class CausalMaskedDiffWithXvec(nn.Module):
    """The whole flow model: codes + voice -> mel."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoderV2(cfg)
        self.encoder_proj = nn.Linear(cfg.encoder_dim, cfg.output_size)
        self.decoder = CausalConditionalCFM(cfg)
        gen = torch.Generator().manual_seed(0)
        # Fixed noise indexed by mel-frame position (like the official ``rand_noise`` buffer), so
        # a frame gets the same noise however the codes are chunked. Not a state-dict entry.
        self._noise = torch.randn(cfg.output_size, cfg.noise_frames, generator=gen)
        self._noise_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def noise_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        table = self._noise_cache.get(key)
        if table is None:
            table = self._noise.to(device=device, dtype=dtype)
            self._noise_cache[key] = table
        return table

    @torch.inference_mode()
    def infer(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        spk: torch.Tensor,
        cond: torch.Tensor,
        frame_index: torch.Tensor,
    ) -> torch.Tensor:
        """Mel for a right-padded batch.

        tokens [b, t] (codes, prompt first), lengths [b] real codes per row, spk [b, 192],
        cond [b, 80, t*stride] (prompt mel then zeros), frame_index [b, t*stride] absolute frame
        positions used to pick noise. Returns mel [b, 80, t*stride]; frames of padded positions
        are garbage.
        """
        p = next(self.parameters())
        spk = F.normalize(spk.to(p.dtype), dim=1)
        spk = self.spk_embed_affine_layer(spk)
        emb = self.input_embedding(tokens.clamp(0, self.cfg.vocab_size - 1))
        h = self.encoder(emb, lengths)
        mu = self.encoder_proj(h).transpose(1, 2)
        noise_buf = self.noise_table(mu.device, mu.dtype)
        noise = noise_buf[:, frame_index % noise_buf.shape[1]].permute(1, 0, 2)  # [b, 80, T]
        return self.decoder(noise, mu, spk, cond.to(mu.dtype))
