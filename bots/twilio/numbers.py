"""Phone-number checks shared by outbound calls and transfers."""

from __future__ import annotations

import re

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def is_e164(number: str) -> bool:
    """True for an E.164 number such as ``+15551234567``."""
    return bool(_E164.match(number or ""))


def check_e164(number: str, what: str) -> str:
    """Return ``number`` stripped; ValueError naming ``what`` when it is not E.164."""
    cleaned = (number or "").strip()
    if not is_e164(cleaned):
        raise ValueError(f"{what} must be an E.164 number like +15551234567, got {number!r}")
    return cleaned


def is_sip_uri(target: str) -> bool:
    """True for a SIP URI such as ``sip:agent@pbx.example.com``."""
    return bool(re.match(r"^sips?:[^@\s]+@[^\s]+$", target or ""))
