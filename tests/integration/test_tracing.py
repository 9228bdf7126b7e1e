"""Delivery spans continue the dispatching code's trace (DESIGN rule 12)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from outbox_events import Event, Outbox, RetryPolicy, dispatch
from outbox_events.handlers.base import BaseEventHandler
from outbox_events.handlers.local import LocalHandler
from tests.helpers import sampled_span


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def test_the_delivery_span_is_a_child_of_the_dispatching_span(
    make_outbox: Callable[..., Outbox],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    handlers = LocalHandler()

    @handlers.register(event_name="order.placed", name="receipts")
    async def send_receipt(event: Event) -> None:
        with provider.get_tracer("app").start_as_current_span("render receipt"):
            pass

    outbox = make_outbox(handlers=[handlers], tracer_provider=provider)
    with provider.get_tracer("app").start_as_current_span("POST /orders") as request:
        async with outbox.unit_of_work():
            event_id = dispatch("order.placed", {"id": 7}, key="order-7")
    await outbox.drain()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    delivery, inner = spans["process receipts"], spans["render receipt"]
    assert delivery.context.trace_id == request.get_span_context().trace_id
    assert delivery.parent is not None
    assert delivery.parent.span_id == request.get_span_context().span_id
    assert delivery.kind is SpanKind.CONSUMER
    assert delivery.attributes is not None
    assert delivery.attributes["messaging.message.id"] == str(event_id)
    assert delivery.attributes["messaging.destination.name"] == "receipts"
    assert delivery.attributes["outbox_events.event.name"] == "order.placed"
    assert delivery.attributes["outbox_events.event.key"] == "order-7"
    assert delivery.attributes["outbox_events.attempt"] == 1
    assert inner.parent is not None and inner.parent.span_id == delivery.context.span_id, (
        "spans the handler makes belong under its delivery span"
    )


async def test_a_failed_delivery_is_recorded_on_its_span(
    make_outbox: Callable[..., Outbox],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    handlers = LocalHandler()

    @handlers.register(event_name="order.placed", name="flaky")
    async def flaky(event: Event) -> None:
        raise RuntimeError("carrier unavailable")

    outbox = make_outbox(
        handlers=[handlers], tracer_provider=provider, retry=RetryPolicy(max_attempts=1)
    )
    async with outbox.unit_of_work():
        dispatch("order.placed", {"id": 7})
    result = await outbox.drain()

    [span] = exporter.get_finished_spans()
    assert result.dead_lettered == 1
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.message"] == "carrier unavailable"


class _Batch(BaseEventHandler):
    def __init__(self) -> None:
        super().__init__(name="batch")
        self.batches: list[int] = []

    async def handle_many(self, events: Sequence[Event]) -> None:
        self.batches.append(len(events))


async def test_a_batch_delivery_span_links_to_each_events_trace(
    make_outbox: Callable[..., Outbox],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    handler = _Batch()
    outbox = make_outbox(handlers=[handler], tracer_provider=provider)
    requests = []
    for n in range(3):
        with provider.get_tracer("app").start_as_current_span(f"request {n}") as request:
            requests.append(request.get_span_context())
            async with outbox.unit_of_work():
                dispatch("report.ready", {"n": n})
    await outbox.drain()

    [delivery] = [s for s in exporter.get_finished_spans() if s.name == "process batch"]
    assert handler.batches == [3]
    assert delivery.attributes is not None
    assert delivery.attributes["messaging.batch.message_count"] == 3
    assert {link.context.span_id for link in delivery.links} == {r.span_id for r in requests}


async def test_without_a_tracer_provider_no_delivery_span_is_made(
    make_outbox: Callable[..., Outbox],
) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), (
        "this test needs the process-wide tracer provider unset"
    )
    seen: list[trace.Span] = []
    handlers = LocalHandler()

    @handlers.register(event_name="order.placed")
    async def record(event: Event) -> None:
        seen.append(trace.get_current_span())

    outbox = make_outbox(handlers=[handlers])
    with trace.use_span(sampled_span()):  # the event carries a trace context
        async with outbox.unit_of_work():
            dispatch("order.placed", {"id": 7})
    await outbox.drain()

    # Even a no-op span would have made the stored context current in the handler.
    assert seen == [trace.INVALID_SPAN], "a span was entered although nothing records it"
