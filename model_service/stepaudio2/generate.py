"""Streaming decoding for :class:`StepAudio2ForCausalLM` with a KV cache and session reuse.

``Generator.stream`` prefills the prompt once (audio features injected at ``<audio_patch>``
positions), then decodes one token per step, greedy when ``temperature == 0`` and otherwise
temperature / top-k / top-p / repetition-penalty sampling from a seeded ``torch.Generator``.
It stops on a stop id (yielded last, so callers see it), on ``max_tokens`` or when ``cancel``
is set (checked before every model step).

Multi-turn calls pass the same :class:`KVSession`: when the new prompt extends what the cache
already holds (token ids *and* audio chunk identities match), only the new suffix is
prefilled. ``no_cache_greedy`` is the slow reference used to prove the cached path exact.

``forced`` (optional) constrains each step: called with the ids generated so far, it returns an
id (forced), a ``range`` or a collection of ids (sampling/greedy restricted to them), or None
(stop). ``stepaudio2/forced.py`` uses it to speak a given text verbatim.
Across conversations, a :class:`PrefixStore` (one per model) keeps copies of the KV of shared
prompt prefixes (a bot's system + tool-schema turns): a session whose cache is empty starts from
the longest stored prefix of its prompt, so every call of a bot after the first skips that prefill.
"""

from __future__ import annotations

import copy
import hashlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from model_service.sampling import GREEDY, SamplingParams

from .mel import N_MELS, audio_token_count
from .modeling import StepAudio2ForCausalLM

AUDIO_PATCH_ID = 151690

#: A step constraint: ids generated so far -> forced id, allowed ids, or None (stop).
Constraint = Callable[[Sequence[int]], "int | range | Collection[int] | None"]


@dataclass
class GenerationStats:
    """Timings of the last ``stream`` call (milliseconds)."""

    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from the session cache
    prefill_tokens: int = 0  # prompt tokens actually run through the model
    audio_encode_ms: float = 0.0
    prefill_ms: float = 0.0
    token_ms: list[float] = field(default_factory=list)  # per decoded token after the first
    generated: int = 0
    stop_reason: str = ""  # "stop" | "length" | "cancelled"


@dataclass
class KVSession:
    """A conversation's KV cache plus the keys (ids / audio identities) of what it holds."""

    keys: list[Any] = field(default_factory=list)
    cache: Any = None
    active: bool = False  # a stream is currently using this session

    def reset(self) -> None:
        self.keys = []
        self.cache = None


class PrefixStore:
    """A bounded LRU of KV caches for prompt prefixes shared by many sessions (thread safe).

    Entries are never mutated once stored: ``lookup`` hands out a deep copy (the session then
    extends and crops it), ``store`` keeps its own copy cropped to the prefix. Memory: one entry
    holds ``prefix_tokens x layers x 2 x kv_heads x head_dim`` values; for Step-Audio 2 mini
    (28 layers, 4 KV heads of 128, bf16) that is ~56 KiB per token, so a 1,500-token persona +
    tools prefix is ~85 MiB and the default 4 entries stay under ~350 MiB (one entry per bot in
    use; a bot whose prompt changes, e.g. at the date change, simply adds a new entry).
    """

    def __init__(self, max_entries: int = 4) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(self, keys: Sequence[Any], limit: int | None = None) -> tuple[list[Any], Any] | None:
        """(keys, a private copy of the cache) of the longest stored prefix of ``keys`` that is
        at most ``limit`` long (default ``len(keys)``), or None."""
        limit = len(keys) if limit is None else limit
        with self._lock:
            best: tuple[Any, ...] | None = None
            for k in self._entries:
                n = len(k)
                if n <= limit and (best is None or n > len(best)) and tuple(keys[:n]) == k:
                    best = k
            if best is None:
                return None
            self._entries.move_to_end(best)
            cache = self._entries[best]
        return list(best), copy.deepcopy(cache)  # the stored entry is immutable: copy unlocked

    def has(self, keys: Sequence[Any]) -> bool:
        with self._lock:
            return tuple(keys) in self._entries

    def store(self, keys: Sequence[Any], cache: Any) -> None:
        """Keep a copy of ``cache`` cropped to ``len(keys)`` tokens (it may hold more)."""
        key = tuple(keys)
        if not key or self.has(key):
            return
        kept = copy.deepcopy(cache)
        extra = kept.get_seq_length() - len(key)
        if extra < 0:
            raise ValueError(f"cache holds {extra + len(key)} tokens, fewer than the prefix")
        if extra:
            kept.crop(len(key))
        with self._lock:
            self._entries[key] = kept
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def _is_mel(a: torch.Tensor, hidden: int, kind: str) -> bool:
    if kind != "auto":
        return kind == "mel"
    return a.shape[0] == N_MELS and a.shape[1] != hidden


