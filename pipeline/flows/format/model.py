"""FlowSpec and its parts: the validated, typed form of a flow file.

Every default here equals the one declared in ``schema.py`` (a test checks it), so code that
builds specs directly gets the same bot as an empty YAML section would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.flows.format import vocab
from pipeline.flows.format.errors import FlowIssue


@dataclass(frozen=True)
class BotInfo:
    """Who the bot is."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Greeting:
    """How the call opens: who speaks first and what the bot says or should do.

    ``say`` is the opening line word for word (rendered once in the bot's voice, played the
    moment the call connects); ``text`` is an instruction the model follows in its own words.
    """

    who_speaks_first: str = "bot"
    text: str | None = None
    say: str | None = None

    @property
    def bot_speaks_first(self) -> bool:
        """True when the bot opens the call."""
        return self.who_speaks_first == "bot"


@dataclass(frozen=True)
class TurnTaking:
    """When the caller's turn ends and when the caller may interrupt."""

    vad_stop_secs: float = 0.2
    smart_turn: bool = True
    min_interrupt_words: int = 0
    min_interrupt_secs: float = 0.6
    mute_during_greeting: bool = False


@dataclass(frozen=True)
class Timeouts:
    """Silence handling: re-prompt after ``silence_secs``, then end or transfer."""

    silence_secs: float = 10.0
    reprompt: str = "Ask whether the caller is still there."
    max_reprompts: int = 2
    then: str = "end"
    transfer_to: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call; ``kind`` says how it runs (webhook, python or builtin)."""

    name: str
    kind: str
    description: str
    parameters: dict[str, Any]
    url: str | None = None
    method: str = "POST"
    timeout_secs: float = 5.0
    retries: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    handler: str | None = None
    builtin: str | None = None
    #: knowledge_search: folder of documents, relative to the flow file.
    documents: str | None = None

    def function_schema(self) -> dict[str, Any]:
        """The tool in OpenAI function format (what the model service's ``tools`` expects)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class Transition:
    """A move to node ``to``, taken by calling the function ``function_name``."""

    to: str
    when: str

    @property
    def function_name(self) -> str:
        """Name of the transition function the model calls."""
        return transition_function_name(self.to)


def transition_function_name(node: str) -> str:
    """The function name of a transition into ``node``."""
    return f"go_to_{node}"


@dataclass(frozen=True)
class NodeSpec:
    """One step of the conversation."""

    name: str
    instructions: str
    style: str | None = None
    tools: tuple[str, ...] = ()
    transitions: tuple[Transition, ...] = ()
    context_strategy: str = "append"
    end: bool = False
    transfer: str | None = None


@dataclass(frozen=True)
class Variable:
    """A value collected during the call."""

    name: str
    type: str
    description: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recording:
    """Call recording settings."""

    enabled: bool = False
    retention_days: int = 30


@dataclass(frozen=True)
class FlowSpec:
    """A validated flow: a bot's persona, voice, turn-taking, tools and conversation nodes.

    ``voice`` is a voice name, or the absolute path of a prompt WAV; ``voice_path`` is the WAV
    file backing the voice when there is one (a path voice or a ``voices/`` folder entry).
    """

    path: Path
    bot: BotInfo
    persona: str
    nodes: dict[str, NodeSpec]
    initial_node: str
    voice: str = vocab.DEFAULT_VOICE
    voice_path: Path | None = None
    style: str = vocab.DEFAULT_STYLE
    language: str = "en-US"
    greeting: Greeting = field(default_factory=Greeting)
    turn_taking: TurnTaking = field(default_factory=TurnTaking)
    timeouts: Timeouts = field(default_factory=Timeouts)
    tools: dict[str, ToolSpec] = field(default_factory=dict)
    tools_allowed: tuple[str, ...] = ()
    variables: dict[str, Variable] = field(default_factory=dict)
    phone_numbers: tuple[str, ...] = ()
    recording: Recording = field(default_factory=Recording)
    warnings: tuple[FlowIssue, ...] = ()
    #: (line, column) of values by field path, for cross-file messages.
    marks: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The bot's name."""
        return self.bot.name

    def node_tools(self, node: str) -> list[ToolSpec]:
        """Tools usable in ``node``: the bot-wide ``tools_allowed`` then the node's own."""
        names = list(dict.fromkeys([*self.tools_allowed, *self.nodes[node].tools]))
        return [self.tools[n] for n in names]

    def node_style(self, node: str) -> str:
        """The speaking style in ``node`` (its override, else the bot's)."""
        return self.nodes[node].style or self.style
