"""The Outbox that ``outbox-relay run _latency_app:outbox`` loads in ``latency.py --process``.

Its one destination sends ``time.perf_counter()`` (CLOCK_MONOTONIC, the same clock in every
process of the machine) and the event id over UDP to ``127.0.0.1:OUTBOX_BENCH_UDP_PORT``.
"""

from __future__ import annotations

import os
import socket
import time

from outbox_events import Outbox
from outbox_events.handlers.local import LocalHandler
from outbox_events.typing import Event

DESTINATION = "bench.latency"

_address = ("127.0.0.1", int(os.environ["OUTBOX_BENCH_UDP_PORT"]))
_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

handler = LocalHandler()


@handler.register(event_name="*", name=DESTINATION)
async def report(event: Event) -> None:
    """Tell the benchmark when this event reached its handler."""
    _socket.sendto(f"{time.perf_counter()!r} {event.id}".encode(), _address)


outbox = Outbox(
    os.environ["OUTBOX_BENCH_DATABASE_URL"],
    handlers=[handler],
    relay="external",
)
