"""The fixed vocabularies of the flow format, kept in one place.

Everything that is "one of a list" in a flow file (speaking styles, built-in tools, built-in
voices, variable types) and the patterns of formatted strings live here; the schema, the loader,
the JSON Schema and ``flows/SCHEMA.md`` all read them from this module.
"""

from __future__ import annotations

import re
from typing import Any

#: Speaking styles / emotions a bot or node may use (``style:``).
STYLES: tuple[str, ...] = (
    "calm",
    "cheerful",
    "empathetic",
    "serious",
    "whisper",
    "slow",
    "fast",
    "neutral",
)
DEFAULT_STYLE = "neutral"

#: Voices every deployment has; more come from a ``voices/`` folder (see ``voices.py``).
BUILTIN_VOICES: tuple[str, ...] = ("default_female", "default_male")
DEFAULT_VOICE = "default_female"
#: How the built-in voices sound, for ``switch_voice`` (voice search by description).
BUILTIN_VOICE_DESCRIPTIONS: dict[str, str] = {
    "default_female": "a warm, friendly female voice",
    "default_male": "a calm, deep male voice",
}

#: Built-in tools and the JSON Schema of their arguments (used when a flow gives none).
BUILTIN_TOOLS: dict[str, dict[str, Any]] = {
    "end_call": {
        "description": "End the call politely once the caller's request is complete.",
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why the call ends."},
            },
            "required": [],
        },
    },
    "transfer_call": {
        "description": "Transfer the caller to a human agent or another number.",
        "parameters": {
            "type": "object",
            "properties": {
                "number": {
                    "type": "string",
                    "description": "E.164 number to transfer to; omit for the default number.",
                },
                "reason": {"type": "string", "description": "Why the caller is transferred."},
            },
            "required": [],
        },
    },
    "collect_dtmf": {
        "description": "Ask the caller to type digits on the keypad and wait for them.",
        "parameters": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "description": "What to ask the caller to type."},
                "max_digits": {"type": "integer", "description": "Stop after this many digits."},
                "terminator": {"type": "string", "description": "Key that ends input, e.g. #."},
            },
            "required": ["prompt"],
        },
    },
    "knowledge_search": {
        "description": "Search the bot's knowledge base for facts to answer the caller.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look up."}},
            "required": ["query"],
        },
    },
    "switch_voice": {
        "description": (
            "Change how the bot sounds for the rest of the call: pick a voice from the voice "
            "library by describing it (e.g. 'a deep male voice') and/or set the speaking style."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "voice_description": {
                    "type": "string",
                    "description": "What the new voice should sound like.",
                },
                "style": {"type": "string", "enum": list(STYLES)},
            },
            "required": [],
        },
    },
}

#: Kinds of tool implementations.
TOOL_KINDS: tuple[str, ...] = ("webhook", "python", "builtin")
WEBHOOK_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")

#: Types of variables collected during a call.
VARIABLE_TYPES: tuple[str, ...] = (
    "string",
    "integer",
    "number",
    "boolean",
    "date",
    "time",
    "phone_number",
    "email",
)

#: JSON Schema types allowed inside a tool's ``parameters``.
JSON_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "array", "object", "null")

# Patterns (each a full-match regex; the JSON Schema uses the same text with ^...$).
SLUG = r"[a-z0-9][a-z0-9_-]*"
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
NODE_NAME = r"[a-z][a-z0-9_]{0,63}"
E164 = r"\+[1-9][0-9]{1,14}"
BCP47 = r"[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?"
HTTP_URL = r"https?://[^\s/?#]+[^\s]*"
DOTTED_PATH = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*[.:][A-Za-z_][A-Za-z0-9_]*"


def full_match(pattern: str, text: str) -> bool:
    """True when ``text`` matches ``pattern`` as a whole."""
    return re.fullmatch(pattern, text) is not None
