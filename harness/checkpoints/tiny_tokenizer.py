"""A tiny, offline Hugging Face tokenizer with Step-Audio 2 mini's real special-token ids.

What it is for: CPU tests of the prompt builder, the TA4 parser, the tiny random checkpoint and
the model service, without downloading the real 158,720-entry tokenizer.

What it contains:

* a small byte-level BPE (so any text, including UTF-8 and JSON, round-trips) trained offline
  with the ``tokenizers`` library on a small built-in corpus; all its ids are < 151643;
* the model's special tokens at their real ids (see ``SPECIAL_TOKEN_IDS``);
* ``<audio_0>`` .. ``<audio_6561>`` at 151696 .. 158257.

Every special token is stored both in the BPE model's vocabulary (at its fixed id, leaving the
id space between the BPE tokens and 151643 empty) and in ``added_tokens`` (so it is matched as
one token and flagged special). The id space is therefore sparse: ``len(tokenizer)`` is *not*
the model's vocab size; size embedding tables from the model config, never from the tokenizer.

The build is deterministic: the same files, byte for byte, on every call.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Ids verified against the real model (see docs: step-audio2-mini.md §2.1).
ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
EOT_ID = 151665
AUDIO_START_ID = 151688
AUDIO_END_ID = 151689
AUDIO_PATCH_ID = 151690
TTS_START_ID = 151693
TTS_END_ID = 151694
AUDIO_OFFSET = 151696
N_AUDIO_TOKENS = 6562  # <audio_0>..<audio_6561>; <audio_6561> is the pad slot

# Ids NOT verified against the real tokenizer. They are plausible free slots only; our code never
# relies on these numbers (everything looks special tokens up by string via the tokenizer).
BOT_ID = 151666
TOOL_CALL_ID = 151657  # as in Qwen2.5
TOOL_CALL_END_ID = 151658  # as in Qwen2.5
TTS_PAD_ID = 151695

#: (content, id, special) for every non-audio added token.
SPECIAL_TOKEN_IDS: tuple[tuple[str, int, bool], ...] = (
    ("<|endoftext|>", ENDOFTEXT_ID, True),
    ("<|im_start|>", IM_START_ID, True),
    ("<|im_end|>", IM_END_ID, True),
    ("<tool_call>", TOOL_CALL_ID, False),
    ("</tool_call>", TOOL_CALL_END_ID, False),
    ("<|EOT|>", EOT_ID, True),
    ("<|BOT|>", BOT_ID, True),
    ("<audio_start>", AUDIO_START_ID, True),
    ("<audio_end>", AUDIO_END_ID, True),
    ("<audio_patch>", AUDIO_PATCH_ID, True),
    ("<tts_start>", TTS_START_ID, True),
    ("<tts_end>", TTS_END_ID, True),
    ("<tts_pad>", TTS_PAD_ID, True),
)

_BPE_VOCAB_SIZE = 1024

# Small built-in training corpus: English prose, digits, punctuation, JSON, a little non-ASCII.
_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant. Please talk to the user in a calm voice.",
    "Hello! How can I help you today? I'd like to book an appointment for Tuesday at 3 pm.",
    "Thank you for calling. Your order number is 48213 and it will arrive on 2025-08-29.",
    "The weather in London is 18 degrees, partly cloudy, with a light breeze from the west.",
    "Sure, let me check that for you. One moment, please.",
    "I'm sorry, I didn't catch that. Could you repeat your phone number, digit by digit?",
    "Your balance is $1,234.56; the next payment of $99.99 is due on March 3rd.",
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",'
    ' "parameters": {"type": "object", "properties": {"location": {"type": "string"}},'
    ' "required": ["location"]}}}',
    '{"name": "search", "arguments": {"query": "opening hours", "limit": 5, "exact": true}}',
    "Today is Friday. The time is 10:45. Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024.",
    "Goodbye, and have a wonderful day! Is there anything else I can help you with?",
    "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.",
    "Café, naïve, résumé, Zürich, São Paulo, 東京, 你好, привет, 😀.",
    "function\nget_date_time\n{}\nPlease summarise the search results briefly for the user.",
    "Q: What are your opening hours? A: We are open Monday to Friday, 9 am to 5 pm.",
    "(parentheses) [brackets] {braces} <angle> 'single' \"double\" - _ / \\ | ~ ` ^ * & % # @ !",
)


def _train_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Repeat the corpus so merges have counts > 1; the trainer is deterministic for a fixed input.
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return tok


def _all_added_tokens() -> list[tuple[str, int, bool]]:
    rows = list(SPECIAL_TOKEN_IDS)
    rows += [(f"<audio_{i}>", AUDIO_OFFSET + i, True) for i in range(N_AUDIO_TOKENS)]
    return sorted(rows, key=lambda r: r[1])


def build_tokenizer_json() -> dict:
    """Return the ``tokenizer.json`` content (a dict) of the tiny tokenizer."""
    data = json.loads(_train_bpe().to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    if max(vocab.values()) >= ENDOFTEXT_ID:
        raise AssertionError("BPE ids must stay below 151643")
    added = []
    for content, tid, special in _all_added_tokens():
        if content in vocab:
            raise AssertionError(f"added token {content!r} collides with a BPE token")
        vocab[content] = tid
        added.append(
            {
                "id": tid,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": special,
            }
        )
    data["added_tokens"] = added
    data["truncation"] = None
    data["padding"] = None
    return data


def build_tiny_tokenizer(out_dir: str | Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    The directory loads offline with ``transformers.AutoTokenizer.from_pretrained(out_dir)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = build_tokenizer_json()
    (out / "tokenizer.json").write_text(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    added_decoder = {
        str(row["id"]): {k: row[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                             "single_word", "special")}
        for row in data["added_tokens"]
        if not row["content"].startswith("<audio_") or row["content"] in (
            "<audio_start>", "<audio_end>", "<audio_patch>")
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|EOT|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 16384,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added_decoder,
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    special_map = {"eos_token": "<|EOT|>", "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    build_tiny_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "tiny_tokenizer")
