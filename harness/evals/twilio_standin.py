"""A loopback stand-in for Twilio's REST API, so evals observe hang-ups and transfers.

On a real call the bot ends or transfers the call by updating it through Twilio's REST API
(``bots/twilio/call_control.py``). Evals have no Twilio account, so the bot server under test is
pointed (``TwilioConfig.api_url``) at this small app, which answers
``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` like Twilio (HTTP Basic auth
checked, call JSON returned) and keeps what each call was asked to do: ``Status=completed``
(hang-up) or ``Twiml`` with a ``<Dial>`` (transfer; the ``<Number>``/``<Sip>`` target is kept).
Only Twilio's cloud is replaced; the bot's own call-control code runs for real.
"""

from __future__ import annotations

import base64
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class CallActions:
    """What the bot asked Twilio to do with one call."""

    hang_ups: int = 0
    transfers: list[str] = field(default_factory=list)  # targets, in order


@dataclass
class TwilioStandIn:
    """State of the stand-in: credentials it accepts and the actions per CallSid."""

    account_sid: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    calls: dict[str, CallActions] = field(default_factory=dict)
    refused: int = 0

    def actions(self, call_sid: str) -> CallActions:
        """The actions recorded for ``call_sid`` (empty when none)."""
        return self.calls.get(call_sid, CallActions())

    def app(self) -> FastAPI:
        """The FastAPI app to serve (e.g. with ``model_service.server.serving``)."""
        app = FastAPI(title="Twilio REST stand-in")

        @app.post("/2010-04-01/Accounts/{account}/Calls/{sid}.json")
        async def update_call(account: str, sid: str, request: Request) -> JSONResponse:
            if not self._authorized(request.headers.get("authorization", ""), account):
                self.refused += 1
                return JSONResponse({"code": 20003, "message": "Authenticate", "status": 401},
                                    status_code=401)
            form = parse_qs((await request.body()).decode(), keep_blank_values=True)
            actions = self.calls.setdefault(sid, CallActions())
            status = form.get("Status", ["in-progress"])[0]
            if status == "completed":
                actions.hang_ups += 1
            twiml = form.get("Twiml", [None])[0]
            if twiml:
                actions.transfers.extend(dial_targets(twiml))
            return JSONResponse({
                "sid": sid, "account_sid": account, "status": status,
                "api_version": "2010-04-01", "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
            })

        return app

    def _authorized(self, header: str, account: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or account != self.account_sid:
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(
            password, self.auth_token
        )


def dial_targets(twiml: str) -> list[str]:
    """The ``<Number>``/``<Sip>`` targets of every ``<Dial>`` in a TwiML document."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return []
    return [
        (el.text or "").strip()
        for dial in root.iter("Dial")
        for el in dial
        if el.tag in ("Number", "Sip")
    ]
