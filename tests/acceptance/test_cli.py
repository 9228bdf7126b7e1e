"""The ``outbox-relay`` command as an operator uses it: a real process, real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from outbox_events import Outbox, dispatch
from outbox_events.handlers.local import LocalHandler
from tests.conftest import postgres_admin_url

ROOT = Path(__file__).resolve().parents[2]
RELAY = str(Path(sys.executable).with_name("outbox-relay"))


def relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RELAY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_migrate_creates_the_table_and_is_idempotent(empty_database_url: str) -> None:
    first = relay("migrate", "--database-url", empty_database_url)
    second = relay("migrate", env={"OUTBOX_DATABASE_URL": empty_database_url})
    status = relay("status", "--json", "--database-url", empty_database_url)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == []


async def test_run_until_idle_delivers_what_the_web_app_committed(
    make_outbox: Callable[..., Outbox], database_url: str, tmp_path: Path
) -> None:
    web_handlers = LocalHandler()
    web_handlers.register(lambda event: None, event_name="*", name="recorder")
    web = make_outbox(handlers=[web_handlers], relay="external")
    async with web.unit_of_work():
        ids = [str(dispatch("invoice.sent", {"n": n})) for n in range(5)]
    received = tmp_path / "received.jsonl"
    env = {"ACCEPTANCE_DATABASE_URL": database_url, "ACCEPTANCE_RECEIVED": str(received)}

    result = relay("run", "tests.acceptance.relay_app:outbox", "--until-idle", env=env)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in received.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(ids)
    status = relay("status", "tests.acceptance.relay_app:outbox", "--json", env=env)
    assert json.loads(status.stdout) == [
        {
            "destination": "recorder",
            "pending": 0,
            "in_flight": 0,
            "dead": 0,
            "delivered": 5,
            "oldest_pending_age_s": None,
        }
    ]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.acceptance.no_such_module:outbox", "cannot import module"),
        ("tests.acceptance.relay_app:missing", "has no attribute 'missing'"),
        ("tests.acceptance.relay_app:not_an_outbox", "is a int, not an outbox_events.Outbox"),
        ("tests.acceptance.relay_app", "expected MODULE:ATTR"),
    ],
)
def test_run_rejects_a_bad_app_reference_clearly(target: str, message: str) -> None:
    result = relay(
        "run",
        target,
        env={"ACCEPTANCE_DATABASE_URL": "sqlite+aiosqlite://", "ACCEPTANCE_RECEIVED": os.devnull},
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_database_passwords_never_appear_in_output() -> None:
    database_url = postgres_admin_url()
    url = make_url(database_url)
    assert url.password, "the PostgreSQL test URL is expected to carry a password"
    secret = "s3cret-passw0rd"
    # an unknown role fails whether the server checks passwords or trusts local connections
    wrong = url.set(username="no_such_role", password=secret).render_as_string(False)
    good = relay("migrate", "--database-url", database_url)
    bad = relay("migrate", "--database-url", wrong)

    assert good.returncode == 0, good.stderr
    assert ":***@" in good.stdout, "the migrate report should show the URL with its password masked"
    assert bad.returncode != 0
    assert secret not in bad.stdout + bad.stderr
    assert "could not migrate" in bad.stderr


def test_make_demo_shows_the_deliveries() -> None:
    result = subprocess.run(
        [sys.executable, "examples/demo.py"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "handler send_receipt got order.placed" in result.stdout
    assert "demo ok" in result.stdout
