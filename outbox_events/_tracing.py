"""OpenTelemetry: the W3C trace context of the dispatching code, and the delivery spans that
continue it (DESIGN rule 12), when opentelemetry-api is installed (the ``[otel]`` extra).

Delivery spans are made only when a tracer provider is configured (the application set one,
or passed one to ``Outbox(tracer_provider=...)``); otherwise delivering costs nothing extra.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outbox_events.typing import Event

SYSTEM = "outbox_events"


@functools.cache
def _otel() -> tuple[Any, Any] | None:
    """``(opentelemetry.propagate, opentelemetry.trace)``, or None without opentelemetry-api."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return propagate, trace


def current_trace_context() -> str | None:
    """The current trace context as stored JSON (``traceparent``, ``tracestate``), or None."""
    otel = _otel()
    if otel is None:
        return None
    carrier: dict[str, str] = {}
    otel[0].inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def delivery_tracer(provider: Any = None) -> Any:
    """A tracer for delivery spans from ``provider`` (default: the global one), or None when
    opentelemetry-api is missing or no tracer provider is configured."""
    otel = _otel()
    if otel is None:
        return None
    trace = otel[1]
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None  # nothing would record the spans
    from outbox_events import __version__

    return provider.get_tracer(SYSTEM, __version__)


@contextlib.contextmanager
def delivery_span(tracer: Any, destination: str, events: Sequence[Event]) -> Iterator[None]:
    """A CONSUMER span ``process <destination>`` around handing ``events`` to a destination.

    One event: the span's parent is the trace context stored when it was dispatched, so the
    handler's own spans join the request's trace. Several (``handle_many``): the span links to
    each event's context. A failure is recorded on the span and raised on.
    """
    if tracer is None:
        yield
        return
    propagate, trace = _otel()  # type: ignore[misc]  # a tracer implies opentelemetry
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": destination,
    }
    parent = None
    links = []
    if len(events) == 1:
        [event] = events
        attributes.update(
            {
                "messaging.message.id": str(event.id),
                "outbox_events.event.name": event.name,
                "outbox_events.attempt": event.attempt,
            }
        )
        if event.key is not None:
            attributes["outbox_events.event.key"] = event.key
        if event.trace_context:
            parent = propagate.extract(event.trace_context)
    else:
        attributes["messaging.batch.message_count"] = len(events)
        for event in events:
            if event.trace_context:
                linked = trace.get_current_span(propagate.extract(event.trace_context))
                if linked.get_span_context().is_valid:
                    links.append(trace.Link(linked.get_span_context()))
    with tracer.start_as_current_span(
        f"process {destination}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=True,
        set_status_on_exception=True,
    ):
        yield
