"""W3C trace context of the dispatching code, when opentelemetry-api is installed."""

from __future__ import annotations

import functools
import json
from typing import Any


@functools.cache
def _propagate() -> Any:
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    return propagate


def current_trace_context() -> str | None:
    """The current trace context as stored JSON (``traceparent``, ``tracestate``), or None."""
    propagate = _propagate()
    if propagate is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None
