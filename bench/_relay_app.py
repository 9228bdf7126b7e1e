"""The Outbox that ``outbox-relay run _relay_app:outbox`` loads in ``relay_throughput.py``.

The database URL comes from ``OUTBOX_BENCH_DATABASE_URL``; the one destination is the same
no-op local function the in-process benchmark uses.
"""

from __future__ import annotations

import os

from _common import noop_handler

from outbox_events import Outbox

outbox = Outbox(
    os.environ["OUTBOX_BENCH_DATABASE_URL"], handlers=[noop_handler()], relay="external"
)
