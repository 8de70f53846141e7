"""``stepcall dial``: the outbound call request it sends to Twilio's REST API."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

from bots.cli import main


def _env(monkeypatch, fake) -> None:
    config = fake.config()
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", config.account_sid)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", config.auth_token)
    monkeypatch.setenv("STEPCALL_TWILIO_API_URL", fake.base_url)
    monkeypatch.setenv("STEPCALL_PUBLIC_URL", "https://bots.example.com")
    monkeypatch.delenv("TWILIO_FROM_NUMBER", raising=False)


def test_dial_a_flow_file_calls_from_its_phone_number(fake_twilio, monkeypatch, tmp_path, capsys):
    _env(monkeypatch, fake_twilio)
    flow = tmp_path / "desk.yaml"
    flow.write_text(
        "bot:\n  name: front-desk\npersona: You answer the phone.\ninitial_node: start\n"
        "nodes:\n  start:\n    instructions: Greet the caller.\n"
        "phone_numbers: ['+15559990000', '+15557770000']\n"
    )
    assert main(["dial", "+15551230000", "--flow", str(flow), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    [req] = fake_twilio.requests
    assert out["call_sid"].startswith("CA") and out["bot"] == "front-desk"
    assert req.path == f"/2010-04-01/Accounts/{fake_twilio.config().account_sid}/Calls.json"
    assert req.field("To") == "+15551230000" and req.field("From") == "+15559990000"
    url = urlparse(req.field("Url"))
    assert url.netloc == "bots.example.com" and parse_qs(url.query) == {"bot": ["front-desk"]}
    assert req.field("StatusCallback") == "https://bots.example.com/twilio/status"


def test_dial_by_bot_name_with_explicit_caller_id(fake_twilio, monkeypatch, capsys):
    _env(monkeypatch, fake_twilio)
    assert main(["dial", "+15551230000", "--flow", "sales", "--from", "+15558880000"]) == 0
    assert "with bot sales" in capsys.readouterr().out
    req = fake_twilio.requests[0]
    assert req.field("From") == "+15558880000"
    assert parse_qs(urlparse(req.field("Url")).query) == {"bot": ["sales"]}


def test_dial_errors_name_the_problem(fake_twilio, monkeypatch, capsys):
    _env(monkeypatch, fake_twilio)
    assert main(["dial", "+15551230000", "--flow", "sales"]) == 2
    assert "no caller ID" in capsys.readouterr().err
    assert main(["dial", "0800", "--flow", "sales", "--from", "+15558880000"]) == 2
    assert "E.164" in capsys.readouterr().err
    fake_twilio.fail_next = (400, 21219, "The number is unverified")
    assert main(["dial", "+15551230000", "--flow", "sales", "--from", "+15558880000"]) == 1
    assert "21219" in capsys.readouterr().err
    monkeypatch.delenv("TWILIO_AUTH_TOKEN")
    assert main(["dial", "+15551230000", "--flow", "sales", "--from", "+15558880000"]) == 2
    assert "TWILIO_AUTH_TOKEN" in capsys.readouterr().err
