"""BotRegistry: the bots a server offers, loaded from the YAML flows folder at start-up.

Flows are validated when the server starts: an invalid flow stops the server with every problem
listed as ``file:line: message`` (better than a call failing later).
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from bots.profile import BotProfile, profile_from_flow
from stepcall.settings import Settings


class BotRegistry:
    """Maps bot names and called numbers to bot profiles."""

    def __init__(self, profiles: dict[str, BotProfile], numbers: dict[str, str], default: str) -> None:
        """Create a registry; ``default`` answers numbers no flow claims."""
        if default not in profiles:
            raise KeyError(f"default bot {default!r} is not among {sorted(profiles)}")
        self._profiles = profiles
        self._numbers = numbers
        self.default = default

    @classmethod
    def single(cls, profile: BotProfile) -> BotRegistry:
        """A registry with one bot."""
        return cls({profile.name: profile}, {}, profile.name)

    @classmethod
    def load(cls, settings: Settings) -> BotRegistry:
        """Load and validate every flow in ``settings.flows_dir``."""
        folder = Path(settings.flows_dir)
        if not folder.is_dir():
            logger.warning(f"flows folder {folder} not found: serving one default bot")
            return cls.single(BotProfile(name="default"))
        from pipeline.flows.format import load_flows

        specs = load_flows(folder)  # raises FlowValidationError listing file:line problems
        profiles: dict[str, BotProfile] = {}
        numbers: dict[str, str] = {}
        for spec in specs:
            profile = profile_from_flow(spec)
            profiles[profile.name] = profile
            for number in getattr(spec, "phone_numbers", None) or []:
                numbers[str(number)] = profile.name
        if not profiles:
            logger.warning(f"no flows in {folder}: serving one default bot")
            return cls.single(BotProfile(name="default"))
        default = settings.default_flow or sorted(profiles)[0]
        logger.info(f"bots: {', '.join(sorted(profiles))} (default {default})")
        return cls(profiles, numbers, default)

    def names(self) -> list[str]:
        """Names of all bots."""
        return sorted(self._profiles)

    def get(self, name: str) -> BotProfile:
        """The profile of a bot; KeyError naming the known bots if unknown."""
        try:
            return self._profiles[name]
        except KeyError:
            raise KeyError(f"unknown bot {name!r} (known: {', '.join(self.names())})") from None

    def for_number(self, number: str) -> str:
        """The bot answering a called number (the default bot when none claims it)."""
        return self._numbers.get(number, self.default)
