"""The public surface: ``__all__`` and the import paths DESIGN §2 promises fastapi-events users."""

from __future__ import annotations

import importlib

import pytest

import outbox_events

# (module, attribute) pairs a fastapi-events user reaches by renaming the import prefix.
PROMISED_IMPORTS = [
    ("outbox_events", "dispatch"),
    ("outbox_events", "Outbox"),
    ("outbox_events.dispatcher", "dispatch"),
    ("outbox_events.middleware", "EventHandlerASGIMiddleware"),
    ("outbox_events.handlers.local", "local_handler"),
    ("outbox_events.handlers.local", "LocalHandler"),
    ("outbox_events.handlers.base", "BaseEventHandler"),
    ("outbox_events.handlers.echo", "EchoHandler"),
    ("outbox_events.handlers.null", "NullHandler"),
    ("outbox_events.registry.payload_schema", "registry"),
    ("outbox_events.typing", "Event"),
]


def test_all_is_sorted_and_without_duplicates() -> None:
    names = list(outbox_events.__all__)

    assert names == sorted(names), "keep outbox_events.__all__ sorted"
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", outbox_events.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    assert hasattr(outbox_events, name), f"outbox_events.__all__ lists {name!r}, which is missing"


@pytest.mark.parametrize(("module", "attribute"), PROMISED_IMPORTS, ids="{0[0]}.{0[1]}".format)
def test_promised_import_path_exists(module: str, attribute: str) -> None:
    imported = importlib.import_module(module)

    assert hasattr(imported, attribute), f"DESIGN §2 promises `from {module} import {attribute}`"


def test_the_top_level_dispatch_is_the_dispatchers() -> None:
    from outbox_events.dispatcher import dispatch

    assert outbox_events.dispatch is dispatch


def test_the_global_local_handler_and_registry_are_instances_of_their_classes() -> None:
    from outbox_events.handlers.local import LocalHandler, local_handler
    from outbox_events.registry.payload_schema import EventPayloadSchemaRegistry, registry

    assert isinstance(local_handler, LocalHandler)
    assert isinstance(registry, EventPayloadSchemaRegistry)


def test_exceptions_share_one_root_and_keep_builtin_meanings() -> None:
    assert issubclass(outbox_events.MissingContextError, LookupError)
    for name in outbox_events.__all__:
        value = getattr(outbox_events, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, outbox_events.OutboxError), f"{name} is not an OutboxError"
