"""Tiny Step-Audio 2 checkpoints for CPU tests, in the official on-disk layout.

``build_tiny_checkpoint(out_dir)`` writes ``config.json`` (the §1.5 tiny geometry with head_dim
32, the smallest vLLM's CPU attention takes: hidden 64, 2 layers, 2 heads / 2 kv heads, encoder 64
wide / 4 heads / 2 layers, n_audio_ctx 1500, vocab 158720), safetensors shards + ``model.safetensors.index.json`` with the official weight names,
the tiny tokenizer and (when that module exists) a tiny ``token2wav/``. Weights are fp32.

Without ``script`` the weights are random (seeded). With ``script`` they are *shaped* so that
GREEDY decoding from a prompt ending in ``<tts_start>`` emits exactly ``script``; with
``after_tool_script`` too, a prompt whose context contains ``</tool_call>`` (i.e. the turn after
a tool call) emits ``after_tool_script`` instead. How the shaping works (hidden dims 0..63):

* Residual layout: dims 0-39 random "key" directions of ordinary tokens; 40-51 one-hot
  directions of a few special tokens; 52-57 "recent token" flags; 60 marks the marker token
  (``</tool_call>``); 61 is a constant 1; 62 the marker mean; 63 the clamped marker flag.
  Every token embedding has norm 8 (RMS 1), so RMSNorm leaves it unchanged.
* Decoding is a bigram chain: the final hidden state equals the current token's embedding (all
  attention/MLP outputs are zero except the tiny flags below), and ``lm_head`` row ``y`` is the
  sum of the keys of the states whose successor is ``y``.
* Repeated tokens (the two ``\\n`` of ``function\\nNAME\\n{json}``) are disambiguated by the
  token before them: layer 0 head 1 attends to the most recent token of a small set S (its
  query is a constant; keys live in the slowest RoPE pair, phased so the score falls
  monotonically with distance), and writes a flag for it. A layer-1 MLP "AND unit" (current
  token is t AND flag f set) adds ``alt_key - key(t)`` to the residual, moving to a new state.
* The tool-result turn: layer 0 head 0 has zero q/k (uniform attention = mean over the context)
  and reads the marker dim, the layer-0 MLP clamps ``mean * big`` to {0, 1}, and layer-1 AND
  units switch ``<tts_start>`` (and any token shared with the first script) to the second
  chain's states.

The builder checks every chain transition's argmax margin and re-draws keys if needed.
Deterministic for a given ``seed``. Designed for float32 inference.

Context checkpoints (``context=True``): in the plain random init the context weighs little (its
attention is almost uniform and writes ~20% of the residual's norm, its audio encoder's N(0, 1)
position table drowns the mel: another waveform moves the features by ~5%; its top-1/top-2
logit gaps go below 1e-3), so a lost KV cache, wrong positions or misplaced audio rarely change its greedy
reply. ``context=True`` keeps the seeded random weights and rescales them (``CONTEXT_GAINS``)
so the reply depends on the whole context; the geometry is unchanged (head_dim 32, fp32):

* token embeddings x50 (RMS 0.02 -> 1) and ``adapter.linear2`` x12 (audio features RMS ~1):
  tokens and audio weigh alike in the residual;
* ``encoder.positional_embedding`` x0.05: the features then follow the mel (another waveform
  moves them by ~70-80%);
* attention, every layer: kv head 0 (and its query heads) q/k x4, a broad content-weighted
  "mixing" head that carries history and audio into every position; the other heads q/k x20,
  sharp "pointer" heads whose scores turn with RoPE (so positions matter); v and o x7 each, so
  attention writes ~60-80% of the residual's norm;
* ``lm_head`` x40, and zero rows for every id that is not a tiny-tokenizer text token or an
  audio code (no specials, stops, pad code or unused ids): the reply never stops, always
  detokenises, and its logits are large (top logit ~70-75).

Proven in ``tests/model/test_context_checkpoint.py`` for seeds 0 and 1 on ``context_messages``
(rendered by PromptBuilder): the 24-token greedy reply changes with an earlier history turn's
text, with the user's audio, without the KV cache, with wrong decode or prefill positions, with
audio merged one token off, with the two audio chunks swapped and with the audio rows one patch
late; a uniform position shift keeps it (RoPE is relative). Smallest top-1/top-2 gap over a
64-token greedy run: 0.147 (seed 0), 0.043 (seed 1); seeds 2-23 all show the first five kinds
of fault too, 18 of those 22 also show the subtle swap / one-row roll within 24 tokens, and
their smallest gap is 1.7e-3. Feed it time-varying audio (``speechlike_wav``): a steady tone
gives near-identical rows, so their order cannot show. ``greedy_margins`` reports the gaps.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.checkpoints.tiny_tokenizer import (
    AUDIO_OFFSET,
    ENDOFTEXT_ID,
    N_AUDIO_TOKENS,
    build_tiny_tokenizer,
)
from model_service.stepaudio2.config import StepAudio2Config
from model_service.stepaudio2.modeling import StepAudio2ForCausalLM

log = logging.getLogger(__name__)

TINY_CONFIG: dict[str, Any] = {
    "architectures": ["StepAudio2ForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_step_audio_2.StepAudio2Config",
        "AutoModelForCausalLM": "modeling_step_audio_2.StepAudio2ForCausalLM",
    },
    "model_type": "step_audio_2",
    "torch_dtype": "float32",
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        # head_dim = hidden / heads = 32: vLLM's CPU attention takes 32, 64, 80, ... (not 16)
        "num_attention_heads": 2,
        "num_attention_groups": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "max_seq_len": 4096,
        "vocab_size": 158720,
        "rms_norm_eps": 1e-06,
        "eos_token_id": 151643,
        "pad_token_id": 151643,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "rope_scaling": None,
        "torch_dtype": "float32",
    },
    "audio_encoder_config": {
        "n_mels": 128,
        "n_audio_ctx": 1500,
        "n_audio_state": 64,
        "n_audio_head": 4,
        "n_audio_layer": 2,
        "n_codebook_size": 4096,
        "llm_dim": 64,
        "kernel_size": 3,
        "adapter_stride": 2,
    },
}

# Residual layout of shaped checkpoints (see module docstring).
_KEY_DIMS = 40
_ONEHOT0, _N_ONEHOT = 40, 12
_RECENT0, _N_RECENT = 52, 6
_MARK_IN, _CONST, _MARK_MEAN, _MARK_FLAG = 60, 61, 62, 63
_NORM = math.sqrt(63.0)  # key norm; with the const dim every embedding has norm 8
_SMALL = 1e-3  # scale of the flags written into the residual (keeps RMS at 1 within 1e-6)
_P = 50.0  # sharpness of the silu clamps
#: RoPE frequency of the recency head, as the exponent 2i/head_dim of its pair i (theta^-0.625:
#: the angle stays monotone over 4096 positions)
_ROPE_EXPONENT = 0.625
_RECENCY_A = 6.4e5
_PHI0 = 0.8


#: Gains ``context=True`` applies to the seeded random weights (see the module docstring).
CONTEXT_GAINS: dict[str, float] = {
    "embed_tokens": 50.0,
    "adapter_linear2": 12.0,
    "encoder_positional_embedding": 0.05,
    "qk_mixing": 4.0,  # kv head 0 and its query heads
    "qk_pointer": 20.0,  # every other head
    "v": 7.0,
    "o": 7.0,
    "lm_head": 40.0,
}


class ScriptError(ValueError):
    """A script the shaped checkpoint cannot encode (e.g. ambiguous repeated tokens)."""


# ---------------------------------------------------------------------------------- scripts
def _ta4_groups(tokenizer: Any, text_ids: list[int], codes: list[int]) -> list[int]:
    out: list[int] = []
    for i, t in enumerate(text_ids):
        out.append(t)
        out.extend(tokenizer.audio_token(c) for c in codes[4 * i : 4 * i + 4])
    return out


def _unique_text_ids(tokenizer: Any, text: str, exclude: set[int]) -> list[int]:
    ids: list[int] = []
    for t in tokenizer.encode(text):
        if t not in exclude and t not in ids:
            ids.append(t)
    return ids


def default_script(
    tokenizer: Any,
    *,
    text: str = "Hello! Thank you for calling the weather line. How may I help today?",
    seed: int = 0,
    exclude: Sequence[int] = (),
) -> list[int]:
    """A realistic TA4 spoken reply: ``[text, a, a, a, a]`` groups, ``<tts_end>``, ``<|EOT|>``.

    Text tokens are de-duplicated (and tokens in ``exclude`` dropped) so every chain state is
    unique; audio codes are distinct, drawn with ``seed`` and never in ``exclude``.
    ``tokenizer`` is a ``StepAudio2Tokenizer``.
    """
    ex = set(exclude)
    text_ids = _unique_text_ids(tokenizer, text, ex)
    used = {tokenizer.audio_code(t) for t in ex if tokenizer.is_audio(t)}
    pool = [c for c in range(tokenizer.n_audio_codes) if c not in used]
    codes = random.Random(seed).sample(pool, 4 * len(text_ids))
    return _ta4_groups(tokenizer, text_ids, codes) + [tokenizer.ids.tts_end, tokenizer.ids.eot]


def tool_call_script(
    tokenizer: Any,
    *,
    name: str = "get_weather",
    arguments: dict[str, Any] | None = None,
    filler: str = "One moment, let me check.",
    seed: int = 1,
) -> list[int]:
    """A spoken filler in TA4, ``<tts_end>``, then ``<tool_call>function\\nNAME\\nJSON</tool_call>``
    and ``<|EOT|>`` (the format the Step-Audio 2 tool parser expects)."""
    ids = tokenizer.ids
    if ids.tool_call is None or ids.tool_call_end is None:
        raise ScriptError("tokenizer has no <tool_call> / </tool_call> tokens")
    args = {"city": "Paris"} if arguments is None else arguments
    call = tokenizer.encode(f"function\n{name}\n{json.dumps(args, ensure_ascii=False)}")
    tail = [ids.tts_end, ids.tool_call, *call, ids.tool_call_end, ids.eot]
    text_ids = _unique_text_ids(tokenizer, filler, set(tail))
    codes = random.Random(seed).sample(range(tokenizer.n_audio_codes), 4 * len(text_ids))
    return _ta4_groups(tokenizer, text_ids, codes) + tail


def after_tool_script(
    tokenizer: Any,
    first: Sequence[int],
    *,
    text: str = "Sunny with 18 degrees today.",
    seed: int = 2,
) -> list[int]:
    """The spoken answer after the tool result; shares no text/audio token with ``first``."""
    return default_script(tokenizer, text=text, seed=seed, exclude=first)


# ---------------------------------------------------------------------------------- weights
def _random_key(rng: torch.Generator) -> torch.Tensor:
    v = torch.zeros(64)
    r = torch.randn(_KEY_DIMS, generator=rng, dtype=torch.float64).float()
    v[:_KEY_DIMS] = r / r.norm() * _NORM
    return v


def _spread_key(
    rng: torch.Generator, chosen: list[torch.Tensor], max_cos: float = 0.45
) -> torch.Tensor:
    """A random key whose |cosine| with every already chosen key is at most ``max_cos``."""
    if not chosen:
        return _random_key(rng)
    mat = torch.stack(chosen)
    best, best_cos = None, 2.0
    for _ in range(200):
        k = _random_key(rng)
        cos = float((mat @ k).abs().max()) / (_NORM * _NORM)
        if cos <= max_cos:
            return k
        if cos < best_cos:
            best, best_cos = k, cos
    assert best is not None
    return best


class _Shaper:
    """Builds the shaped weights; see the module docstring for the mechanism."""

    def __init__(
        self,
        ids: dict[str, int],
        script: list[int],
        after_tool: list[int] | None,
        marker_id: int,
        max_positions: int,
    ) -> None:
        self.ids = ids
        self.script = script
        self.after_tool = after_tool
        self.marker_id = marker_id
        self.max_positions = max_positions
        text = TINY_CONFIG["text_config"]
        self.n_heads = int(text["num_attention_heads"])
        self.n_kv_heads = int(text["num_key_value_heads"])
        self.head_dim = int(text["hidden_size"]) // self.n_heads
        # transitions: (state, successor token); states: ("base", tok) | ("alt", tag, tok)
        self.transitions: list[tuple[tuple, int]] = []
        self.recency_units: list[tuple[int, int, tuple]] = []  # (current tok, prev tok, state)
        self.marker_units: list[tuple[int, tuple]] = []  # (current tok, state)
        self.recency_set: set[int] = set()
        self._plan()

    def _plan(self) -> None:
        tts = self.ids["tts_start"]
        script = self.script
        if not script:
            raise ScriptError("script is empty")
        counts: dict[int, int] = {}
        for t in script[:-1]:
            counts[t] = counts.get(t, 0) + 1
        repeated = {t for t, c in counts.items() if c > 1}
        if tts in counts:
            raise ScriptError("script must not contain <tts_start> before its last token")
        preds: dict[int, list[int]] = {}
        for i, t in enumerate(script[:-1]):
            if t in repeated:
                preds.setdefault(t, []).append(script[i - 1] if i > 0 else tts)
        for t, ps in preds.items():
            if len(set(ps)) != len(ps):
                raise ScriptError(
                    f"token {t} repeats after the same predecessor {ps}; cannot disambiguate"
                )
            self.recency_set.update(ps)
        clash = repeated & self.recency_set
        if clash:
            raise ScriptError(f"tokens {sorted(clash)} both repeat and precede a repeated token")
        state: tuple = ("base", tts)
        seen: dict[int, int] = {}
        for i, t in enumerate(script):
            self.transitions.append((state, t))
            if i == len(script) - 1:
                break
            k = seen.get(t, 0)
            seen[t] = k + 1
            if k == 0:
                state = ("base", t)
            else:
                state = ("alt", f"rep{k}", t)
                self.recency_units.append((t, preds[t][k], state))
        self.repeated = repeated

        if self.after_tool is None:
            return
        states1 = {t for t in script[:-1]} | {tts}
        after = self.after_tool
        if len(set(after[:-1])) != len(after[:-1]):
            raise ScriptError("after_tool_script must not repeat tokens")
        bad = set(after[:-1]) & (repeated | {self.marker_id})
        if bad:
            raise ScriptError(f"after_tool_script reuses repeated/marker tokens {sorted(bad)}")
        state = ("alt", "tool", tts)
        self.marker_units.append((tts, state))
        for i, t in enumerate(after):
            self.transitions.append((state, t))
            if i == len(after) - 1:
                break
            if t in states1 or t in self.recency_set:
                state = ("alt", "tool", t)
                self.marker_units.append((t, state))
            else:
                state = ("base", t)

    def onehot_tokens(self) -> list[int]:
        toks = set(self.recency_set) | {t for t, _, _ in self.recency_units}
        toks |= {t for t, _ in self.marker_units}
        out = sorted(toks)
        if len(out) > _N_ONEHOT:
            raise ScriptError(f"script needs {len(out)} one-hot tokens (max {_N_ONEHOT})")
        return out

    def apply(self, sd: dict[str, torch.Tensor], seed: int) -> None:
        cfg_layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("model.layers.")})
        if len(cfg_layers) < 2:
            raise ScriptError("shaped checkpoints need at least 2 LLM layers")
        onehot = {t: _ONEHOT0 + i for i, t in enumerate(self.onehot_tokens())}
        recent_prev = sorted({p for _, p, _ in self.recency_units})
        if len(recent_prev) > _N_RECENT:
            raise ScriptError(f"too many distinct predecessors ({len(recent_prev)} > {_N_RECENT})")
        recent_dim = {p: _RECENT0 + i for i, p in enumerate(recent_prev)}

        base_emb = self._embeddings(sd["model.embed_tokens.weight"].shape[0], onehot, seed)
        for attempt in range(20):
            rng = torch.Generator().manual_seed(seed * 1000 + attempt)
            emb = base_emb.clone()
            alt_keys: dict[tuple, torch.Tensor] = {}
            chosen: list[torch.Tensor] = []
            for s in self._keyed_states(onehot):
                k = _spread_key(rng, chosen)
                chosen.append(k)
                if s[0] == "alt":
                    alt_keys[s] = k
                else:
                    scale = (
                        math.sqrt(62.0) / _NORM
                        if s[1] == self.marker_id and self.after_tool
                        else 1.0
                    )
                    emb[s[1], :_KEY_DIMS] = k[:_KEY_DIMS] * scale

            def key(s: tuple, emb: torch.Tensor = emb, alt_keys: dict = alt_keys) -> torch.Tensor:
                if s[0] == "alt":
                    return alt_keys[s]
                v = emb[s[1]].clone()
                v[_MARK_IN] = 0.0
                v[_CONST] = 0.0
                return v

            lm = torch.zeros_like(sd["lm_head.weight"])
            for s, y in self.transitions:
                lm[y] += key(s)
            if self._margins_ok(lm, key):
                break
        else:  # pragma: no cover - practically unreachable
            raise ScriptError("could not find chain keys with a safe argmax margin")

        sd["model.embed_tokens.weight"].copy_(emb)
        sd["lm_head.weight"].copy_(lm)
        for name, t in sd.items():
            if name.startswith("model.layers."):
                if name.endswith("layernorm.weight"):
                    t.fill_(1.0)
                else:
                    t.zero_()
        sd["model.norm.weight"].fill_(1.0)
        # audio features must not touch the reserved dims
        sd["adapter.linear2.weight"][_KEY_DIMS:] = 0.0
        sd["adapter.linear2.bias"][_KEY_DIMS:] = 0.0

        p0 = "model.layers.0."
        # head 0 (kv head 0): uniform attention, value = marker indicator -> dim 62
        sd[p0 + "self_attn.v_proj.weight"][0, _MARK_IN] = _SMALL
        sd[p0 + "self_attn.o_proj.weight"][_MARK_MEAN, 0] = 1.0
        # the last query head (on the last kv head): most recent token of the recency set
        hd, heads, kv_heads = self.head_dim, self.n_heads, self.n_kv_heads
        if kv_heads < 2:
            raise ScriptError("shaped checkpoints need 2 kv heads (uniform head, recency head)")
        qh, kvh = heads - 1, kv_heads - 1
        pair = round(_ROPE_EXPONENT * hd / 2)
        if self.recency_set:
            q_b = sd[p0 + "self_attn.q_proj.bias"]
            q_b[qh * hd + pair] = _RECENCY_A * math.sin(_PHI0)
            q_b[qh * hd + pair + hd // 2] = _RECENCY_A * math.cos(_PHI0)
            for p in self.recency_set:
                sd[p0 + "self_attn.k_proj.weight"][kvh * hd + pair, onehot[p]] = 1.0 / _NORM
            for c, p in enumerate(recent_prev):
                sd[p0 + "self_attn.v_proj.weight"][kvh * hd + c, onehot[p]] = _SMALL / _NORM
                sd[p0 + "self_attn.o_proj.weight"][recent_dim[p], qh * hd + c] = 1.0
        # layer-0 MLP: flag = clamp(K * mean - 0.25, 0, 1) * SMALL -> dim 63
        if self.marker_units:
            k_m = 1.5 * self.max_positions / _SMALL
            g, u, d = (sd[p0 + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
            for unit, shift in ((0, 0.25), (1, 1.25)):
                g[unit, _MARK_MEAN] = _P * k_m
                g[unit, _CONST] = -_P * shift
                u[unit, _CONST] = 1.0
            d[_MARK_FLAG, 0] = _SMALL / _P
            d[_MARK_FLAG, 1] = -_SMALL / _P
        # layer-1 MLP: AND units (current token, flag) -> move to the alt state
        p1 = "model.layers.1."
        g, u, d = (sd[p1 + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        units: list[tuple[int, int, tuple]] = [
            (t, recent_dim[p], s) for t, p, s in self.recency_units
        ] + [(t, _MARK_FLAG, s) for t, s in self.marker_units]
        if 2 * len(units) > g.shape[0]:
            raise ScriptError(f"too many switch units ({len(units)})")
        for i, (t, flag_dim, s) in enumerate(units):
            delta = key(s) - key(("base", t))
            for unit, shift in ((2 * i, 2.5), (2 * i + 1, 3.5)):
                g[unit, onehot[t]] = 2 * _P / _NORM
                g[unit, flag_dim] = 2 * _P / _SMALL
                g[unit, _CONST] = -_P * shift
                u[unit, _CONST] = 1.0
            d[:, 2 * i] = delta / _P
            d[:, 2 * i + 1] = -delta / _P

    def _keyed_states(self, onehot: dict[int, int]) -> list[tuple]:
        """States whose keys live in the random key subspace (chain states, alt states)."""
        out: list[tuple] = []
        for s in (
            [s for s, _ in self.transitions]
            + [u[-1] for u in self.recency_units]
            + [s for _, s in self.marker_units]
        ):
            if s in out or (s[0] == "base" and s[1] in onehot):
                continue
            out.append(s)
        return out

    def _embeddings(self, vocab: int, onehot: dict[int, int], seed: int) -> torch.Tensor:
        rng = torch.Generator().manual_seed(seed + 7919)
        emb = torch.zeros(vocab, 64)
        r = torch.randn(vocab, _KEY_DIMS, generator=rng)
        emb[:, :_KEY_DIMS] = r / r.norm(dim=1, keepdim=True) * _NORM
        for t, dim in onehot.items():
            emb[t] = 0.0
            emb[t, dim] = _NORM
        if self.after_tool is not None:
            m = self.marker_id
            emb[m] *= math.sqrt(62.0) / _NORM
            emb[m, _MARK_IN] = 1.0
        emb[:, _CONST] = 1.0
        return emb

    def _margins_ok(self, lm: torch.Tensor, key: Any) -> bool:
        rows = sorted({y for _, y in self.transitions})
        w = lm[rows]
        for s, y in self.transitions:
            h = key(s)
            logits = w @ h
            own = logits[rows.index(y)]
            others = torch.cat([logits[: rows.index(y)], logits[rows.index(y) + 1 :]])
            best_other = max(float(others.max()) if others.numel() else 0.0, 0.0)
            if float(own) < best_other + 10.0:
                return False
        return True


# ---------------------------------------------------------------------------------- context
def _reply_vocab(tokenizer_json: Path) -> torch.Tensor:
    """Ids a context checkpoint may emit: the tiny BPE's text tokens and the audio codes."""
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
    text = sorted(i for i in vocab.values() if i < ENDOFTEXT_ID)
    audio = range(AUDIO_OFFSET, AUDIO_OFFSET + N_AUDIO_TOKENS - 1)  # the last slot is the pad
    return torch.tensor([*text, *audio], dtype=torch.long)


