"""The reference backend's shared-prefix KV store, on the context tiny checkpoint.

``build_tiny_checkpoint(context=True)`` makes the greedy reply depend on the whole context and the
KV cache, so a wrong or corrupted shared entry changes the reply: call 2 of a bot must reuse the
system + tools prefix *and* say exactly what a backend without the store says.
"""

from __future__ import annotations

import pytest

from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint
from model_service.backends.base import ResponseDone, SamplingParams, SessionConfig
from model_service.backends.reference import ReferenceBackend
from model_service.stepaudio2.generate import PrefixStore
from model_service.stepaudio2.loader import load_model

GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_tokens=24)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "check_hours",
            "description": "Opening hours for a day",
            "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
        },
    }
]
FRONT_DESK = "You are the front desk of the Riverside clinic. We open Monday to Friday, 8 to 6."
PIZZA = "You take orders for Luigi's pizza. Be brief and friendly; we deliver until midnight."


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    d = build_tiny_checkpoint(tmp_path_factory.mktemp("ctx"), seed=0, context=True, token2wav=False)
    return load_model(d)


@pytest.fixture(scope="module")
def shared(loaded) -> ReferenceBackend:
    return ReferenceBackend(loaded, None, prefix_cache_entries=2)


@pytest.fixture(scope="module")
def plain(loaded) -> ReferenceBackend:
    return ReferenceBackend(loaded, None, prefix_cache_entries=0)


async def call(backend: ReferenceBackend, persona: str, line: str, call_id: str):
    """One call: the caller's line, one reply. Returns (reply ids, stats, shared prefix length)."""
    cfg = SessionConfig(call_id=call_id, system_prompt=persona, tools=TOOLS, sampling=GREEDY)
    session = await backend.open_session(cfg)
    try:
        await session.append_text(line)
        events = [ev async for ev in session.respond()]
        assert isinstance(events[-1], ResponseDone) and events[-1].status == "completed"
        return (
            list(session.conversation.messages[-1].ids),
            session.last_stats,
            (session.shared_prefix_len()),
        )
    finally:
        await session.close()


async def test_second_call_reuses_the_bot_prefix_and_says_the_same(shared, plain):
    assert plain.prefix_store is None
    line = "Hello, what time do you open tomorrow?"
    want, plain_stats, n_prefix = await call(plain, FRONT_DESK, line, "plain-1")
    assert plain_stats.reused_tokens == 0
    assert n_prefix > 40  # system + tool schemas: the part every call of the bot shares

    first, stats1, _ = await call(shared, FRONT_DESK, line, "shared-1")
    assert stats1.reused_tokens == 0  # nothing stored yet: full prefill
    assert first == want

    second, stats2, _ = await call(shared, FRONT_DESK, line, "shared-2")
    assert stats2.reused_tokens >= n_prefix
    assert stats2.prefill_tokens == stats2.prompt_tokens - stats2.reused_tokens
    assert second == want  # greedy, context-dependent: a wrong cache would change it

    # a call with another line decodes on its copy of the entry; the entry stays intact
    other, stats_o, _ = await call(shared, FRONT_DESK, "Can I book for Saturday?", "shared-3")
    want_other, _, _ = await call(plain, FRONT_DESK, "Can I book for Saturday?", "plain-3")
    assert stats_o.reused_tokens >= n_prefix and other == want_other
    third, stats3, _ = await call(shared, FRONT_DESK, line, "shared-4")
    assert stats3.reused_tokens >= n_prefix and third == want


async def test_another_persona_does_not_reuse_it(shared, plain):
    line = "Hello, what time do you open tomorrow?"
    await call(shared, FRONT_DESK, line, "fd")  # the front desk's prefix is stored
    got, stats, _ = await call(shared, PIZZA, line, "pizza-1")
    want, _, _ = await call(plain, PIZZA, line, "pizza-plain")
    assert stats.reused_tokens == 0
    assert got == want
    again, stats2, n_prefix = await call(shared, PIZZA, line, "pizza-2")
    assert stats2.reused_tokens >= n_prefix and again == want


def test_prefix_store_is_a_bounded_lru_of_private_copies(loaded):
    model = loaded.model
    import torch

    store = PrefixStore(max_entries=2)

    def cache_for(ids):
        cache = model.new_cache()
        model(input_ids=torch.tensor([ids]), past_key_values=cache, logits_to_keep=1)
        return cache

    a, b, c = [5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]
    store.store(a[:3], cache_for(a))  # cropped to the 3 prefix tokens
    keys, copy_a = store.lookup([5, 6, 7, 99])
    assert keys == [5, 6, 7] and copy_a.get_seq_length() == 3
    copy_a.crop(1)  # the caller's copy is its own
    assert store.lookup([5, 6, 7, 99])[1].get_seq_length() == 3
    assert store.lookup([5, 6, 99]) is None  # not a prefix
    assert store.lookup([5, 6, 7], limit=2) is None  # longer than allowed
    store.store(b, cache_for(b))
    store.lookup([5, 6, 7, 1])  # a is now the most recently used
    store.store(c, cache_for(c))  # evicts b, the least recently used
    assert len(store) == 2
    assert store.lookup([*b, 1]) is None
    assert store.lookup([*a, 1]) is not None and store.lookup([*c, 1]) is not None
    with pytest.raises(ValueError):
        PrefixStore(0)
