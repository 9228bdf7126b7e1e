"""Small helpers shared by the test modules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """A clock the test moves forward by hand (``Outbox(clock=...)``), so that retries and
    delayed events become due without waiting."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sampled_span() -> NonRecordingSpan:
    """A sampled span with a trace state, to make as current where a test dispatches, so that
    the event carries a known W3C trace context."""
    return NonRecordingSpan(
        SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState([("vendor", "opaque")]),
        )
    )
