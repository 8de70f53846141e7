"""The CPU backend's system text grounds a small model in the persona's facts: weekday ranges
are spelled out with the days they leave out, and the grounding rules follow the persona.
(The answers themselves are checked on the real model by evals/cpu/, test_cpu_evals.py.)"""

from __future__ import annotations

import datetime as dt

from model_service.backends.base import SessionConfig
from model_service.backends.cpu.backend import (
    GROUNDING_RULES,
    VOICE_RULES,
    CpuBackend,
    CpuSession,
)
from model_service.backends.cpu.text import spell_out_day_ranges


def test_weekday_ranges_are_spelled_out_with_the_days_left_out() -> None:
    assert spell_out_day_ranges("Open Monday to Friday, 9 am to 6 pm.") == (
        "Open Monday to Friday (Monday, Tuesday, Wednesday, Thursday and Friday only; "
        "not Saturday or Sunday), 9 am to 6 pm."
    )
    assert "(Tuesday, Wednesday, Thursday, Friday and Saturday only; not Monday or Sunday)" in (
        spell_out_day_ranges("open Tuesday to Saturday, 9:00 to 18:00"))
    # wraps around the week; "through" and plurals count too
    assert "(Friday, Saturday, Sunday and Monday only; not Tuesday, Wednesday or Thursday)" in (
        spell_out_day_ranges("Fridays through Mondays"))
    assert spell_out_day_ranges("Monday to Sunday") == (
        "Monday to Sunday (Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday only)")
    assert spell_out_day_ranges("open 9 to 5, call us") == "open 9 to 5, call us"


def test_system_text_is_persona_then_grounding_then_voice_rules() -> None:
    backend = CpuBackend(object(), object(), object(), today=lambda: dt.date(2026, 12, 7))
    persona = "You are Mia. Open Monday to Friday."
    s = CpuSession(backend, SessionConfig(system_prompt=persona))
    text = s.system_text()
    assert text.index("You are Mia.") < text.index(GROUNDING_RULES) < text.index(VOICE_RULES)
    assert "not Saturday or Sunday" in text
    assert "Today is Monday, December 7, 2026." in text
