"""The context tiny checkpoint (``build_tiny_checkpoint(..., context=True)``) proves the cache and
the audio path: its greedy reply to a real PromptBuilder prompt changes when an earlier turn's
text changes, when the user's audio changes, when the KV cache is dropped, when positions are
wrong and when the audio features are merged one place off or in the wrong chunk order. Its
top-1/top-2 logit gaps are wide, so two correct implementations agree greedily without ties.

Each fault is a small variation of one decoding loop (``_decode``), and that loop with no fault
equals ``Generator.stream`` and ``no_cache_greedy``, so a difference comes from the fault alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.checkpoints.tiny_checkpoint import (
    ScriptError,
    build_tiny_checkpoint,
    context_messages,
    default_script,
    greedy_margins,
    speechlike_wav,
)
from model_service.stepaudio2.generate import Generator, no_cache_greedy
from model_service.stepaudio2.loader import LoadedModel, load_model
from model_service.stepaudio2.mel import log_mel_spectrogram
from model_service.stepaudio2.modeling import StepAudio2ForCausalLM
from model_service.stepaudio2.prompt import Prompt, PromptBuilder

N = 24  # reply tokens compared
SEEDS = (0, 1)


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def ctx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    d = tmp_path_factory.mktemp(f"ctx{request.param}") / "ckpt"
    return load_model(build_tiny_checkpoint(d, seed=request.param, context=True, token2wav=False))


def _prompt(lm: LoadedModel, **kw: object) -> Prompt:
    return PromptBuilder(lm.tokenizer).build(context_messages(**kw))  # type: ignore[arg-type]


def _reply(lm: LoadedModel, prompt: Prompt) -> list[int]:
    gen = Generator(lm.model, stop_ids=lm.tokenizer.stop_ids)
    return list(gen.stream(prompt.ids, prompt.mels(), max_tokens=N))


@torch.inference_mode()
def _decode(
    model: StepAudio2ForCausalLM,
    prompt: Prompt,
    feats: list[torch.Tensor],
    *,
    prefill_pos: Callable[[torch.Tensor], torch.Tensor] = lambda p: p,
    step_pos: Callable[[int, int], int] = lambda length, i: length + i,
    drop_cache: bool = False,
    patch_offset: int = 0,
) -> list[int]:
    """Greedy decoding with one fault at a time: prompt positions ``prefill_pos(arange(L))``,
    decode step ``i`` at position ``step_pos(L, i)``, a fresh cache every step (only the newest
    token is seen) and audio features written ``patch_offset`` tokens off their patches."""
    ids = torch.tensor([prompt.ids], dtype=torch.long)
    embeds = model.model.embed_tokens(ids).clone()
    at = torch.tensor(prompt.patch_positions) + patch_offset
    embeds[0, at] = torch.cat(feats)
    length = len(prompt.ids)
    pos = prefill_pos(torch.arange(length))[None]
    logits, cache = model(inputs_embeds=embeds, position_ids=pos, logits_to_keep=1)
    out: list[int] = []
    for i in range(N):
        out.append(int(torch.argmax(logits[0, -1])))
        step = torch.tensor([[out[-1]]], dtype=torch.long)
        c = model.new_cache() if drop_cache else cache
        p = torch.tensor([[step_pos(length, i)]])
        logits, _ = model(input_ids=step, past_key_values=c, position_ids=p, logits_to_keep=1)
    return out


@pytest.fixture(scope="module")
def base(ctx: LoadedModel) -> tuple[Prompt, list[torch.Tensor], list[int]]:
    prompt = _prompt(ctx)
    feats = ctx.model.encode_audio(prompt.mels())
    return prompt, feats, _reply(ctx, prompt)


def test_fault_free_loop_equals_generator_and_no_cache_reference(ctx: LoadedModel, base) -> None:
    prompt, feats, reply = base
    assert len(reply) == N and not set(reply) & ctx.tokenizer.stop_ids
    assert _decode(ctx.model, prompt, feats) == reply
    ref = no_cache_greedy(ctx.model, prompt.ids, prompt.mels(), max_tokens=N)
    assert ref == reply
    # a uniform position shift changes nothing (RoPE sees only distances)
    shifted = _decode(
        ctx.model, prompt, feats, prefill_pos=lambda p: p + 37, step_pos=lambda n, i: n + i + 37
    )
    assert shifted == reply


def test_reply_depends_on_an_earlier_history_turn(ctx: LoadedModel, base) -> None:
    other = _prompt(ctx, history="What is the weather like in Berlin?")
    assert _reply(ctx, other) != base[2]


def test_reply_depends_on_the_user_audio(ctx: LoadedModel, base) -> None:
    prompt, _, reply = base
    other = _prompt(ctx, audio_seeds=(11, 2))  # same lengths, the first chunk's mel differs
    assert other.ids == prompt.ids
    assert not torch.equal(other.mels()[0], prompt.mels()[0])
    assert _reply(ctx, other) != reply


def test_reply_needs_the_kv_cache(ctx: LoadedModel, base) -> None:
    prompt, feats, reply = base
    assert _decode(ctx.model, prompt, feats, drop_cache=True) != reply


@pytest.mark.parametrize(
    "fault",
    [
        {"step_pos": lambda n, i: n},  # decode position never advances
        {"step_pos": lambda n, i: i},  # decode positions restart at 0
        {"step_pos": lambda n, i: n + i + 1},  # decode skips a position
        {"prefill_pos": lambda p: torch.where(p >= 10, p + 1, p)},  # a gap inside the prompt
    ],
    ids=["decode-stuck", "decode-from-0", "decode-skips-one", "prefill-gap"],
)
def test_reply_depends_on_positions(ctx: LoadedModel, base, fault: dict) -> None:
    prompt, feats, reply = base
    assert _decode(ctx.model, prompt, feats, **fault) != reply


@pytest.mark.parametrize("offset", [1, -1])
def test_reply_depends_on_where_audio_is_merged(ctx: LoadedModel, base, offset: int) -> None:
    prompt, feats, reply = base
    assert _decode(ctx.model, prompt, feats, patch_offset=offset) != reply


def test_reply_depends_on_audio_row_and_chunk_order(ctx: LoadedModel, base) -> None:
    prompt, feats, reply = base
    assert feats[0].shape == feats[1].shape  # swapping keeps every count right
    assert _decode(ctx.model, prompt, [feats[1], feats[0]]) != reply
    rolled = torch.roll(torch.cat(feats), 1, dims=0)  # every row one patch late
    assert _decode(ctx.model, prompt, [rolled]) != reply


def test_greedy_margins_are_wide(ctx: LoadedModel) -> None:
    prompt = _prompt(ctx)
    tokens, margins = greedy_margins(ctx.model, prompt.ids, prompt.mels(), max_tokens=64)
    tokens_gen = list(
        Generator(ctx.model, stop_ids=[]).stream(prompt.ids, prompt.mels(), max_tokens=64)
    )
    assert tokens == tokens_gen
    tk = ctx.tokenizer
    assert all(t < 151643 or tk.is_audio(t) for t in tokens)  # text or audio codes only
    with torch.inference_mode():
        x = torch.tensor([prompt.ids + tokens[:-1]])
        feats = ctx.model.encode_audio(prompt.mels())
        logits, _ = ctx.model(inputs_embeds=ctx.model.embed(x, feats), logits_to_keep=64)
    top = float(logits.max(dim=-1).values.abs().min())
    print(f"64-token greedy run: min top1-top2 margin {min(margins):.4g}, top logit >= {top:.4g}")
    assert min(margins) > 1e-3
    assert min(margins) / float(logits.abs().max()) > 1e-5


def test_audio_features_follow_the_mel(ctx: LoadedModel) -> None:
    a, b = ctx.model.encode_audio([log_mel_spectrogram(speechlike_wav(1.2, s)) for s in (1, 11)])
    assert float((a - b).norm() / a.norm()) > 0.15
    assert float((a[1:] - a[:-1]).norm() / a.norm()) > 0.15  # rows differ from each other
    rms = float(a.pow(2).mean().sqrt())
    assert 0.5 < rms < 2.0  # like the token embeddings (RMS 1)


def test_context_build_is_deterministic_fp32_head_dim_32(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = build_tiny_checkpoint(tmp_path / "a", seed=3, context=True, shards=1, token2wav=False)
    b = build_tiny_checkpoint(tmp_path / "b", seed=3, context=True, shards=1, token2wav=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(t.dtype == torch.float32 for t in wa.values())
    lm = load_model(a)
    text = lm.config.text
    assert text.hidden_size // text.num_attention_heads == 32
    plain = build_tiny_checkpoint(tmp_path / "p", seed=3, shards=1, token2wav=False)
    wp = load_file(plain / "model.safetensors")
    assert not torch.equal(wa["lm_head.weight"], wp["lm_head.weight"])
    torch.testing.assert_close(wa["encoder.conv1.weight"], wp["encoder.conv1.weight"])
    with pytest.raises(ScriptError, match="context"):
        build_tiny_checkpoint(
            tmp_path / "s", context=True, script=default_script(lm.tokenizer), token2wav=False
        )


def test_speechlike_wav_is_seeded_and_time_varying() -> None:
    a, b = speechlike_wav(1.0, 4), speechlike_wav(1.0, 4)
    assert a.dtype == np.float32 and a.shape == (16000,) and np.array_equal(a, b)
    assert not np.array_equal(a, speechlike_wav(1.0, 5))
    loud = [float(np.sqrt(np.mean(a[i : i + 1600] ** 2))) for i in range(0, 16000, 1600)]
    assert max(loud) > 1.5 * min(loud)
