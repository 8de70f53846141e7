"""``GET /metrics`` for both servers, on prometheus-client.

The model service (``model_service/metrics.py``) and the bot server (``bots/metrics.py``) each
declare their metrics on a ``CollectorRegistry`` of their own, one per app (nothing on the
library's global default registry), so tests never share state; both answer ``/metrics`` with
:func:`metrics_response`.

Importing this module turns off the ``_created`` samples prometheus-client adds to counters and
histograms (the library's switch is process-wide): the exposition keeps the samples it had before
the library, and Prometheus gets no extra ``*_created`` gauge per counter and histogram.
"""

from __future__ import annotations

from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()


def metrics_response(registry: CollectorRegistry) -> Response:
    """``registry`` in the Prometheus text format (0.0.4, what prometheus-client's own handlers
    answer a scraper that does not ask for another)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
