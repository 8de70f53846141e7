"""Verbatim speech on the Step-Audio 2 backends: the forced TA4 plan, the ``Generator``'s
``forced`` hook and ``ReferenceBackend.render_speech`` on a real tiny checkpoint whose replies
depend on the whole context (``build_tiny_checkpoint(context=True)``), plus the ``assistant``
role of ``input_text.append`` in the prompt the backend builds next.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint
from model_service.backends.base import SessionConfig, SpeechUnsupported
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.sampling import GREEDY
from model_service.stepaudio2.forced import AUDIO_PER_GROUP, ForcedSpeech
from model_service.stepaudio2.generate import KVSession
from model_service.stepaudio2.prompt import AssistantMessage, HumanMessage
from model_service.stepaudio2.tokenizer import N_AUDIO_CODES

GROUP = 1 + AUDIO_PER_GROUP
GREETING = "Hello, thanks for calling the Harbour Hotel. How can I help?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("speech-ctx"), seed=0, context=True)


@pytest.fixture(scope="module")
def backend(checkpoint) -> ReferenceBackend:
    b = load_reference_backend(checkpoint)
    b.speech_sampling = GREEDY  # exact comparisons; the default is seeded sampling
    return b


def check_layout(tok, text: str, ids: list[int]) -> list[int]:
    """Assert the TA4 layout of a verbatim render; returns its audio codes."""
    sp = tok.ids
    text_ids = tok.encode(text)
    assert ids[-2:] == [sp.tts_end, sp.eot]
    body = ids[:-2]
    assert len(body) % GROUP == 0
    slots = [body[i] for i in range(0, len(body), GROUP)]
    assert slots[: len(text_ids)] == text_ids  # the text, exactly, in order
    assert set(slots[len(text_ids) :]) <= {sp.tts_pad}
    audio = [t for i, t in enumerate(body) if i % GROUP]
    lo = tok.audio_offset
    assert all(lo <= t < lo + N_AUDIO_CODES for t in audio)  # real codes, never the audio pad
    return [t - lo for t in audio]


# ------------------------------------------------------------------------------ the plan
def test_forced_plan_layout(backend) -> None:
    tok = backend.tok
    sp = tok.ids
    plan = ForcedSpeech.for_text(tok, "Hi there", max_pad_groups=2)
    text_ids = tok.encode("Hi there")
    audio = tok.audio_token(5)
    gen: list[int] = []
    for t in text_ids:
        assert plan.allowed(gen) == t and plan.run_length(gen) == 1
        gen.append(t)
        assert plan.run_length(gen) == AUDIO_PER_GROUP
        for k in range(AUDIO_PER_GROUP):
            assert plan.allowed(gen) == range(tok.audio_offset, tok.audio_offset + N_AUDIO_CODES)
            assert plan.run_length(gen) == AUDIO_PER_GROUP - k
            gen.append(audio)
    for _ in range(2):  # the model may pad twice ...
        assert plan.allowed(gen) == {sp.tts_pad, sp.tts_end}
        gen += [sp.tts_pad] + [audio] * AUDIO_PER_GROUP
    assert plan.allowed(gen) == sp.tts_end  # ... then the end is forced
    gen.append(sp.tts_end)
    assert plan.allowed(gen) == sp.eot
    gen.append(sp.eot)
    assert plan.allowed(gen) is None
    plan.check(gen)
    assert plan.codes(gen) == [5] * (AUDIO_PER_GROUP * (len(text_ids) + 2))
    assert len(gen) <= plan.max_tokens
    bad = list(gen)
    bad[0] = text_ids[0] + 1
    with pytest.raises(RuntimeError, match="token 0"):
        plan.check(bad)
    with pytest.raises(ValueError, match="nothing to say"):
        ForcedSpeech.for_text(tok, "")


def test_generator_forced_hook_forces_restricts_and_stops(backend) -> None:
    tok = backend.tok
    prompt = backend.speech_prompt("Good morning.", "default", None).ids
    lo = tok.audio_offset
    window = range(lo + 100, lo + 110)
    forced_id = tok.encode("Hotel")[0]

    def hook(generated):
        if len(generated) == 6:
            return None  # stop
        return forced_id if len(generated) % 2 == 0 else window

    out = list(backend.generator.stream(prompt, sampling=GREEDY, session=KVSession(), forced=hook))
    assert len(out) == 6
    assert out[0::2] == [forced_id] * 3
    assert all(t in window for t in out[1::2])
    # the restriction is argmax over the allowed ids: free greedy picks something else here
    free = list(backend.generator.stream(prompt, sampling=GREEDY, session=KVSession(), max_tokens=2))
    assert free[0] not in window


# ------------------------------------------------------------------------------ renders
async def test_reference_render_is_verbatim_and_grows_with_the_text(backend) -> None:
    tok = backend.tok
    short = await backend.render_speech("Hello.")
    short_render = backend.last_speech
    long = await backend.render_speech(GREETING)
    long_render = backend.last_speech
    for text, render, pcm in (("Hello.", short_render, short), (GREETING, long_render, long)):
        assert render.text == text
        assert check_layout(tok, text, render.ids) == render.codes
        assert pcm.dtype == np.float32 and pcm.ndim == 1 and pcm.size > 0
        assert np.isfinite(pcm).all() and np.abs(pcm).max() > 0
        assert render.voice == backend.default_voice
    # audio length follows the codes (25 Hz, 24 kHz) and grows with the text
    assert len(long_render.codes) > 3 * len(short_render.codes)
    assert long.size > 3 * short.size
    # other text, other audio codes
    other = await backend.render_speech("Goodbye, and thank you for calling the Harbour Hotel!")
    assert backend.last_speech.codes != long_render.codes
    assert other.size != long.size or not np.array_equal(other, long)
    # the same text renders alike (greedy here; seeded sampling by default)
    again = await backend.render_speech(GREETING)
    assert backend.last_speech.ids == long_render.ids
    assert np.array_equal(again, long)


async def test_render_prompt_carries_voice_and_style_and_the_text(backend) -> None:
    tok = backend.tok
    await backend.render_speech("Hello.", voice="default_male", style="Speak slowly.")
    render = backend.last_speech
    text = tok.decode(render.prompt_ids)
    assert "Please talk to the user in the default male voice." in text
    assert "Speak slowly." in text and "Hello." in text
    assert render.prompt_ids[-1] == tok.ids.tts_start
    male = render.codes
    await backend.render_speech("Hello.", voice="default_female")
    assert backend.last_speech.codes != male  # the voice is in the prompt the codes follow


async def test_render_refuses_an_unknown_voice_and_a_backend_without_token2wav(backend) -> None:
    with pytest.raises(ValueError, match="unknown voice"):
        await backend.render_speech("Hello.", voice="nobody")
    mute = ReferenceBackend(backend.loaded, None)
    with pytest.raises(SpeechUnsupported):
        await mute.render_speech("Hello.")
    await mute.close()


# ------------------------------------------------------------------------------ assistant role
async def test_an_assistant_text_turn_is_the_bots_own_turn_in_the_next_prompt(backend) -> None:
    tok = backend.tok
    sp = tok.ids
    session = await backend.open_session(
        SessionConfig(call_id="greet", system_prompt="You are the front desk.", sampling=GREEDY)
    )
    await session.append_text(GREETING, role="assistant")
    await session.append_text("Do you have rooms tonight?")
    ids = session.build_prompt().ids
    bot_turn = [sp.bot, *tok.encode("assistant\n" + GREETING), sp.eot]
    human_turn = [sp.bot, *tok.encode("human\nDo you have rooms tonight?"), sp.eot]
    tail = bot_turn + human_turn + backend.prompts.generation_prefix("speech")
    assert ids[-len(tail) :] == tail
    # and the reply depends on it: without the greeting the model answers otherwise
    with_greeting = [ev async for ev in session.respond()]
    plain = await backend.open_session(
        SessionConfig(call_id="plain", system_prompt="You are the front desk.", sampling=GREEDY)
    )
    await plain.append_text("Do you have rooms tonight?")
    without = [ev async for ev in plain.respond()]
    assert with_greeting[-1].status == without[-1].status == "completed"
    assert session.conversation.last_reply_ids() != plain.conversation.last_reply_ids()
    # the greeting stays the bot's first turn, before the caller's and the generated reply
    first, second, third = session.conversation.messages
    assert first == AssistantMessage(text=GREETING)
    assert isinstance(second, HumanMessage) and third.ids is not None
    with pytest.raises(ValueError, match="role must be"):
        await session.append_text("Hi", role="tool")
    await session.close()
    await plain.close()
