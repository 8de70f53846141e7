"""Step-Audio 2 tokenizer wrapper: special ids by name, safe text encoding, decoding.

``StepAudio2Tokenizer`` wraps a Hugging Face tokenizer (the real Step-Audio 2 mini one, or the
tiny test one from ``harness.checkpoints.tiny_tokenizer``). Every special id is looked up by its
string, never hard-coded, and ``encode`` never turns user text such as ``"<|EOT|>"`` into a
special token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Valid audio codes (CosyVoice2 S3 v2 codebook); ``<audio_6561>`` is the pad slot.
N_AUDIO_CODES = 6561
#: Audio token strings in the vocabulary: ``<audio_0>`` .. ``<audio_6561>``.
N_AUDIO_TOKENS = N_AUDIO_CODES + 1

BOT = "<|BOT|>"
EOT = "<|EOT|>"
AUDIO_START = "<audio_start>"
AUDIO_END = "<audio_end>"
AUDIO_PATCH = "<audio_patch>"
TTS_START = "<tts_start>"
TTS_END = "<tts_end>"
TTS_PAD = "<tts_pad>"
TOOL_CALL = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
ENDOFTEXT = "<|endoftext|>"
IM_END = "<|im_end|>"


class TokenizerError(ValueError):
    """The tokenizer lacks a token Step-Audio 2 needs, or its audio tokens are malformed."""


@dataclass(frozen=True)
class SpecialIds:
    """Ids of Step-Audio 2's special tokens, resolved by string from the tokenizer.

    ``tool_call`` / ``tool_call_end`` are ``None`` when the tokenizer has no single token for
    them (the model then writes the markers as plain text; the parser handles both).
    ``endoftext`` / ``im_end`` are ``None`` when absent; they only serve as extra stop ids.
    """

    bot: int
    eot: int
    audio_start: int
    audio_end: int
    audio_patch: int
    tts_start: int
    tts_end: int
    tts_pad: int
    audio_offset: int
    tool_call: int | None = None
    tool_call_end: int | None = None
    endoftext: int | None = None
    im_end: int | None = None


class StepAudio2Tokenizer:
    """Step-Audio 2 view of a Hugging Face tokenizer.

    * ``ids``: the special ids (``SpecialIds``), ``audio_offset`` = id of ``<audio_0>``;
    * ``encode(text)``: plain-text ids, no BOS, special-token strings are NOT parsed;
    * ``decode(ids)``: text, special tokens rendered as their strings;
    * ``stop_ids``: ``<|EOT|>`` plus the tokenizer's eos ids;
    * ``audio_token(code)`` / ``is_audio(id)`` / ``audio_code(id)``.
    """

    n_audio_codes: int = N_AUDIO_CODES

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf = hf_tokenizer
        self._backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self._text_backend = _text_only_backend(self._backend) if self._backend else None
        self.ids = self._resolve_ids()
        self.audio_offset = self.ids.audio_offset
        self.stop_ids: frozenset[int] = self._resolve_stop_ids()
        #: Ids of every added token flagged special (audio tokens included).
        self.special_added_ids: frozenset[int] = self._resolve_special_added_ids()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> StepAudio2Tokenizer:
        """Load the HF tokenizer from ``path`` (a local directory or hub id) and wrap it."""
        from transformers import AutoTokenizer

        try:
            kwargs.setdefault("trust_remote_code", False)  # never prompt for remote code
            hf = AutoTokenizer.from_pretrained(str(path), **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised with the path named
            raise TokenizerError(f"cannot load tokenizer from {str(path)!r}: {exc}") from exc
        return cls(hf)

    def _lookup(self, token: str, required: bool = True) -> int | None:
        tid = self.hf.convert_tokens_to_ids(token)
        ok = isinstance(tid, int) and tid >= 0 and self.hf.convert_ids_to_tokens(tid) == token
        if ok:
            return tid
        if required:
            raise TokenizerError(f"tokenizer has no token {token!r} (needed by Step-Audio 2)")
        return None

    def _resolve_ids(self) -> SpecialIds:
        req = self._lookup
        offset = req("<audio_0>")
        assert offset is not None
        last = f"<audio_{N_AUDIO_TOKENS - 1}>"
        if req(last) != offset + N_AUDIO_TOKENS - 1:
            raise TokenizerError(
                f"audio tokens are not contiguous: {last!r} is not <audio_0> + {N_AUDIO_TOKENS - 1}"
            )
        return SpecialIds(
            bot=req(BOT),  # type: ignore[arg-type]
            eot=req(EOT),  # type: ignore[arg-type]
            audio_start=req(AUDIO_START),  # type: ignore[arg-type]
            audio_end=req(AUDIO_END),  # type: ignore[arg-type]
            audio_patch=req(AUDIO_PATCH),  # type: ignore[arg-type]
            tts_start=req(TTS_START),  # type: ignore[arg-type]
            tts_end=req(TTS_END),  # type: ignore[arg-type]
            tts_pad=req(TTS_PAD),  # type: ignore[arg-type]
            audio_offset=offset,
            tool_call=self._lookup(TOOL_CALL, required=False),
            tool_call_end=self._lookup(TOOL_CALL_END, required=False),
            endoftext=self._lookup(ENDOFTEXT, required=False),
            im_end=self._lookup(IM_END, required=False),
        )

    def _resolve_stop_ids(self) -> frozenset[int]:
        stops = {self.ids.eot}
        eos = getattr(self.hf, "eos_token_id", None)
        if isinstance(eos, int):
            stops.add(eos)
        elif isinstance(eos, Iterable):
            stops.update(int(e) for e in eos)
        for extra in (self.ids.endoftext, self.ids.im_end):
            if extra is not None:
                stops.add(extra)
        return frozenset(stops)

    def _resolve_special_added_ids(self) -> frozenset[int]:
        if self._backend is not None:
            table = self._backend.get_added_tokens_decoder()
        else:
            table = getattr(self.hf, "added_tokens_decoder", {})
        return frozenset(int(i) for i, tok in table.items() if getattr(tok, "special", False))

    # ----------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text: no BOS/EOS, special-token strings stay text."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects str, got {type(text).__name__}")
        if not text:
            return []
        if self._text_backend is not None:
            return list(self._text_backend.encode(text, add_special_tokens=False).ids)
        # Slow (Python) tokenizers: ask transformers not to split out special tokens.
        return list(
            self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special and audio tokens appear as their strings."""
        ids = [int(i) for i in ids]
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=False)
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def token_to_id(self, token: str) -> int | None:
        """Id of a single token string, or ``None`` if the vocabulary lacks it."""
        return self._lookup(token, required=False)

    # ----------------------------------------------------------------- audio
    def audio_token(self, code: int) -> int:
        """Token id of audio code ``code`` (0..6561, 6561 being the pad slot)."""
        if not 0 <= int(code) < N_AUDIO_TOKENS:
            raise ValueError(f"audio code {code} out of range 0..{N_AUDIO_TOKENS - 1}")
        return self.audio_offset + int(code)

    def is_audio(self, token_id: int) -> bool:
        """True for ``<audio_0>`` .. ``<audio_6561>`` (the pad slot included)."""
        return self.audio_offset <= token_id < self.audio_offset + N_AUDIO_TOKENS

    def audio_code(self, token_id: int) -> int:
        """Audio code of an audio token id (may be 6561, the pad slot)."""
        if not self.is_audio(token_id):
            raise ValueError(f"token id {token_id} is not an audio token")
        return token_id - self.audio_offset


def _text_only_backend(backend: Any) -> Any:
    """A copy of a ``tokenizers.Tokenizer`` with its added tokens removed.

    Added (special) tokens are matched on raw text before BPE; without them, strings such as
    ``"<|EOT|>"`` in user text are tokenised like any other text.
    """
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    data["added_tokens"] = []
    data["truncation"] = None
    data["padding"] = None
    return Tokenizer.from_str(json.dumps(data))
