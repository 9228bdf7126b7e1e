"""The example deployed the way ``docker-compose.yml`` deploys it: a migration job, a web
process that only writes events, and a separate ``outbox-relay run`` process that delivers them,
all configured by ``DATABASE_URL`` through ``examples/production_app.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("outbox-relay"))
APP = "examples.production_app:outbox"
DESTINATION = "examples.app.send_receipt"

WEB_REQUESTS = """
from fastapi.testclient import TestClient

from examples.production_app import app

with TestClient(app) as client:  # runs the app's lifespan, as uvicorn does
    placed = client.post("/orders", params={"total": 10})
    rolled_back = client.post("/orders", params={"total": 20, "outcome": "rollback"})
    pinged = client.post("/ping")
print(placed.status_code, rolled_back.status_code, pinged.status_code)
"""


def run(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    result = subprocess.run(
        list(args),
        cwd=ROOT,
        env={**environment, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}{result.stderr}"
    return result


def status(database_url: str) -> dict[str, dict[str, int]]:
    rows = json.loads(run(RELAY, "status", APP, "--json", database_url=database_url).stdout)
    return {
        row["destination"]: {key: row[key] for key in ("pending", "in_flight", "dead")}
        for row in rows
    }


def test_web_process_writes_and_a_separate_relay_process_delivers(database_url: str) -> None:
    migrate = run(RELAY, "migrate", APP, database_url=database_url)
    web = run(sys.executable, "-c", WEB_REQUESTS, database_url=database_url)
    written = status(database_url)
    relay = run(RELAY, "run", APP, "--until-idle", database_url=database_url)

    assert "is up to date" in migrate.stdout
    assert web.stdout.split() == ["200", "409", "200"]
    assert "handler send_receipt" not in web.stdout, "the web process does not deliver"
    assert written == {DESTINATION: {"pending": 2, "in_flight": 0, "dead": 0}}, "order + ping"
    delivered = [line for line in relay.stdout.splitlines() if "handler send_receipt got" in line]
    assert len(delivered) == 2
    assert any("order.placed {'id': 1, 'total': 10}" in line for line in delivered)
    assert any("order.pinged" in line for line in delivered)
    assert status(database_url) == {}, "delivered rows are deleted (no retention configured)"