def _chunk_fingerprint(t: torch.Tensor) -> str:
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class Generator:
    """Streams token ids from a prompt; one instance per model, one ``KVSession`` per conversation."""

    def __init__(
        self,
        model: StepAudio2ForCausalLM,
        stop_ids: Iterable[int],
        patch_id: int = AUDIO_PATCH_ID,
    ) -> None:
        self.model = model
        self.stop_ids = frozenset(int(s) for s in stop_ids)
        self.patch_id = int(patch_id)
        self.last_stats = GenerationStats()

    # ------------------------------------------------------------------ audio
    def _audio_rows(
        self, audio: Sequence[torch.Tensor], skip_rows: int, kind: str
    ) -> tuple[list[torch.Tensor], float]:
        """Features for patch rows ``skip_rows..`` (and the audio-encode time in ms).

        Each item of ``audio`` is either a mel chunk ``[128, T]`` (encoded here, only when some
        of its rows are needed) or precomputed features ``[n, hidden]``.
        """
        hidden = self.model.hidden_size
        counts: list[int] = []
        is_mel: list[bool] = []
        for i, a in enumerate(audio):
            if a.dim() != 2:
                raise ValueError(f"audio item {i} must be 2-D, got shape {tuple(a.shape)}")
            mel = _is_mel(a, hidden, kind)
            is_mel.append(mel)
            counts.append(audio_token_count(int(a.shape[1])) if mel else int(a.shape[0]))
        t0 = time.perf_counter()
        need = [i for i in range(len(audio)) if sum(counts[: i + 1]) > skip_rows]
        mel_idx = [i for i in need if is_mel[i]]
        encoded = dict(
            zip(mel_idx, self.model.encode_audio([audio[i] for i in mel_idx]), strict=True)
        )
        enc_ms = (time.perf_counter() - t0) * 1000 if mel_idx else 0.0
        rows: list[torch.Tensor] = []
        start = 0
        for i, n in enumerate(counts):
            if i in need:
                feats = encoded[i] if is_mel[i] else audio[i]
                lo = max(0, skip_rows - start)
                rows.append(feats[lo:])
            start += n
        return rows, enc_ms

    def _prompt_keys(self, ids: Sequence[int], audio_keys: list[tuple[str, int]]) -> list[Any]:
        keys: list[Any] = []
        k = 0
        for t in ids:
            if t == self.patch_id:
                if k >= len(audio_keys):
                    raise ValueError(
                        f"prompt has more <audio_patch> tokens than audio frames ({len(audio_keys)})"
                    )
                keys.append(("audio", *audio_keys[k]))
                k += 1
            else:
                keys.append(int(t))
        if k != len(audio_keys):
            raise ValueError(
                f"prompt has {k} <audio_patch> tokens but the audio gives {len(audio_keys)} frames"
            )
        return keys

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def stream(
        self,
        prompt_ids: Sequence[int],
        audio: Sequence[torch.Tensor] | None = None,
        sampling: SamplingParams | None = None,
        cancel: threading.Event | None = None,
        max_tokens: int = 2048,
        session: KVSession | None = None,
        audio_kind: str = "auto",
        stats: GenerationStats | None = None,
        forced: Constraint | None = None,
        prefix_store: PrefixStore | None = None,
        shared_prefix: int = 0,
    ) -> Iterator[int]:
        """Yield generated token ids (the stop id, if reached, is yielded last).

        ``audio``: one item per ``<audio_start>…<audio_end>`` chunk, in prompt order: mel
        ``[128, T]`` or features ``[n, hidden]`` (``audio_kind`` "mel" / "features" says which
        when a shape is ambiguous; "auto" treats ``[128, T]`` with ``T != hidden`` as mel).
        ``session``: reused and updated in place. ``stats`` (optional) is filled with timings;
        ``self.last_stats`` also points at it (use ``stats`` when threads share a Generator).
        ``forced``: the per-step constraint hook (module docstring); None: free decoding.
        ``prefix_store``: when ``session`` holds no cache, it starts from the store's longest
        prefix of this prompt; after such a session's prefill its first ``shared_prefix`` prompt
        tokens (the part every conversation of a bot shares) are stored if not already there.
        """
        if audio_kind not in ("auto", "mel", "features"):
            raise ValueError(f"audio_kind must be auto, mel or features, got {audio_kind!r}")

        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise ValueError("empty prompt")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        sampling = sampling or GREEDY
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(ids)
        self.last_stats = stats
        session = session if session is not None else KVSession()
        if session.active:
            raise RuntimeError(
                "this KVSession is used by an unfinished stream; exhaust or close() it first"
            )
        session.active = True
        try:
            yield from self._run(
                ids,
                list(audio or []),
                sampling,
                cancel,
                max_tokens,
                session,
                audio_kind,
                stats,
                forced,
                prefix_store,
                shared_prefix,
            )
        finally:
            session.active = False

    def _run(
        self,
        ids: list[int],
        audio: list[torch.Tensor],
        sampling: SamplingParams,
        cancel: threading.Event | None,
        max_tokens: int,
        session: KVSession,
        audio_kind: str,
        stats: GenerationStats,
        forced: Constraint | None = None,
        prefix_store: PrefixStore | None = None,
        shared_prefix: int = 0,
    ) -> Iterator[int]:
        model = self.model
        generated: list[int] = []

        def pick(logits: torch.Tensor) -> int | None:
            if forced is None:
                return self._pick(logits, sampling, seen, gen)
            allowed = forced(generated)
            if allowed is None:
                return None
            if isinstance(allowed, int):
                return int(allowed)
            return self._pick(_restrict(logits, allowed), sampling, seen, gen)

        # --- what can be reused from the session cache (or, for a fresh one, the shared store)
        audio_keys = self._audio_keys(audio, audio_kind)
        keys = self._prompt_keys(ids, audio_keys)
        fresh = session.cache is None
        if fresh and prefix_store is not None:
            hit = prefix_store.lookup(keys, limit=len(keys) - 1)  # always prefill >= 1 token
            if hit is not None:
                session.keys, session.cache = hit
        reuse = 0
        if session.cache is not None:
            limit = min(len(session.keys), len(keys) - 1)  # always prefill >= 1 token
            while reuse < limit and session.keys[reuse] == keys[reuse]:
                reuse += 1
            drop = len(session.keys) - reuse
            if drop > 0:
                session.cache.crop(-drop)
        if session.cache is None or reuse == 0:
            session.cache = model.new_cache()
            reuse = 0
        session.keys = keys[:reuse]
        stats.reused_tokens = reuse
        stats.prefill_tokens = len(ids) - reuse

        if cancel is not None and cancel.is_set():
            stats.stop_reason = "cancelled"
            return
        skip_rows = sum(1 for t in ids[:reuse] if t == self.patch_id)
        rows, enc_ms = self._audio_rows(audio, skip_rows, audio_kind)
        stats.audio_encode_ms = enc_ms

        gen = torch.Generator(device="cpu")
        gen.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))
        seen = set(ids)

        t0 = time.perf_counter()
        new_ids = torch.tensor([ids[reuse:]], dtype=torch.long, device=model.device)
        try:
            embeds = model.embed(new_ids, rows, self.patch_id)
            logits, cache = model(
                inputs_embeds=embeds, past_key_values=session.cache, logits_to_keep=1
            )
        except BaseException:
            session.reset()  # the cache may hold a partial prefill
            raise
        session.keys = list(keys)
        if fresh and prefix_store is not None and 0 < shared_prefix < len(keys):
            prefix_store.store(keys[:shared_prefix], session.cache)
        token = pick(logits[0, -1])
        stats.prefill_ms = (time.perf_counter() - t0) * 1000

        produced = 0
        while True:
            if token is None:  # the constraint hook ended the generation
                stats.stop_reason = "stop"
                return
            generated.append(token)
            produced += 1
            stats.generated = produced
            seen.add(token)
            yield token
            if token in self.stop_ids:
                stats.stop_reason = "stop"
                return
            if produced >= max_tokens:
                stats.stop_reason = "length"
                return
            if cancel is not None and cancel.is_set():
                stats.stop_reason = "cancelled"
                return
            t1 = time.perf_counter()
            step = torch.tensor([[token]], dtype=torch.long, device=model.device)
            try:
                logits, cache = model(input_ids=step, past_key_values=cache, logits_to_keep=1)
            except BaseException:
                session.reset()
                raise
            session.keys.append(token)
            token = pick(logits[0, -1])
            stats.token_ms.append((time.perf_counter() - t1) * 1000)

    def _audio_keys(self, audio: Sequence[torch.Tensor], kind: str) -> list[tuple[str, int]]:
        """Identity key (chunk fingerprint, row) of every audio patch row, in prompt order."""
        hidden = self.model.hidden_size
        keys: list[tuple[str, int]] = []
        for i, a in enumerate(audio):
            if a.dim() != 2:
                raise ValueError(f"audio item {i} must be 2-D, got shape {tuple(a.shape)}")
            mel = _is_mel(a, hidden, kind)
            n = audio_token_count(int(a.shape[1])) if mel else int(a.shape[0])
            fp = _chunk_fingerprint(a)
            keys.extend((fp, j) for j in range(n))
        return keys

    @staticmethod
    def _pick(
        logits: torch.Tensor, sampling: SamplingParams, seen: set[int], gen: torch.Generator
    ) -> int:
        logits = logits.float()
        rp = float(getattr(sampling, "repetition_penalty", 1.0) or 1.0)
        if rp != 1.0 and seen:
            idx = torch.tensor(sorted(seen), device=logits.device)
            vals = logits[idx]
            logits = logits.clone()
            logits[idx] = torch.where(vals > 0, vals / rp, vals * rp)
        temp = float(getattr(sampling, "temperature", 0.0) or 0.0)
        if temp <= 0.0:
            return int(torch.argmax(logits).item())
        logits = logits / temp
        top_k = int(getattr(sampling, "top_k", 0) or 0)
        if 0 < top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        top_p = float(getattr(sampling, "top_p", 1.0) or 1.0)
        if 0.0 < top_p < 1.0:
            # Nucleus over the best candidates; a full sort only if they hold < top_p mass.
            probs_all = torch.softmax(logits, dim=-1)
            k = min(logits.shape[-1], 2048)
            top_probs, order = torch.topk(probs_all, k)
            if k < logits.shape[-1] and float(top_probs.sum()) < top_p:
                top_probs, order = torch.sort(probs_all, descending=True)
            cum = torch.cumsum(top_probs, dim=-1)
            keep = (cum - top_probs) <= top_p  # the smallest prefix reaching top_p
            keep[0] = True
            kept = order[keep]
            logits = torch.full_like(logits, float("-inf")).index_copy_(0, kept, logits[kept])
        probs = torch.softmax(logits, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=gen).item())


