"""Local Python functions as destinations: ``@local_handler.register(event_name="order.*")``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar, overload

from outbox_events.exceptions import ConfigurationError
from outbox_events.handlers.base import BaseEventHandler, Destination
from outbox_events.handlers.dependencies import Dependant, is_async_callable
from outbox_events.names import EventName, event_name_str
from outbox_events.typing import Event

__all__ = ["LocalHandler", "local_handler"]

F = TypeVar("F", bound=Callable[..., Any])


class LocalHandler(BaseEventHandler):
    """A registry of local functions, each of them a destination of its own.

    A function is named, for its delivery state, by its module and qualified name unless
    ``register(name=...)`` says otherwise: keep names stable across deployments, or pending
    deliveries to the old name wait for a destination that no longer exists.
    """

    def __init__(self) -> None:
        super().__init__()
        self._registry: dict[str, list[Callable[..., Any]]] = {}
        self._names: dict[Callable[..., Any], str] = {}
        self._generation = 0

    @overload
    def register(self, _func: F) -> F: ...

    @overload
    def register(
        self, _func: None = None, *, event_name: EventName = "*", name: str | None = None
    ) -> Callable[[F], F]: ...

    def register(
        self, _func: F | None = None, *, event_name: EventName = "*", name: str | None = None
    ) -> F | Callable[[F], F]:
        """Register a sync or async function for events matching ``event_name`` (fnmatch).

        The function is called with the :class:`~outbox_events.typing.Event`; other parameters
        may be FastAPI ``Depends``. Sync functions run in a thread.
        """

        def _register(func: F) -> F:
            if not callable(func):
                raise ConfigurationError(f"local handler must be callable, got {func!r}")
            pattern = event_name_str(event_name)
            destination = self._names.get(func) if name is None else name
            destination = destination or _qualified_name(func)
            for other, other_name in self._names.items():
                if other_name == destination and other is not func:
                    raise ConfigurationError(
                        f"{func!r} and {other!r} would both be the destination "
                        f"{destination!r}; give them distinct names with register(name=...)"
                    )
            handlers = self._registry.setdefault(pattern, [])
            if func not in handlers:
                handlers.append(func)
            self._names[func] = destination
            self._generation += 1
            return func

        if _func is None:
            return _register
        return _register(_func)

    @property
    def generation(self) -> int:
        return self._generation

    def destinations(self) -> list[Destination]:
        patterns: dict[Callable[..., Any], list[str]] = {}
        for pattern, functions in self._registry.items():
            for func in functions:
                patterns.setdefault(func, []).append(pattern)
        return [
            _FunctionDestination(func, self._names[func], tuple(func_patterns))
            for func, func_patterns in patterns.items()
        ]

    async def handle(self, event: Event) -> None:
        """Call every matching function in turn (what fastapi-events' LocalHandler did)."""
        for destination in self.destinations():
            if destination.accepts(event.name):
                await destination.handle(event)


class _FunctionDestination(Destination):
    def __init__(self, func: Callable[..., Any], name: str, patterns: tuple[str, ...]) -> None:
        self.func = func
        self.name = name
        self.patterns = patterns
        self.dependant = Dependant(func)
        self.is_async = is_async_callable(func)

    async def handle(self, event: Event) -> None:
        if not self.dependant.dependencies:
            await self._call(event, {})
            return
        error: Exception | None = None
        async with contextlib.AsyncExitStack() as stack:
            kwargs = await self.dependant.solve(event, stack, {})
            try:
                await self._call(event, kwargs)
            except Exception as exc:
                error = exc
                raise
        if error is not None:
            # A generator dependency caught the handler's exception without re-raising it: the
            # delivery still failed and must be retried.
            raise error

    async def _call(self, event: Event, kwargs: dict[str, Any]) -> None:
        if self.is_async:
            await self.func(event, **kwargs)
        else:
            await asyncio.to_thread(self.func, event, **kwargs)


def _qualified_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "<unknown>"
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}"


local_handler = LocalHandler()
