"""Prometheus metrics of the relay (the ``[metrics]`` extra, prometheus-client).

Off unless asked for: ``Outbox(metrics=True)`` registers them in prometheus-client's default
registry, ``Outbox(metrics=registry)`` in another one, and ``outbox-relay run --metrics-port``
also serves them over HTTP. Several ``Outbox`` objects of one process share the metrics of a
registry.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from outbox_events.exceptions import ConfigurationError

# Seconds from dispatch to delivery: from a few milliseconds (an idle relay) to hours (retries).
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

_shared: dict[int, RelayMetrics] = {}  # by id() of the registry
_lock = threading.Lock()


def prometheus() -> Any:
    """The prometheus_client module, or a ConfigurationError naming the extra."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'outbox-events[metrics]'"
        ) from exc
    return prometheus_client


def for_setting(setting: object) -> RelayMetrics | None:
    """The metrics ``Outbox(metrics=...)`` asks for: None (off), True (the default registry)
    or a ``prometheus_client.CollectorRegistry``."""
    if setting is None or setting is False:
        return None
    client = prometheus()
    if setting is True:
        registry = client.REGISTRY
    elif isinstance(setting, client.CollectorRegistry):
        registry = setting
    else:
        raise ConfigurationError(
            f"metrics must be True, False or a prometheus_client.CollectorRegistry, got {setting!r}"
        )
    with _lock:
        metrics = _shared.get(id(registry))
        if metrics is None:
            metrics = _shared[id(registry)] = RelayMetrics(client, registry)
    return metrics


class RelayMetrics:
    """The relay's counters and histograms in one registry."""

    def __init__(self, client: Any, registry: Any) -> None:
        self.registry = registry
        self.deliveries = client.Counter(
            "outbox_events_deliveries",
            "Delivery attempts by destination and outcome (delivered, retried, dead_lettered).",
            ["destination", "outcome"],
            registry=registry,
        )
        self.lag = client.Histogram(
            "outbox_events_delivery_lag_seconds",
            "Seconds from dispatch() to the recorded delivery, by destination.",
            ["destination"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.claim = client.Histogram(
            "outbox_events_claim_seconds",
            "Seconds one claim of a batch took (a round trip to the database).",
            buckets=CLAIM_BUCKETS,
            registry=registry,
        )
        self.claimed = client.Counter(
            "outbox_events_claimed_rows",
            "Rows claimed by the relay (one row per event and destination).",
            registry=registry,
        )
        self.in_flight = client.Gauge(
            "outbox_events_batches_in_flight",
            "Batches claimed and not yet settled.",
            registry=registry,
        )

    def settled(
        self,
        now: datetime,
        delivered: Iterable[tuple[str, datetime]],
        retried: Iterable[str],
        dead: Iterable[str],
    ) -> None:
        """Count a batch's outcomes: (destination, created_at) of each delivered row, the
        destination of each retried and dead-lettered one."""
        counts: Counter[tuple[str, str]] = Counter()
        for destination, created_at in delivered:
            counts[destination, "delivered"] += 1
            self.lag.labels(destination).observe(max((now - created_at).total_seconds(), 0.0))
        for destination in retried:
            counts[destination, "retried"] += 1
        for destination in dead:
            counts[destination, "dead_lettered"] += 1
        for (destination, outcome), count in counts.items():
            self.deliveries.labels(destination, outcome).inc(count)