def _shape_for_context(sd: dict[str, torch.Tensor], reply_ids: torch.Tensor) -> None:
    """Rescale random weights in place so the reply depends on all of the context."""
    g = CONTEXT_GAINS
    text = TINY_CONFIG["text_config"]
    heads, kv_heads = int(text["num_attention_heads"]), int(text["num_key_value_heads"])
    hd = int(text["hidden_size"]) // heads
    per_group = heads // kv_heads

    def gains(n: int, group: Any) -> torch.Tensor:
        return torch.tensor(
            [g["qk_mixing"] if group(h) == 0 else g["qk_pointer"] for h in range(n)]
        ).repeat_interleave(hd)[:, None]

    q_gain = gains(heads, lambda h: h // per_group)
    k_gain = gains(kv_heads, lambda h: h)
    sd["model.embed_tokens.weight"].mul_(g["embed_tokens"])
    sd["adapter.linear2.weight"].mul_(g["adapter_linear2"])
    sd["adapter.linear2.bias"].mul_(g["adapter_linear2"])
    sd["encoder.positional_embedding.weight"].mul_(g["encoder_positional_embedding"])
    for name, t in sd.items():
        if not name.startswith("model.layers."):
            continue
        if name.endswith("q_proj.weight") or name.endswith("q_proj.bias"):
            t.mul_(q_gain if t.dim() == 2 else q_gain[:, 0])
        elif name.endswith("k_proj.weight") or name.endswith("k_proj.bias"):
            t.mul_(k_gain if t.dim() == 2 else k_gain[:, 0])
        elif ".v_proj." in name:
            t.mul_(g["v"])
        elif ".o_proj." in name:
            t.mul_(g["o"])
    lm = sd["lm_head.weight"]
    keep = torch.zeros(lm.shape[0], dtype=torch.bool)
    keep[reply_ids] = True
    lm.mul_(g["lm_head"])
    lm[~keep] = 0.0


def speechlike_wav(seconds: float, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """A seeded, time-varying test waveform (float32, mono, 16 kHz): three tones whose loudness
    changes every 0.1 s, over faint noise. Unlike a steady tone, its mel differs frame to frame,
    so the audio rows a context checkpoint sees differ too (order and placement matter)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    seg = sample_rate // 10
    out = 0.02 * rng.standard_normal(n)
    for _ in range(3):
        freq = 150.0 + 2000.0 * rng.random()
        envelope = np.repeat(rng.random(n // seg + 1), seg)[:n]
        out += 0.2 * envelope * np.sin(2 * np.pi * freq * t + 2 * np.pi * rng.random())
    return out.astype(np.float32)


def context_messages(
    history: str = "What is the weather like in Paris?",
    audio_seeds: Sequence[int] = (1, 2),
    seconds: float = 1.2,
) -> list[Any]:
    """The conversation ``tests/model/test_context_checkpoint.py`` proves a context checkpoint
    on: system, a text human turn (``history``), an assistant text turn, then a human turn of
    one ``speechlike_wav(seconds, seed)`` chunk per ``audio_seeds`` plus text. Render it with
    ``PromptBuilder(tokenizer).build(...)``."""
    from model_service.stepaudio2.prompt import (
        AssistantMessage,
        AudioPart,
        HumanMessage,
        SystemMessage,
    )

    audio = [AudioPart(wav=speechlike_wav(seconds, s)) for s in audio_seeds]
    return [
        SystemMessage("You are a helpful weather assistant."),
        HumanMessage([history]),
        AssistantMessage(text="It is sunny and warm today."),
        HumanMessage([*audio, "Thanks, and tomorrow?"]),
    ]


@torch.inference_mode()
def greedy_margins(
    model: StepAudio2ForCausalLM,
    prompt_ids: Sequence[int],
    audio: Sequence[torch.Tensor] = (),
    max_tokens: int = 64,
    patch_id: int = 151690,
) -> tuple[list[int], list[float]]:
    """Greedy tokens and each step's top-1 minus top-2 logit (KV-cached, fp32 logits).

    ``audio``: mel chunks ``[128, T]`` in prompt order. No stop ids: runs ``max_tokens`` steps.
    """
    feats = model.encode_audio(list(audio))
    x = torch.tensor([list(prompt_ids)], dtype=torch.long)
    logits, cache = model(inputs_embeds=model.embed(x, feats, patch_id), logits_to_keep=1)
    tokens: list[int] = []
    margins: list[float] = []
    for _ in range(max_tokens):
        top = torch.topk(logits[0, -1].float(), 2)
        margins.append(float(top.values[0] - top.values[1]))
        tokens.append(int(top.indices[0]))
        step = torch.tensor([[tokens[-1]]], dtype=torch.long, device=model.device)
        logits, cache = model(input_ids=step, past_key_values=cache, logits_to_keep=1)
    return tokens, margins


# ---------------------------------------------------------------------------------- writer
def _save_shards(sd: dict[str, torch.Tensor], out: Path, shards: int) -> None:
    from safetensors.torch import save_file

    names = list(sd)
    if shards <= 1:
        save_file(
            {n: sd[n].contiguous() for n in names},
            str(out / "model.safetensors"),
            metadata={"format": "pt"},
        )
        return
    per = math.ceil(len(names) / shards)
    groups = [names[i * per : (i + 1) * per] for i in range(shards)]
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups, start=1):
        fname = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file(
            {n: sd[n].contiguous() for n in group}, str(out / fname), metadata={"format": "pt"}
        )
        for n in group:
            weight_map[n] = fname
            total += sd[n].numel() * sd[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build_tiny_checkpoint(
    out_dir: str | Path,
    *,
    seed: int = 0,
    script: Sequence[int] | None = None,
    after_tool_script: Sequence[int] | None = None,
    marker_token: str = "</tool_call>",
    shards: int = 2,
    token2wav: bool = True,
    context: bool = False,
) -> Path:
    """Write a tiny fp32 checkpoint in the official layout and return its directory.

    ``context``: rescale the seeded random weights so the greedy reply depends strongly on the
    history, the audio (its content, place and order), the KV cache and the positions (module
    docstring; not with ``script``).
    ``script``: shape the weights so greedy decoding after ``<tts_start>`` emits it.
    ``after_tool_script``: what greedy decoding emits after ``<tts_start>`` when
    ``marker_token`` occurs in the context (the turn after the tool call).
    ``shards`` <= 1 writes a single ``model.safetensors``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(TINY_CONFIG, indent=2) + "\n")
    build_tiny_tokenizer(out)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))

    def tid(s: str) -> int:
        i = tok.token_to_id(s)
        if i is None:
            raise ScriptError(f"tiny tokenizer lacks {s!r}")
        return int(i)

    config = StepAudio2Config.from_dict(TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StepAudio2ForCausalLM(config)
    sd = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    del model
    if after_tool_script is not None and script is None:
        raise ScriptError("after_tool_script needs script")
    if context and script is not None:
        raise ScriptError("context=True rescales random weights; it does not take a script")
    if context:
        _shape_for_context(sd, _reply_vocab(out / "tokenizer.json"))
    if script is not None:
        shaper = _Shaper(
            {"tts_start": tid("<tts_start>")},
            [int(t) for t in script],
            [int(t) for t in after_tool_script] if after_tool_script is not None else None,
            tid(marker_token),
            int(TINY_CONFIG["text_config"]["max_position_embeddings"]),
        )
        shaper.apply(sd, seed)
    _save_shards(sd, out, shards)

    if token2wav:
        try:
            mod = importlib.import_module("harness.checkpoints.tiny_token2wav")
        except ImportError as e:
            log.info("tiny token2wav not available (%s); no token2wav/ written", e)
        else:
            mod.build_tiny_token2wav(out)  # writes out/token2wav/
    return out
