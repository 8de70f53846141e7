"""The operator dashboard on the bot server: calls, transcripts, recordings, latency.

Pages (server-rendered HTML, inline SVG plots, no JavaScript or CDN):

- ``GET /dashboard``: the call list with filters (bot, outcome, number, period) and the
  voice-to-voice latency percentiles (p50/p90/p99) over the period.
- ``GET /dashboard/calls/{call_id}``: one call: header, transcript with per-turn timings,
  tool calls, an audio player when the call was recorded, per-turn latency bars.
- ``GET /dashboard/calls/{call_id}/recording.wav``: the recording.
- ``GET /dashboard/api/calls/{call_id}``: the call as JSON.
- ``GET|POST /dashboard/login``: enter the token; ``GET /dashboard/logout``.

Access needs the dashboard token (``STEPCALL_DASHBOARD_TOKEN``): as a bearer token, a
``?token=`` query parameter (handy for bookmarks and headless checks; it also sets the login
cookie) or the cookie set by the login form. Without a configured token the dashboard is off
(503), never open.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from bots.records.models import OUTCOMES, CallRecord, utcnow
from bots.records.plots import bucket_latencies, percentile, percentile_chart, turn_latency_bars
from bots.records.store import CallFilter, CallStore
from stepcall.runtime.tokens import bearer_token, secrets_equal

COOKIE = "stepcall_dashboard"
PAGE_SIZE = 50
#: Period choices: (label, span, plot bucket width).
PERIODS = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
    "30d": (timedelta(days=30), timedelta(days=1)),
}
_CSS_PATH = Path(__file__).with_name("dashboard_static") / "dashboard.css"


def _css() -> str:
    try:
        return _CSS_PATH.read_text(encoding="utf-8")
    except OSError:
        return ""


def _cookie_value(token: str) -> str:
    return hashlib.sha256(f"stepcall-dashboard:{token}".encode()).hexdigest()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def _fmt_duration(secs: float | None) -> str:
    if secs is None:
        return "—"
    minutes, s = divmod(int(round(secs)), 60)
    return f"{minutes}:{s:02d}"


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)} · stepcall</title><style>{_css()}</style></head><body>"
        "<header><a href='/dashboard' class='brand'>stepcall</a> <span>calls dashboard</span>"
        "<a href='/dashboard/logout' class='logout'>log out</a></header>"
        f"<main>{body}</main></body></html>"
    )


def _outcome_badge(outcome: str | None) -> str:
    label = outcome or "in progress"
    return f"<span class='badge o-{_e(outcome or 'live')}'>{_e(label.replace('_', ' '))}</span>"


def _parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"bad date {value!r}: use YYYY-MM-DD") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=utcnow().tzinfo)


def add_dashboard_routes(
    app: FastAPI, settings: Any, store: CallStore, *, token: str | None = None
) -> None:
    """Mount the dashboard on ``app``; ``token`` defaults to ``settings.dashboard_token``."""
    secret = token if token is not None else getattr(settings, "dashboard_token", None)

    def denied(request: Request) -> Response | None:
        if not secret:
            return HTMLResponse(
                _page(
                    "disabled",
                    "<h1>Dashboard disabled</h1><p>Set "
                    "<code>STEPCALL_DASHBOARD_TOKEN</code> to turn it on.</p>",
                ),
                status_code=503,
            )
        bearer = bearer_token(request.headers.get("Authorization"))
        if bearer is not None and secrets_equal(bearer, secret):
            return None
        given = request.query_params.get("token")
        if given and secrets_equal(given, secret):
            return None
        cookie = request.cookies.get(COOKIE, "")
        if cookie and secrets_equal(cookie, _cookie_value(secret)):
            return None
        if request.url.path.startswith("/dashboard/api/"):
            return JSONResponse({"error": "dashboard token required"}, status_code=401)
        nxt = urlencode({"next": request.url.path})
        return RedirectResponse(f"/dashboard/login?{nxt}", status_code=303)

    def authed(request: Request, response: Response) -> Response:
        """Remember a token given in the query string as the login cookie."""
        given = request.query_params.get("token")
        if secret and given and secrets_equal(given, secret):
            response.set_cookie(COOKIE, _cookie_value(secret), httponly=True, samesite="strict")
        return response

    @app.get("/dashboard/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(next: str = "/dashboard", error: str = "") -> str:
        msg = "<p class='error'>Wrong token.</p>" if error else ""
        return _page(
            "log in",
            "<h1>Log in</h1>" + msg + "<form method='post' action='/dashboard/login'>"
            f"<input type='hidden' name='next' value='{_e(next)}'>"
            "<label>Dashboard token <input type='password' name='token' autofocus></label> "
            "<button>Log in</button></form>",
        )

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token", ""))
        target = str(form.get("next") or "/dashboard")
        if not target.startswith("/dashboard"):
            target = "/dashboard"
        if not secret or not secrets_equal(given, secret):
            return RedirectResponse(
                f"/dashboard/login?{urlencode({'next': target, 'error': 1})}", status_code=303
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, _cookie_value(secret), httponly=True, samesite="strict")
        return response

    @app.get("/dashboard/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/dashboard/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/dashboard", include_in_schema=False)
    def call_list(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        q = request.query_params
        period = q.get("period") or "7d"
        if period not in PERIODS:
            return HTMLResponse(f"unknown period {period!r}: one of {list(PERIODS)}", 400)
        span, width = PERIODS[period]
        outcome = q.get("outcome") or None
        if outcome and outcome != "in_progress" and outcome not in OUTCOMES:
            return HTMLResponse(f"unknown outcome {outcome!r}", 400)
        try:
            since = _parse_since(q.get("since")) or (utcnow() - span)
        except ValueError as e:
            return HTMLResponse(str(e), 400)
        try:
            page = max(0, int(q.get("page") or 0))
        except ValueError:
            return HTMLResponse(f"bad page {q.get('page')!r}", 400)
        bot = q.get("bot") or None
        filters = CallFilter(
            bot=bot,
            outcome=outcome,
            number=q.get("number") or None,
            since=since,
            limit=PAGE_SIZE + 1,
            offset=page * PAGE_SIZE,
        )
        calls = store.list_calls(filters)
        more, calls = len(calls) > PAGE_SIZE, calls[:PAGE_SIZE]
        counts = store.turn_counts([c.call_id for c in calls])
        points = store.latency_points(since=since, bot=bot)
        body = [_filters_form(store.bots(), bot, outcome, q.get("number") or "", period)]
        values = [p.latency_ms for p in points]
        summary = (
            f"{len(values)} bot turns · p50 {percentile(values, 50):.0f} ms · "
            f"p90 {percentile(values, 90):.0f} ms · p99 {percentile(values, 99):.0f} ms"
            if values
            else "no measured turns"
        )
        body.append(f"<h2>Voice-to-voice latency</h2><p class='muted'>{_e(summary)}</p>")
        body.append(percentile_chart(bucket_latencies(points, width)))
        body.append(_counter_totals(store.counter_totals(since=since, bot=bot)))
        body.append("<h2>Calls</h2>")
        body.append(_calls_table(calls, counts))
        params = {k: v for k, v in q.items() if k not in ("page", "token") and v}
        nav = []
        if page > 0:
            nav.append(
                f"<a href='/dashboard?{_e(urlencode({**params, 'page': page - 1}))}'>← newer</a>"
            )
        if more:
            nav.append(
                f"<a href='/dashboard?{_e(urlencode({**params, 'page': page + 1}))}'>older →</a>"
            )
        body.append(f"<p class='nav'>{' '.join(nav)}</p>")
        return authed(request, HTMLResponse(_page("calls", "".join(body))))

    @app.get("/dashboard/calls/{call_id}", include_in_schema=False)
    def call_detail(call_id: str, request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        call = store.get_call(call_id)
        if call is None:
            return HTMLResponse(_page("not found", f"<h1>No call {_e(call_id)}</h1>"), 404)
        return authed(request, HTMLResponse(_page(f"call {call_id}", _call_page(call))))

    @app.get("/dashboard/calls/{call_id}/recording.wav", include_in_schema=False)
    def call_recording(call_id: str, request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        call = store.get_call(call_id)
        if call is None or not call.recording_path or not Path(call.recording_path).is_file():
            return Response("no recording", status_code=404)
        return FileResponse(call.recording_path, media_type="audio/wav")

    @app.get("/dashboard/api/calls/{call_id}", include_in_schema=False)
    def call_json(call_id: str, request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        call = store.get_call(call_id)
        if call is None:
            return JSONResponse({"error": f"no call {call_id}"}, status_code=404)
        data = asdict(call)
        return JSONResponse(_jsonable(data))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _filters_form(
    bots: list[str], bot: str | None, outcome: str | None, number: str, period: str
) -> str:
    def options(values: list[str], chosen: str | None, any_label: str | None) -> str:
        opts = [f"<option value=''>{any_label}</option>"] if any_label else []
        for v in values:
            sel = " selected" if v == chosen else ""
            opts.append(f"<option value='{_e(v)}'{sel}>{_e(v.replace('_', ' '))}</option>")
        return "".join(opts)

    return (
        "<h1>Calls</h1><form class='filters' method='get' action='/dashboard'>"
        f"<label>Bot <select name='bot'>{options(bots, bot, 'any')}</select></label>"
        f"<label>Outcome <select name='outcome'>"
        f"{options([*OUTCOMES, 'in_progress'], outcome, 'any')}</select></label>"
        f"<label>Number <input name='number' value='{_e(number)}' placeholder='+1555…'></label>"
        f"<label>Period <select name='period'>{options(list(PERIODS), period, None)}</select>"
        "</label><button>Filter</button></form>"
    )


def _calls_table(calls: list[CallRecord], counts: dict[str, int]) -> str:
    if not calls:
        return "<p class='muted'>No calls match.</p>"
    rows = []
    for c in calls:
        rows.append(
            "<tr>"
            f"<td><a href='/dashboard/calls/{_e(c.call_id)}'>{_e(c.call_id)}</a></td>"
            f"<td>{_e(c.bot)}</td><td>{_e(c.from_number or '—')}</td>"
            f"<td>{_e(c.to_number or '—')}</td><td>{_fmt_time(c.started_at)}</td>"
            f"<td>{_fmt_duration(c.duration_secs)}</td><td>{counts.get(c.call_id, 0)}</td>"
            + "".join(
                f"<td class='{name}'>{getattr(c, name)}</td>" for name in COUNTER_LABELS
            )
            + f"<td>{_outcome_badge(c.outcome)}</td></tr>"
        )
    heads = "".join(f"<th>{label}</th>" for label in COUNTER_LABELS.values())
    return (
        "<table class='calls'><thead><tr><th>Call</th><th>Bot</th><th>From</th><th>To</th>"
        f"<th>Started (UTC)</th><th>Length</th><th>Turns</th>{heads}<th>Outcome</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


#: The call counters the dashboard shows (per call and in totals), with their labels.
COUNTER_LABELS = {
    "unanswered_turns": "Unanswered turns",
    "holding_lines": "Holding lines",
    "turn_retries": "Turn retries",
}


def _counter_totals(totals: dict[str, int]) -> str:
    items = "".join(
        f"<dt>{label}</dt><dd class='total-{name}'>{totals.get(name, 0)}</dd>"
        for name, label in COUNTER_LABELS.items()
    )
    return f"<h2>Unanswered turns, holding lines, retries</h2><dl class='meta totals'>{items}</dl>"


def _offset(call: CallRecord, at: datetime | None) -> str:
    if at is None:
        return "—"
    return f"+{(at - call.started_at).total_seconds():.1f}s"


def _call_page(call: CallRecord) -> str:
    head = (
        f"<h1>Call {_e(call.call_id)} {_outcome_badge(call.outcome)}</h1>"
        "<dl class='meta'>"
        f"<dt>Bot</dt><dd>{_e(call.bot)}</dd><dt>Flow</dt><dd>{_e(call.flow or '—')}</dd>"
        f"<dt>From</dt><dd>{_e(call.from_number or '—')}</dd>"
        f"<dt>To</dt><dd>{_e(call.to_number or '—')}</dd>"
        f"<dt>Started</dt><dd>{_fmt_time(call.started_at)} UTC</dd>"
        f"<dt>Ended</dt><dd>{_fmt_time(call.ended_at)}</dd>"
        f"<dt>Length</dt><dd>{_fmt_duration(call.duration_secs)}</dd>"
        + "".join(
            f"<dt>{label}</dt><dd class='{name}'>{getattr(call, name)}</dd>"
            for name, label in COUNTER_LABELS.items()
        )
        + (f"<dt>Error</dt><dd class='error'>{_e(call.error)}</dd>" if call.error else "")
        + "</dl>"
    )
    if call.recording_path:
        audio = (
            f"<h2>Recording</h2><audio controls preload='none' "
            f"src='/dashboard/calls/{_e(call.call_id)}/recording.wav'></audio>"
            f"<p class='muted'>Caller left, bot right. Deleted after "
            f"{_fmt_time(call.recording_expires_at)} UTC.</p>"
        )
    else:
        audio = "<p class='muted'>Not recorded.</p>"
    items: list[tuple[datetime, int, str]] = []
    for t in call.turns:
        who = "Caller" if t.role == "user" else "Bot"
        if t.role == "user":
            spoken = (
                _e(t.text)
                if t.text
                else (
                    f"<span class='muted'>(speech, {(t.audio_ms or 0) / 1000:.1f} s of audio)</span>"
                )
            )
        else:
            spoken = _e(t.text) if t.text else "<span class='muted'>(no text)</span>"
        tags = []
        if t.latency_ms is not None:
            tags.append(f"<span class='tag'>{t.latency_ms:.0f} ms</span>")
        if t.interrupted:
            tags.append("<span class='tag warn'>interrupted</span>")
        if t.ended_at is None:
            tags.append("<span class='tag'>unfinished</span>")
        items.append(
            (
                t.started_at,
                0,
                f"<li class='turn {t.role}'><span class='when'>{_offset(call, t.started_at)}"
                f"–{_offset(call, t.ended_at)}</span><b>{who}</b> <span class='text'>{spoken}</span> "
                f"{''.join(tags)}</li>",
            )
        )
    for tc in call.tool_calls:
        took = f"{tc.duration_ms:.0f} ms" if tc.duration_ms is not None else "running"
        result = _e(tc.error) if tc.error else _e(_short(tc.result))
        items.append(
            (
                tc.started_at,
                1,
                f"<li class='turn tool'><span class='when'>{_offset(call, tc.started_at)}</span>"
                f"<b>Tool</b> <code>{_e(tc.name)}({_e(_short(tc.arguments))})</code> → "
                f"<code>{result}</code> <span class='tag'>{took}</span></li>",
            )
        )
    items.sort(key=lambda item: (item[0], item[1]))
    transcript = (
        "<h2>Transcript</h2><ol class='transcript'>" + "".join(i[2] for i in items) + "</ol>"
        if items
        else "<h2>Transcript</h2><p class='muted'>Empty.</p>"
    )
    bars = turn_latency_bars(
        [(f"turn {t.seq}", t.latency_ms) for t in call.turns if t.role == "bot"]
    )
    return head + audio + transcript + "<h2>Latency per bot turn</h2>" + bars


def _short(value: Any, limit: int = 300) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
