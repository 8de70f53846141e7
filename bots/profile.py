"""BotProfile: what one call's pipeline needs to know about its bot.

A profile is built from a YAML flow (``pipeline.flows.format``) or directly in code; the call pipeline
(``bots/call.py``) reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.flows.format import FlowSpec

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
    #: The opening line word for word (``greeting.say``): rendered once, played on connect.
    greeting_say: str | None = None
    vad_stop_secs: float = 0.2
    smart_turn: bool = True
    tools: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None  # the flow file this profile came from
    #: Seconds of caller speech that interrupt the bot (backchannels are shorter).
    min_interrupt_secs: float = 0.6
    #: The caller cannot interrupt the greeting.
    mute_during_greeting: bool = False
    #: Model service lost mid-call: "end" (apology, hang up) or "transfer" (to ``transfer_to``).
    on_model_failure: str = "end"
    transfer_to: str | None = None
    #: What the caller hears when the model service is lost (a built-in sentence when None).
    apology: str | None = None
    #: Record the call (stereo WAV: caller left, bot right) and keep it this many days.
    record_audio: bool = False
    recording_retention_days: int = 30
    #: The flow this bot runs (nodes, tools, silence handling); None for a plain persona bot.
    flow: FlowSpec | None = field(default=None, repr=False, compare=False)


def profile_from_flow(spec: FlowSpec) -> BotProfile:
    """Build a profile from a validated flow: persona plus the first node's instructions."""
    node = spec.nodes.get(spec.initial_node)
    persona = spec.persona.strip()
    if node is not None and node.instructions:
        persona = f"{persona}\n\n{node.instructions.strip()}"
    style = (node.style if node is not None and node.style else None) or spec.style
    return BotProfile(
        name=spec.bot.name,
        persona=persona,
        voice=str(spec.voice_path) if spec.voice_path else spec.voice,
        style=style,
        bot_speaks_first=spec.greeting.who_speaks_first == "bot",
        greeting=spec.greeting.text,
        greeting_say=spec.greeting.say,
        vad_stop_secs=spec.turn_taking.vad_stop_secs,
        smart_turn=spec.turn_taking.smart_turn,
        source=str(spec.path),
        min_interrupt_secs=spec.turn_taking.min_interrupt_secs,
        mute_during_greeting=spec.turn_taking.mute_during_greeting,
        record_audio=spec.recording.enabled,
        recording_retention_days=spec.recording.retention_days,
        flow=spec,
    )