def _restrict(logits: torch.Tensor, allowed: range | Collection[int]) -> torch.Tensor:
    """``logits`` with every id outside ``allowed`` at -inf (a ``range`` is sliced, not listed)."""
    if not allowed:
        raise ValueError("a step constraint allowed no token")
    out = torch.full_like(logits, float("-inf"))
    if isinstance(allowed, range) and allowed.step == 1:
        out[allowed.start : allowed.stop] = logits[allowed.start : allowed.stop]
        return out
    idx = torch.tensor(sorted(int(i) for i in allowed), dtype=torch.long, device=logits.device)
    out[idx] = logits[idx]
    return out


@torch.inference_mode()
def no_cache_greedy(
    model: StepAudio2ForCausalLM,
    prompt_ids: Sequence[int],
    audio: Sequence[torch.Tensor] | None = None,
    stop_ids: Iterable[int] = (),
    max_tokens: int = 32,
    patch_id: int = AUDIO_PATCH_ID,
    audio_kind: str = "auto",
) -> list[int]:
    """Reference greedy decoding: re-runs the full sequence every step (no KV cache)."""
    stops = {int(s) for s in stop_ids}
    feats = []
    for a in audio or []:
        is_mel = _is_mel(a, model.hidden_size, audio_kind)
        feats.append(model.encode_audio([a])[0] if is_mel else a)
    ids = [int(t) for t in prompt_ids]
    out: list[int] = []
    for _ in range(max_tokens):
        x = torch.tensor([ids], dtype=torch.long, device=model.device)
        logits, _ = model(inputs_embeds=model.embed(x, feats, patch_id), logits_to_keep=1)
        tok = int(torch.argmax(logits[0, -1].float()).item())
        out.append(tok)
        ids.append(tok)
        if tok in stops:
            break
    return out
