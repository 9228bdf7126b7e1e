"""The app module that acceptance tests hand to ``outbox-relay run``.

It reads its database from ``ACCEPTANCE_DATABASE_URL`` and appends every event it receives to
the JSON-lines file ``ACCEPTANCE_RECEIVED``.
"""

from __future__ import annotations

import json
import os

from outbox_events import Event, Outbox
from outbox_events.handlers.local import LocalHandler

handlers = LocalHandler()


@handlers.register(event_name="*", name="recorder")
def record(event: Event) -> None:
    with open(os.environ["ACCEPTANCE_RECEIVED"], "a", encoding="utf-8") as file:
        file.write(
            json.dumps({"id": str(event.id), "name": event.name, "payload": event.payload}) + "\n"
        )


outbox = Outbox(
    os.environ["ACCEPTANCE_DATABASE_URL"], handlers=[handlers], relay="external", retention=3600
)
not_an_outbox = 42
