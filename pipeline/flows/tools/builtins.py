"""The built-in tools: end_call, transfer_call, collect_dtmf, knowledge_search, switch_voice.

Each factory takes the tool's ``ToolSpec`` and the call's ``ToolContext`` and returns
``async def run(arguments, flow_manager) -> result``. Results are small dicts the model reads;
failures are ``{"error": ...}`` results, never exceptions.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loguru import logger

from pipeline.flows.format.model import ToolSpec
from pipeline.flows.format.voices import voice_descriptions
from pipeline.flows.tools.context import ToolContext
from pipeline.flows.tools.embeddings import EmbeddingModelMissing, shared_embedder
from pipeline.flows.tools.knowledge import KnowledgeBase

BuiltinTool = Callable[[dict[str, Any], Any], Awaitable[Any]]


def end_call(spec: ToolSpec, ctx: ToolContext) -> BuiltinTool:
    """Hang up after the bot's goodbye (the response that answers this tool's result)."""

    async def run(arguments: dict[str, Any], flow_manager: Any) -> Any:
        reason = str(arguments.get("reason") or "completed")
        await ctx.schedule_end(reason)
        return {"status": "ending", "note": "Say a short goodbye now; the call ends after it."}

    return run


def transfer_call(spec: ToolSpec, ctx: ToolContext) -> BuiltinTool:
    """Transfer the caller to ``number`` or the flow's default transfer number."""

    async def run(arguments: dict[str, Any], flow_manager: Any) -> Any:
        number = arguments.get("number") or default_transfer_number(ctx)
        if not number:
            return {"error": "no number to transfer to: ask the caller or offer to take a message"}
        if ctx.call_control is None:
            return {"error": "transfers are not available on this call"}
        result = await ctx.call_control.transfer(str(number))
        if not result.ok:
            return {"status": "failed", "detail": result.detail}
        return {"status": "transferring", "to": str(number), "detail": result.detail}

    return run


def default_transfer_number(ctx: ToolContext) -> str | None:
    """The flow's default transfer target: ``timeouts.transfer_to``, else a transfer node's."""
    if ctx.spec.timeouts.transfer_to:
        return ctx.spec.timeouts.transfer_to
    for node in ctx.spec.nodes.values():
        if node.transfer:
            return node.transfer
    return None


def collect_dtmf(spec: ToolSpec, ctx: ToolContext) -> BuiltinTool:
    """Wait for keypad digits until the terminator, ``max_digits`` or a timeout."""

    async def run(arguments: dict[str, Any], flow_manager: Any) -> Any:
        terminator = arguments.get("terminator") or "#"
        max_digits = arguments.get("max_digits") or None
        if ctx.dtmf.collecting:
            return {"error": "already waiting for keypad input"}
        result = await ctx.dtmf.collect(
            max_digits=max_digits,
            terminator=terminator,
            timeout_secs=ctx.dtmf_timeout_secs,
        )
        if not result.digits and result.ended_by == "timeout":
            return {"digits": "", "status": "timeout", "note": "The caller typed nothing."}
        return {"digits": result.digits, "status": result.ended_by}

    return run


def knowledge_folder(spec: ToolSpec, ctx: ToolContext) -> Path:
    """The documents folder of a knowledge_search tool (``documents:``, relative to the flow)."""
    base = ctx.spec.path.parent
    if spec.documents:
        return (base / spec.documents).resolve()
    return (base / "knowledge" / ctx.spec.name).resolve()


def knowledge_search(spec: ToolSpec, ctx: ToolContext) -> BuiltinTool:
    """Semantic search over the tool's documents folder (indexed on first use)."""
    folder = knowledge_folder(spec, ctx)
    index: asyncio.Task[KnowledgeBase] | None = None

    async def run(arguments: dict[str, Any], flow_manager: Any) -> Any:
        nonlocal index
        if index is None:
            index = asyncio.ensure_future(KnowledgeBase.load(folder))
        try:
            kb = await asyncio.shield(index)
        except (FileNotFoundError, EmbeddingModelMissing) as e:
            index = None
            return {"error": f"knowledge base unavailable: {e}"}
        hits = await kb.search(str(arguments["query"]), k=3)
        if not hits:
            return {"results": [], "note": "Nothing found; say you do not know."}
        return {
            "results": [
                {"document": h.document, "text": h.text, "score": round(h.score, 3)} for h in hits
            ]
        }

    return run


def switch_voice(spec: ToolSpec, ctx: ToolContext) -> BuiltinTool:
    """Pick the library voice that best matches a description and/or change the style."""
    library = voice_descriptions(ctx.spec.path.parent)

    async def run(arguments: dict[str, Any], flow_manager: Any) -> Any:
        description = arguments.get("voice_description")
        style = arguments.get("style")
        if not description and not style:
            return {"error": "give voice_description, style, or both"}
        changes: dict[str, Any] = {}
        result: dict[str, Any] = {}
        if description:
            voice, score = await asyncio.to_thread(pick_voice, str(description), library)
            changes["voice"] = voice
            result.update(voice=voice, voice_description=library[voice], match=round(score, 3))
        if style:
            changes["style"] = style
            result["style"] = style
        await ctx.update_settings(**changes)
        return {"status": "switched", **result}

    return run


def pick_voice(description: str, library: dict[str, str]) -> tuple[str, float]:
    """The library voice whose description is closest to ``description`` (blocking).

    Uses sentence embeddings when the model is installed, else word overlap.
    """
    names = list(library)
    texts = [f"{name.replace('_', ' ')}: {library[name]}" for name in names]
    try:
        embedder = shared_embedder()
    except EmbeddingModelMissing as e:
        logger.warning(f"switch_voice: {e}; falling back to word overlap")
        scores = [word_overlap(description, t) for t in texts]
    else:
        vectors = embedder.encode([description, *texts])
        scores = list(vectors[1:] @ vectors[0])
    best = max(range(len(names)), key=lambda i: scores[i])
    return names[best], float(scores[best])


_STOPWORDS = frozenset(
    "a an and the of with in on to for voice voices sounding sounds like that is very".split()
)


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOPWORDS]


def _same_word(a: str, b: str) -> bool:
    """Equal, or one a stem of the other ("robot" / "robotic", "calm" / "calming")."""
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    return len(short) >= 4 and long_.startswith(short)


def word_overlap(query: str, text: str) -> float:
    """Share of the query's content words found (as a word or its stem) in ``text``."""
    wanted = set(_words(query))
    have = set(_words(text))
    if not wanted:
        return 0.0
    return sum(any(_same_word(w, h) for h in have) for w in wanted) / len(wanted)


BUILTINS: dict[str, Callable[[ToolSpec, ToolContext], BuiltinTool]] = {
    "end_call": end_call,
    "transfer_call": transfer_call,
    "collect_dtmf": collect_dtmf,
    "knowledge_search": knowledge_search,
    "switch_voice": switch_voice,
}
