"""A loopback fake of Twilio's REST API (the external edge), and helpers for Twilio tests.

``fake_twilio`` serves, on 127.0.0.1 in a background thread (so both sync ``TestClient`` tests
and async tests can reach it), the two Voice API routes stepcall uses:

- ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` (create a call), and
- ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` (update a live call),

checking HTTP Basic auth like Twilio (401, code 20003) and recording every request exactly as
received (method, path, every form value including repeated keys, credentials). ``fail_next``
makes the next request fail with a Twilio error body.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bots.twilio.config import TwilioConfig

ACCOUNT_SID = "AC" + "a" * 32
AUTH_TOKEN = "fake-twilio-auth-token"


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    form: dict[str, list[str]]
    auth: tuple[str, str] | None
    headers: dict[str, str]

    def field(self, name: str) -> str:
        """The single value of a form field (AssertionError when absent or repeated)."""
        values = self.form.get(name)
        assert values is not None and len(values) == 1, f"{name}: {values!r} in {self.form}"
        return values[0]


@dataclass
class FakeTwilio:
    """State of the fake: recorded requests, the next failure, its base URL."""

    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    fail_next: tuple[int, int, str] | None = None  # (HTTP status, Twilio code, message)
    created: int = 0

    def config(self, **kw) -> TwilioConfig:
        """A TwilioConfig whose REST API is this fake."""
        values = dict(
            base_url="https://bots.example.com", account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN,
            api_url=self.base_url,
        )
        values.update(kw)
        return TwilioConfig(**values)

    def reset(self) -> None:
        self.requests.clear()
        self.fail_next = None


def _basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    user, _, password = base64.b64decode(value).decode().partition(":")
    return user, password


def _twilio_error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
         "status": status},
        status_code=status,
    )


def _call_json(sid: str, account: str, status: str, form: dict[str, list[str]]) -> dict:
    return {
        "sid": sid, "account_sid": account, "status": status,
        "to": form.get("To", [None])[0], "from": form.get("From", [None])[0],
        "direction": "outbound-api", "api_version": "2010-04-01",
        "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
    }


def build_fake_app(state: FakeTwilio) -> FastAPI:
    app = FastAPI()

    async def record(request: Request) -> RecordedRequest:
        body = (await request.body()).decode()
        rec = RecordedRequest(
            method=request.method,
            path=request.url.path,
            form=parse_qs(body, keep_blank_values=True),
            auth=_basic_auth(request.headers.get("authorization", "")),
            headers=dict(request.headers),
        )
        state.requests.append(rec)
        return rec

    def refusal(rec: RecordedRequest, account: str) -> JSONResponse | None:
        if rec.auth != (ACCOUNT_SID, AUTH_TOKEN) or account != ACCOUNT_SID:
            return _twilio_error(401, 20003, "Authenticate")
        if state.fail_next is not None:
            status, code, message = state.fail_next
            state.fail_next = None
            return _twilio_error(status, code, message)
        return None

    @app.post("/2010-04-01/Accounts/{account}/Calls.json")
    async def create_call(account: str, request: Request):
        rec = await record(request)
        refused = refusal(rec, account)
        if refused is not None:
            return refused
        state.created += 1
        sid = "CA" + f"{state.created:032x}"
        return JSONResponse(_call_json(sid, account, "queued", rec.form), status_code=201)

    @app.post("/2010-04-01/Accounts/{account}/Calls/{sid}.json")
    async def update_call(account: str, sid: str, request: Request):
        rec = await record(request)
        refused = refusal(rec, account)
        if refused is not None:
            return refused
        status = rec.form.get("Status", ["in-progress"])[0]
        return JSONResponse(_call_json(sid, account, status, rec.form))

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def _fake_twilio_server() -> Iterator[FakeTwilio]:
    state = FakeTwilio()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_fake_app(state), host="127.0.0.1", port=port, log_level="warning",
                       lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="fake-twilio", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake Twilio API did not start")
        time.sleep(0.02)
    state.base_url = f"http://127.0.0.1:{port}"
    yield state
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def fake_twilio(_fake_twilio_server: FakeTwilio) -> Iterator[FakeTwilio]:
    """The running fake Twilio REST API, with no recorded requests."""
    _fake_twilio_server.reset()
    yield _fake_twilio_server
    _fake_twilio_server.reset()
