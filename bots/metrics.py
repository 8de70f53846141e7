"""Bot-server metrics for Prometheus (``GET /metrics``).

:class:`BotMetrics` declares what the bot server exports on a prometheus-client
``CollectorRegistry`` of its own (one per app, so tests never share state); the per-call
:class:`~bots.records.observer.CallRecordObserver` updates it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stepcall.runtime.metrics import metrics_response

#: Voice-to-voice latency buckets (seconds).
LATENCY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
#: Tool-call handler time buckets (seconds).
TOOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BotMetrics:
    """The metrics the bot server exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.calls_active = Gauge("stepcall_calls_active", "Calls in progress", registry=r)
        self.calls_total = Counter(
            "stepcall_calls_total",
            "Calls ended, by bot and outcome",
            ("bot", "outcome"),
            registry=r,
        )
        self.turns_total = Counter(
            "stepcall_turns_total", "Conversation turns, by role", ("role",), registry=r
        )
        self.voice_to_voice = Histogram(
            "stepcall_voice_to_voice_seconds",
            "End of the caller's speech to the bot's first audio",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bargeins_total = Counter(
            "stepcall_bargeins_total", "Bot turns interrupted by the caller", registry=r
        )
        self.tool_calls_total = Counter(
            "stepcall_tool_calls_total",
            "Tool calls, by tool and status",
            ("tool", "status"),
            registry=r,
        )
        self.tool_latency = Histogram(
            "stepcall_tool_call_seconds", "Tool-call handler time", buckets=TOOL_BUCKETS, registry=r
        )
        self.unanswered_turns_total = Counter(
            "stepcall_unanswered_turns_total",
            "Committed caller turns that never got an answer (audio or a tool call)",
            registry=r,
        )
        self.holding_lines_total = Counter(
            "stepcall_holding_lines_total",
            "Holding lines played while the model was slow to answer",
            registry=r,
        )
        self.turn_retries_total = Counter(
            "stepcall_turn_retries_total",
            "Caller turns re-sent to a new model session after the connection was lost",
            registry=r,
        )
        self.errors_total = Counter(
            "stepcall_errors_total", "Pipeline errors (ErrorFrame) during calls", registry=r
        )


def add_metrics_route(app: FastAPI, registry: BotMetrics | CollectorRegistry) -> None:
    """Serve ``GET /metrics`` from ``registry`` (a :class:`BotMetrics` or a bare registry)."""
    source = registry.registry if isinstance(registry, BotMetrics) else registry

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return metrics_response(source)
