"""``make demo``: run the example app under uvicorn, send a few requests, show the deliveries.

Everything runs on the embedded default: a fresh SQLite file and the in-process relay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
WAIT_FOR_DELIVERY = 15.0  # seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> int:
    folder = tempfile.mkdtemp(prefix="outbox-demo-")
    os.environ["DEMO_DATABASE_URL"] = f"sqlite+aiosqlite:///{folder}/demo.db"
    sys.path.insert(0, str(ROOT))
    from examples import app as example

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # hide the demo's own 500
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(example.app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)

    print(f"example app on http://127.0.0.1:{port}, database {folder}/demo.db\n")
    requests = [
        ("POST /orders?total=10", "commit: the order and its event commit together"),
        ("POST /orders?total=20&outcome=rollback", "rollback: the event is discarded"),
        ("POST /orders?total=30&outcome=raise", "exception: the event is discarded"),
        ("POST /ping", "no session: the middleware stores the event before responding"),
    ]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for request, meaning in requests:
            method, path = request.split(" ", 1)
            response = await client.request(method, path)
            print(f"{request:<40} -> {response.status_code}   ({meaning})")

    deadline = time.monotonic() + WAIT_FOR_DELIVERY
    while len(example.received) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let anything that should not arrive show itself

    status = await example.outbox.store.status(now=example.outbox.clock())
    server.should_exit = True
    await serving

    names = sorted(event.name for event in example.received)
    print("\ndelivered:", ", ".join(f"{e.name} {e.payload}" for e in example.received))
    for row in status:
        print(
            f"outbox rows for {row['destination']}: {row['delivered']} delivered, "
            f"{row['pending']} pending, {row['dead']} dead"
        )
    print("not sent: the events of the rolled-back and the failed request (never stored)")
    expected = ["order.pinged", "order.placed"]
    if names != expected or example.received[0].payload.get("total", 10) != 10:
        print(f"\nUNEXPECTED: delivered {names}, expected {expected}")
        return 1
    print("\ndemo ok: committed events delivered once, rolled-back and failed ones never sent")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
