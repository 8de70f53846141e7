"""BotProfile: what one call's pipeline needs to know about its bot.

A profile is built from a YAML flow (``pipeline.flowspec``) or directly in code; the call pipeline
(``bots/call.py``) reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_PERSONA = (
    "You are a friendly, concise voice assistant answering a phone line. "
    "Keep answers short: one or two sentences."
)


@dataclass
class BotProfile:
    """Persona, voice, style and turn-taking of one bot."""

    name: str = "default"
    persona: str = DEFAULT_PERSONA
    voice: str | None = "default_female"
    style: str | None = None
    bot_speaks_first: bool = False
    greeting: str | None = None
    vad_stop_secs: float = 0.2
    smart_turn: bool = True
    tools: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None  # the flow file this profile came from


def profile_from_flow(spec: Any) -> BotProfile:
    """Build a profile from a validated flow spec (``pipeline.flowspec.FlowSpec``)."""
    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
    bot = get("bot") or {}
    bot_get = bot.get if isinstance(bot, dict) else lambda k, d=None: getattr(bot, k, d)
    greeting = get("greeting") or {}
    g_get = greeting.get if isinstance(greeting, dict) else lambda k, d=None: getattr(greeting, k, d)
    turns = get("turn_taking") or {}
    t_get = turns.get if isinstance(turns, dict) else lambda k, d=None: getattr(turns, k, d)
    return BotProfile(
        name=bot_get("name", "bot"),
        persona=get("persona") or DEFAULT_PERSONA,
        voice=get("voice"),
        style=get("style"),
        bot_speaks_first=(g_get("who_speaks_first", "caller") == "bot"),
        greeting=g_get("text"),
        vad_stop_secs=float(t_get("vad_stop_secs", 0.2) or 0.2),
        smart_turn=bool(t_get("smart_turn", True)),
        source=str(get("path", "") or "") or None,
    )
