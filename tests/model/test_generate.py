"""Streaming generation: KV-cache exactness, session reuse, stops, cancel, sampling, and the
shaped tiny checkpoint emitting its scripts (incl. a tool-call round trip)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    default_script,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.sampling import greedy as Sampling
from model_service.stepaudio2.generate import (
    GenerationStats,
    Generator,
    KVSession,
    no_cache_greedy,
)
from model_service.stepaudio2.loader import LoadedModel, load_model
from model_service.stepaudio2.mel import audio_token_count, log_mel_spectrogram
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    d = tmp_path_factory.mktemp("rand") / "ckpt"
    return load_model(build_tiny_checkpoint(d, seed=1, token2wav=False))


def _turn(tk: StepAudio2Tokenizer, role: str, text: str) -> list[int]:
    return [tk.ids.bot, *tk.encode(f"{role}\n{text}"), tk.ids.eot]


def _audio_block(tk: StepAudio2Tokenizer, mel: torch.Tensor) -> list[int]:
    n = audio_token_count(mel.shape[1])
    return [tk.ids.audio_start, *[tk.ids.audio_patch] * n, tk.ids.audio_end]


def _mel(secs: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return log_mel_spectrogram(0.1 * rng.standard_normal(int(secs * 16000)).astype(np.float32))


def _speech_prompt(tk: StepAudio2Tokenizer, mel: torch.Tensor) -> list[int]:
    human = [tk.ids.bot, *tk.encode("human\n"), *_audio_block(tk, mel), tk.ids.eot]
    return (
        _turn(tk, "system", "You are a helpful assistant.")
        + human
        + [tk.ids.bot, *tk.encode("assistant\n"), tk.ids.tts_start]
    )


def test_kv_cache_greedy_equals_no_cache_greedy(tiny: LoadedModel) -> None:
    tk, model = tiny.tokenizer, tiny.model
    mel = _mel(1.3, 0)
    prompt = _speech_prompt(tk, mel)
    gen = Generator(model, stop_ids=tk.stop_ids)
    got = list(gen.stream(prompt, [mel], Sampling(temperature=0.0), max_tokens=16))
    ref = no_cache_greedy(model, prompt, [mel], stop_ids=tk.stop_ids, max_tokens=16)
    assert got == ref and len(got) >= 1
    stats = gen.last_stats
    assert stats.prefill_tokens == len(prompt) and stats.reused_tokens == 0
    assert stats.generated == len(got) and len(stats.token_ms) == len(got) - 1
    # features instead of mels give the same tokens
    feats = model.encode_audio([mel])
    assert list(gen.stream(prompt, feats, max_tokens=16)) == got


def test_session_prefix_reuse_matches_fresh_prefill(tiny: LoadedModel) -> None:
    tk, model = tiny.tokenizer, tiny.model
    gen = Generator(model, stop_ids=tk.stop_ids)
    mel1, mel2 = _mel(0.8, 1), _mel(0.6, 2)
    p1 = _speech_prompt(tk, mel1)
    session = KVSession()
    out1 = list(gen.stream(p1, [mel1], max_tokens=6, session=session))
    p2 = (
        p1
        + out1
        + [tk.ids.eot]
        + [tk.ids.bot, *tk.encode("human\n"), *_audio_block(tk, mel2), tk.ids.eot]
        + [tk.ids.bot, *tk.encode("assistant\n"), tk.ids.tts_start]
    )
    stats = GenerationStats()
    out2 = list(gen.stream(p2, [mel1, mel2], max_tokens=6, session=session, stats=stats))
    assert stats.reused_tokens == len(p1) + len(out1) - 1  # the last sampled token was never fed
    assert stats.prefill_tokens == len(p2) - stats.reused_tokens
    fresh = list(gen.stream(p2, [mel1, mel2], max_tokens=6))
    assert out2 == fresh
    # same ids but different audio in the first chunk: reuse stops before its first patch
    other = _mel(0.8, 99)
    out3 = list(gen.stream(p2, [other, mel2], max_tokens=6, session=session, stats=stats))
    first_patch = p2.index(tk.ids.audio_patch)
    assert stats.reused_tokens == first_patch
    assert out3 == list(gen.stream(p2, [other, mel2], max_tokens=6))


def test_stop_id_yielded_last_and_max_tokens(tiny: LoadedModel) -> None:
    tk, model = tiny.tokenizer, tiny.model
    prompt = _turn(tk, "human", "hi") + [tk.ids.bot, *tk.encode("assistant\n")]
    ref = list(Generator(model, stop_ids=[]).stream(prompt, max_tokens=5))
    assert len(ref) == 5
    gen = Generator(model, stop_ids=[ref[2]])
    out = list(gen.stream(prompt, max_tokens=5))
    assert out == ref[: ref.index(ref[2]) + 1] and out[-1] == ref[2]
    assert gen.last_stats.stop_reason == "stop"
    out = list(Generator(model, stop_ids=[]).stream(prompt, max_tokens=3))
    assert out == ref[:3]


def test_cancel_stops_within_one_step(tiny: LoadedModel) -> None:
    tk, model = tiny.tokenizer, tiny.model
    prompt = _turn(tk, "human", "hello there") + [tk.ids.bot, *tk.encode("assistant\n")]
    gen = Generator(model, stop_ids=[])
    cancel = threading.Event()
    it = gen.stream(prompt, cancel=cancel, max_tokens=50)
    first = next(it)
    cancel.set()
    assert list(it) == []
    assert gen.last_stats.stop_reason == "cancelled" and gen.last_stats.generated == 1
    assert isinstance(first, int)
    # already cancelled: nothing at all, not even a prefill
    assert list(gen.stream(prompt, cancel=cancel, max_tokens=50)) == []


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny: LoadedModel) -> None:
    tk, model = tiny.tokenizer, tiny.model
    prompt = _turn(tk, "human", "tell me a story") + [tk.ids.bot, *tk.encode("assistant\n")]
    gen = Generator(model, stop_ids=[])
    s = Sampling(temperature=1.5, top_p=0.95, top_k=0, repetition_penalty=1.05, seed=7)
    a = list(gen.stream(prompt, sampling=s, max_tokens=6))
    b = list(gen.stream(prompt, sampling=s, max_tokens=6))
    c = list(gen.stream(prompt, sampling=Sampling(temperature=1.5, seed=8), max_tokens=6))
    assert a == b and a != c
    greedy = list(gen.stream(prompt, max_tokens=8))
    k1 = list(gen.stream(prompt, sampling=Sampling(temperature=1.0, top_k=1, seed=3), max_tokens=8))
    assert k1 == greedy


def test_patch_count_mismatch_is_clear(tiny: LoadedModel) -> None:
    tk = tiny.tokenizer
    mel = _mel(1.0, 0)
    prompt = _speech_prompt(tk, mel)
    gen = Generator(tiny.model, stop_ids=tk.stop_ids)
    with pytest.raises(ValueError, match="audio_patch"):
        list(gen.stream(prompt, [mel, mel], max_tokens=2))


# ------------------------------------------------------------------------- shaped checkpoints
@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> StepAudio2Tokenizer:
    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    return StepAudio2Tokenizer.from_pretrained(d)


def test_shaped_checkpoint_emits_script(tok: StepAudio2Tokenizer, tmp_path: Path) -> None:
    script = default_script(tok)
    codes = [t for t in script if tok.is_audio(t)]
    assert len(codes) >= 64 and len(set(codes)) == len(codes)  # >= 2.5 s of speech
    assert script[-2:] == [tok.ids.tts_end, tok.ids.eot]
    lm = load_model(build_tiny_checkpoint(tmp_path / "shaped", script=script, token2wav=False))
    mel = _mel(1.0, 5)
    prompt = _speech_prompt(lm.tokenizer, mel)
    out = list(Generator(lm.model, lm.tokenizer.stop_ids).stream(prompt, [mel], max_tokens=400))
    assert out == script


def test_shaped_tool_call_round_trip(tok: StepAudio2Tokenizer, tmp_path: Path) -> None:
    first = tool_call_script(tok)
    second = after_tool_script(tok, first)
    text = tok.decode(first)
    assert '<tool_call>function\nget_weather\n{"city": "Paris"}</tool_call><|EOT|>' in text
    assert first != second and second[-2:] == [tok.ids.tts_end, tok.ids.eot]
    lm = load_model(
        build_tiny_checkpoint(
            tmp_path / "tool", script=first, after_tool_script=second, token2wav=False
        )
    )
    tk = lm.tokenizer
    schema = '[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]'
    p1 = (
        _turn(tk, "system", "You can call tools.")
        + _turn(tk, "tool_json_schemas", schema)
        + _turn(tk, "human", "What is the weather in Paris?")
        + [tk.ids.bot, *tk.encode("assistant\n"), tk.ids.tts_start]
    )
    gen = Generator(lm.model, tk.stop_ids)
    session = KVSession()
    out1 = list(gen.stream(p1, max_tokens=300, session=session))
    assert out1 == first
    p2 = (
        p1
        + out1
        + _turn(tk, "input", "Sunny, 18 degrees.")
        + [tk.ids.bot, *tk.encode("assistant\n"), tk.ids.tts_start]
    )
    stats = GenerationStats()
    out2 = list(gen.stream(p2, max_tokens=300, session=session, stats=stats))
    assert out2 == second
    assert stats.reused_tokens == len(p1) + len(out1) - 1
    # and a fresh (no-session) second turn agrees
    assert list(gen.stream(p2, max_tokens=300)) == second


def test_one_active_stream_per_session(tiny: LoadedModel) -> None:
    tk, model = tiny.tokenizer, tiny.model
    prompt = _turn(tk, "human", "hi") + [tk.ids.bot, *tk.encode("assistant\n")]
    gen = Generator(model, stop_ids=[])
    session = KVSession()
    first = gen.stream(prompt, max_tokens=5, session=session)
    next(first)
    with pytest.raises(RuntimeError, match="unfinished stream"):
        next(gen.stream(prompt, max_tokens=5, session=session))
    first.close()  # e.g. the caller barged in
    again = list(gen.stream(prompt, max_tokens=3, session=session))
    assert again == list(gen.stream(prompt, max_tokens=3))


def test_sampler_nucleus_top_k_and_repetition_penalty() -> None:
    logits = torch.full((1000,), -10.0)
    logits[[3, 7, 9]] = torch.tensor([5.0, 4.0, 0.0])  # p ~ 0.73, 0.27, ~0.005
    g = torch.Generator().manual_seed(0)
    pick = Generator._pick
    nucleus = {pick(logits, Sampling(temperature=1.0, top_p=0.5), set(), g) for _ in range(50)}
    assert nucleus == {3}  # the smallest prefix reaching 0.5 is token 3 alone
    two = {pick(logits, Sampling(temperature=1.0, top_p=0.9), set(), g) for _ in range(200)}
    assert two == {3, 7}
    k2 = {pick(logits, Sampling(temperature=5.0, top_k=2), set(), g) for _ in range(200)}
    assert k2 == {3, 7}
    assert pick(logits, Sampling(), set(), g) == 3
    # a penalty of 1.3 on the seen token 3 (5 / 1.3 < 4) hands greedy to token 7
    assert pick(logits, Sampling(repetition_penalty=1.3), {3}, g) == 7
