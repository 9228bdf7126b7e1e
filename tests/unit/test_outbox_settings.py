"""``Outbox(...)`` refuses bad relay settings where they are given, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from outbox_events import ConfigurationError, Outbox


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("concurrency", 0),
        ("concurrency", "2"),
        ("max_payload_size", -1),
        ("poll_interval", 0),
        ("lease", -5),
    ],
)
def test_a_bad_relay_setting_is_refused_with_its_name(
    tmp_path: Path, setting: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        Outbox(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}", **{setting: value})


def test_the_relay_takes_the_outboxs_settings(tmp_path: Path) -> None:
    outbox = Outbox(
        f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}", batch_size=7, concurrency=3, lease=12
    )

    assert (outbox.relay.batch_size, outbox.relay.concurrency) == (7, 3)
    assert outbox.relay.lease.total_seconds() == 12
