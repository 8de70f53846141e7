"""Read a metric in tests through prometheus-client, as a scraper would see it."""

from __future__ import annotations

from typing import Any


def sample(metrics: Any, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with ``labels`` in ``metrics.registry`` (a ``ServiceMetrics``
    or ``BotMetrics``); None when it is not exported (a label set never seen, a wrong name).
    A histogram's count is its ``<name>_count`` sample, a counter's value its ``<name>`` one
    (``..._total``)."""
    return metrics.registry.get_sample_value(name, labels)
