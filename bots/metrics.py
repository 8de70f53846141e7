"""Bot-server metrics for Prometheus (``GET /metrics``, text exposition format 0.0.4).

Uses the small self-contained metric types of ``stepcall/runtime/metrics.py`` (no
``prometheus_client`` dependency). :class:`BotMetrics` holds what the bot server exports; the
per-call :class:`~bots.records.observer.CallRecordObserver` updates it. One instance per
app, so tests never share state.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from stepcall.runtime.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

#: Voice-to-voice latency buckets (seconds).
LATENCY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
#: Tool-call handler time buckets (seconds).
TOOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BotMetrics:
    """The metrics the bot server exports."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry.register
        self.calls_active = r(Gauge("stepcall_calls_active", "Calls in progress"))
        self.calls_total = r(
            Counter("stepcall_calls_total", "Calls ended, by bot and outcome", ("bot", "outcome"))
        )
        self.turns_total = r(
            Counter("stepcall_turns_total", "Conversation turns, by role", ("role",))
        )
        self.voice_to_voice = r(
            Histogram(
                "stepcall_voice_to_voice_seconds",
                "End of the caller's speech to the bot's first audio",
                LATENCY_BUCKETS,
            )
        )
        self.bargeins_total = r(
            Counter("stepcall_bargeins_total", "Bot turns interrupted by the caller")
        )
        self.tool_calls_total = r(
            Counter(
                "stepcall_tool_calls_total", "Tool calls, by tool and status", ("tool", "status")
            )
        )
        self.tool_latency = r(
            Histogram("stepcall_tool_call_seconds", "Tool-call handler time", TOOL_BUCKETS)
        )
        self.errors_total = r(
            Counter("stepcall_errors_total", "Pipeline errors (ErrorFrame) during calls")
        )

    def render(self) -> str:
        """All metrics in the Prometheus text format."""
        return self.registry.render()


def add_metrics_route(app: FastAPI, registry: BotMetrics | Registry) -> None:
    """Serve ``GET /metrics`` from ``registry`` (a :class:`BotMetrics` or a bare Registry)."""
    source = registry.registry if isinstance(registry, BotMetrics) else registry

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(source.render(), media_type=CONTENT_TYPE)
