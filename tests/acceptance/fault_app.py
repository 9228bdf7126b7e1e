"""The app module that the relay fault tests hand to ``outbox-relay run``.

Configured through environment variables (the tests set them per process):

- ``FAULT_DATABASE_URL``: the database.
- ``FAULT_RECEIVED``: a JSON-lines file; every delivery appends one line (``id``, ``key``,
  ``seq`` from the payload, ``attempt``, ``pid``) with a single ``write`` to a file opened for
  appending, so several relay processes can share it and its line order is the order in which
  the deliveries happened.
- ``FAULT_DELAY`` / ``FAULT_JITTER``: seconds the handler sleeps before recording, plus a
  random part of up to ``FAULT_JITTER`` seconds (both default to 0): slow handlers keep
  batches in flight for the kill and SIGTERM tests.

- ``FAULT_SLOW_SEQS`` / ``FAULT_SLOW_DELAY``: events whose ``seq`` is in this comma-separated
  list take ``FAULT_SLOW_DELAY`` seconds (default 1.5) more: their batch is surely in flight
  while the test watches for it.
- ``FAULT_SYNC``: when set, the handler is a plain function (run in a thread, where a relay
  stopping past its shutdown timeout cannot interrupt it); otherwise it is async.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

from outbox_events import Event, Outbox, RetryPolicy
from outbox_events.handlers.local import LocalHandler

DESTINATION = "recorder"

handlers = LocalHandler()


def delay(event: Event) -> float:
    seconds = float(os.environ.get("FAULT_DELAY", "0"))
    seconds += random.uniform(0, float(os.environ.get("FAULT_JITTER", "0")))
    slow = os.environ.get("FAULT_SLOW_SEQS", "")
    if slow and seq_of(event) in {int(seq) for seq in slow.split(",")}:
        seconds += float(os.environ.get("FAULT_SLOW_DELAY", "1.5"))
    return seconds


def seq_of(event: Event) -> int | None:
    payload = event.payload if isinstance(event.payload, dict) else {}
    seq = payload.get("seq")
    return seq if isinstance(seq, int) else None


async def record(event: Event) -> None:
    if seconds := delay(event):
        await asyncio.sleep(seconds)
    write(event)


def record_in_thread(event: Event) -> None:
    if seconds := delay(event):
        time.sleep(seconds)
    write(event)


def write(event: Event) -> None:
    line = json.dumps(
        {
            "id": str(event.id),
            "key": event.key,
            "seq": seq_of(event),
            "attempt": event.attempt,
            "pid": os.getpid(),
        }
    )
    fd = os.open(os.environ["FAULT_RECEIVED"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


handlers.register(event_name="*", name=DESTINATION)(
    record_in_thread if os.environ.get("FAULT_SYNC") else record
)

outbox = Outbox(
    os.environ["FAULT_DATABASE_URL"],
    handlers=[handlers],
    relay="external",
    retention=3600,  # keep delivered rows so that tests can inspect attempts and states
    retry=RetryPolicy(initial_delay=0.2, max_delay=1.0),
)
