"""Sizes of the token2wav networks, read from ``flow.yaml`` plus an optional ``config.json``.

The official ``token2wav/flow.yaml`` is a hyperpyyaml file (``!new:`` / ``!ref`` tags). We never
instantiate classes from it: it is parsed with a loader that ignores tags and we only pick the
numbers we need (see ``FlowConfig.from_yaml_dict``). Anything missing keeps the official default.
The vocoder (HiFT) has no yaml upstream (it is built with default arguments), so its sizes are the
defaults below unless ``token2wav/config.json`` overrides them; the tiny test checkpoint uses that
file to shrink both networks (``{"flow": {...}, "hift": {...}}``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

N_CODES = 6561  # CosyVoice-2 speech-code vocabulary (S3 tokenizer v2, 25 Hz)
SAMPLE_RATE = 24000
MEL_HOP = 480  # samples per mel frame at 24 kHz (50 frames/s)
MEL_BINS = 80


@dataclass
class FlowConfig:
    """Flow-matching model sizes (``CausalMaskedDiffWithXvec``); defaults are the official ones."""

    vocab_size: int = N_CODES
    input_size: int = 512  # token embedding width
    output_size: int = MEL_BINS
    spk_embed_dim: int = 192
    # UpsampleConformerEncoderV2
    encoder_dim: int = 512
    encoder_heads: int = 8
    encoder_ffn: int = 2048
    encoder_blocks: int = 6
    encoder_up_blocks: int = 4
    pre_lookahead_len: int = 3
    up_stride: int = 2
    # DiT estimator
    dit_hidden: int = 512
    dit_depth: int = 16
    dit_heads: int = 8
    dit_head_dim: int = 64
    dit_mlp_ratio: float = 4.0
    # CausalConditionalCFM
    n_timesteps: int = 10
    cfg_rate: float = 0.7
    noise_frames: int = 50 * 600  # fixed noise buffer (600 s of mel), indexed by frame position

    @classmethod
    def from_yaml_dict(cls, d: dict[str, Any]) -> FlowConfig:
        """Pick sizes out of a parsed (tag-stripped) official ``flow.yaml``."""
        cfg = cls()
        flow = d.get("flow", d)
        if not isinstance(flow, dict):
            return cfg
        for key in ("vocab_size", "input_size", "output_size", "spk_embed_dim"):
            if isinstance(flow.get(key), int):
                setattr(cfg, key, flow[key])
        enc = flow.get("encoder") or {}
        if isinstance(enc, dict):
            mapping = {
                "output_size": "encoder_dim",
                "attention_heads": "encoder_heads",
                "linear_units": "encoder_ffn",
                "num_blocks": "encoder_blocks",
                "num_up_blocks": "encoder_up_blocks",
                "pre_lookahead_len": "pre_lookahead_len",
                "up_stride": "up_stride",
            }
            for src, dst in mapping.items():
                if isinstance(enc.get(src), int):
                    setattr(cfg, dst, enc[src])
        dec = flow.get("decoder") or {}
        if isinstance(dec, dict):
            cfm = dec.get("cfm_params") or {}
            if isinstance(cfm, dict) and isinstance(cfm.get("inference_cfg_rate"), (int, float)):
                cfg.cfg_rate = float(cfm["inference_cfg_rate"])
            if isinstance(dec.get("inference_cfg_rate"), (int, float)):
                cfg.cfg_rate = float(dec["inference_cfg_rate"])
            est = dec.get("estimator") or {}
            if isinstance(est, dict):
                mapping = {
                    "hidden_size": "dit_hidden",
                    "depth": "dit_depth",
                    "num_heads": "dit_heads",
                    "head_dim": "dit_head_dim",
                    "mlp_ratio": "dit_mlp_ratio",
                }
                for src, dst in mapping.items():
                    if isinstance(est.get(src), (int, float)):
                        setattr(cfg, dst, type(getattr(cfg, dst))(est[src]))
        return cfg


@dataclass
class HiFTConfig:
    """HiFT (HiFi-GAN + iSTFT, NSF source) vocoder sizes; defaults are ``HiFTGenerator()``'s."""

    in_channels: int = MEL_BINS
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = SAMPLE_RATE
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: list[int] = field(default_factory=lambda: [8, 5, 3])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 11, 7])
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    )
    source_resblock_kernel_sizes: list[int] = field(default_factory=lambda: [7, 7, 11])
    source_resblock_dilation_sizes: list[list[int]] = field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    )
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512
    f0_num_convs: int = 5

    @property
    def hop(self) -> int:
        """Output samples per mel frame (8*5*3*4 = 480 by default)."""
        n = self.istft_hop
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass
class Token2WavConfig:
    """Both networks' sizes."""

    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"flow": asdict(self.flow), "hift": asdict(self.hift)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Token2WavConfig:
        cfg = cls()
        _apply(cfg.flow, d.get("flow", {}), "flow")
        _apply(cfg.hift, d.get("hift", {}), "hift")
        return cfg


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name for f in fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"token2wav config: unknown {where} field {key!r}")
        setattr(obj, key, value)


class _TagTolerantLoader(yaml.SafeLoader):
    """A YAML loader that reads hyperpyyaml files, dropping ``!new:``/``!ref``/... tags."""


def _construct_any(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TagTolerantLoader.add_multi_constructor("!", _construct_any)


def read_flow_yaml(path: Path) -> dict[str, Any]:
    """Parse ``flow.yaml`` (official hyperpyyaml or our plain yaml) into nested dicts."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_TagTolerantLoader)  # noqa: S506 - safe loader subclass
    return data if isinstance(data, dict) else {}


def load_config(token2wav_dir: Path) -> Token2WavConfig:
    """Official defaults, then ``flow.yaml`` numbers, then ``config.json`` overrides."""
    cfg = Token2WavConfig(
        flow=FlowConfig.from_yaml_dict(read_flow_yaml(token2wav_dir / "flow.yaml"))
    )
    extra = token2wav_dir / "config.json"
    if extra.exists():
        with open(extra, encoding="utf-8") as fh:
            over = json.load(fh)
        _apply(cfg.flow, over.get("flow", {}), "flow")
        _apply(cfg.hift, over.get("hift", {}), "hift")
    return cfg
