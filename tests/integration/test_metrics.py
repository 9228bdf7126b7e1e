"""Prometheus metrics of the relay, when asked for (``Outbox(metrics=...)``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from outbox_events import ConfigurationError, Event, Outbox, RetryPolicy, dispatch
from outbox_events.handlers.local import LocalHandler


async def test_outcomes_lag_and_claims_are_counted_per_destination(
    make_outbox: Callable[..., Outbox],
) -> None:
    registry = CollectorRegistry()
    handlers = LocalHandler()

    @handlers.register(event_name="order.*", name="good")
    async def good(event: Event) -> None:
        pass

    @handlers.register(event_name="order.*", name="bad")
    async def bad(event: Event) -> None:
        raise RuntimeError("down")

    outbox = make_outbox(
        handlers=[handlers], metrics=registry, retry=RetryPolicy(max_attempts=2, initial_delay=0)
    )
    async with outbox.unit_of_work():
        for n in range(3):
            dispatch("order.placed", {"n": n})
    await outbox.drain()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("outbox_events_deliveries_total", destination="good", outcome="delivered") == 3
    assert sample("outbox_events_deliveries_total", destination="bad", outcome="retried") == 3
    assert sample("outbox_events_deliveries_total", destination="bad", outcome="dead_lettered") == 3
    assert sample("outbox_events_delivery_lag_seconds_count", destination="good") == 3
    assert sample("outbox_events_claimed_rows_total") == 9  # 6 first attempts, 3 retries
    claims = sample("outbox_events_claim_seconds_count")
    assert claims is not None and claims >= 2
    assert sample("outbox_events_batches_in_flight") == 0


def test_outboxes_sharing_a_registry_share_its_metrics(tmp_path: object) -> None:
    registry = CollectorRegistry()
    url = f"sqlite+aiosqlite:///{tmp_path}/outbox.db"

    first, second = Outbox(url, metrics=registry), Outbox(url, metrics=registry)

    assert first.metrics is second.metrics is not None


@pytest.mark.parametrize("setting", ["yes", 1, object()])
def test_a_bad_metrics_setting_is_refused(tmp_path: object, setting: object) -> None:
    with pytest.raises(ConfigurationError, match="metrics must be"):
        Outbox(f"sqlite+aiosqlite:///{tmp_path}/outbox.db", metrics=setting)
