"""The CPU backend's system text grounds a small model in the persona's facts: the grounding
rules follow the persona, and the persona's open and closed days end the system turn (after the
tool rules), with a worked answer about a closed day.
(The answers themselves are checked on the real model by evals/cpu/, test_cpu_evals.py.)"""

from __future__ import annotations

import datetime as dt

from model_service.backends.base import SessionConfig
from model_service.backends.cpu.backend import (
    GROUNDING_RULES,
    TOOL_RULES,
    VOICE_RULES,
    CpuBackend,
    CpuSession,
)
from model_service.backends.cpu.text import day_facts

TOOL = {"type": "function", "function": {"name": "end_call", "description": "End the call.",
                                         "parameters": {"type": "object", "properties": {}}}}


def test_weekday_ranges_become_open_and_closed_days_with_a_worked_answer() -> None:
    assert day_facts("Open Monday to Friday, 9 am to 6 pm.") == (
        "Open days: Monday, Tuesday, Wednesday, Thursday and Friday. "
        "Closed days: Saturday and Sunday.\n"
        'Example: asked "Are you open on Saturday?", answer "No, sorry, we are closed on '
        'Saturday; we are open Monday to Friday."'
    )
    assert "Closed days: Monday and Sunday." in day_facts("open Tuesday to Saturday, 9:00 to 18:00")
    # wraps around the week; "through" and plurals count too
    assert "Closed days: Tuesday, Wednesday and Thursday." in day_facts("Fridays through Mondays")
    # several ranges: their union is open
    assert "Closed days: Sunday." in day_facts("Monday to Friday 9-6, Saturday to Saturday 10-2")
    assert day_facts("Monday to Sunday") == (
        "Open days: every day (Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday).")
    # a range the persona says is closed is not an opening
    assert "Open days: Thursday" in day_facts("closed Monday to Wednesday; open Thursday to Sunday")
    assert day_facts("open 9 to 5, call us") == ""


def test_system_turn_is_persona_grounding_voice_tools_then_the_days() -> None:
    backend = CpuBackend(object(), object(), object(), today=lambda: dt.date(2026, 12, 7))
    persona = "You are Mia. Open Monday to Friday."
    s = CpuSession(backend, SessionConfig(system_prompt=persona, tools=[TOOL]))
    text = s.system_text()
    assert text.index("You are Mia.") < text.index(GROUNDING_RULES) < text.index(VOICE_RULES)
    assert "Today is Monday, December 7, 2026." in text
    prompt = s.build_prompt()
    system = prompt.split("<|im_end|>")[0]
    assert system.index(VOICE_RULES) < system.index(TOOL_RULES) < system.index("Closed days:")
    assert system.rstrip().endswith('we are open Monday to Friday."')
    # no range in the persona: nothing after the tool rules
    plain = CpuSession(backend, SessionConfig(system_prompt="You are Mia.", tools=[TOOL]))
    assert plain.build_prompt().split("<|im_end|>")[0].rstrip().endswith(TOOL_RULES)
