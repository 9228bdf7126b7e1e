"""FastAPI-style ``Depends`` for local handlers, resolved per event.

Supports ``param=Depends(dep)`` and ``param: Annotated[T, Depends(dep)]``, nested dependencies,
caching per event (``use_cache``), sync dependencies (run in a thread), and generator
dependencies whose code after ``yield`` runs once the handler has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

from outbox_events.typing import Event


def _as_depends(value: Any) -> Any | None:
    """The Depends marker in ``value`` (FastAPI's, or anything shaped like it), or None."""
    if hasattr(value, "dependency") and hasattr(value, "use_cache"):
        return value
    return None


class Dependant:
    """A callable and the dependencies of its parameters."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call
        self.dependencies: dict[str, tuple[Dependant, bool]] = {}
        self.event_params: list[str] = []
        for param in inspect.signature(call).parameters.values():
            annotation = _resolve_annotation(call, param.annotation)
            marker = _as_depends(param.default)
            if marker is None and typing.get_origin(annotation) is Annotated:
                for extra in typing.get_args(annotation)[1:]:
                    marker = _as_depends(extra)
                    if marker is not None:
                        annotation = typing.get_args(annotation)[0]
                        break
            if marker is not None:
                target = marker.dependency or annotation
                self.dependencies[param.name] = (Dependant(target), bool(marker.use_cache))
            elif param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                self.event_params.append(param.name)

    async def solve(
        self, event: Event, stack: contextlib.AsyncExitStack, cache: dict[Any, Any]
    ) -> dict[str, Any]:
        """Resolve this callable's dependencies for ``event`` into keyword arguments."""
        values: dict[str, Any] = {}
        for name, (dependant, use_cache) in self.dependencies.items():
            if use_cache and dependant.call in cache:
                values[name] = cache[dependant.call]
                continue
            value = await dependant.run(event, stack, cache)
            if use_cache:
                cache[dependant.call] = value
            values[name] = value
        return values

    async def run(
        self, event: Event, stack: contextlib.AsyncExitStack, cache: dict[Any, Any]
    ) -> Any:
        """Call this dependency (with the event, if it takes a plain parameter)."""
        kwargs = await self.solve(event, stack, cache)
        args = (event,) if self.event_params else ()
        call = self.call
        if inspect.isasyncgenfunction(call):
            return await stack.enter_async_context(
                contextlib.asynccontextmanager(call)(*args, **kwargs)
            )
        if inspect.isgeneratorfunction(call):
            manager = contextlib.contextmanager(call)(*args, **kwargs)
            value = await asyncio.to_thread(manager.__enter__)
            stack.push_async_exit(_threaded_exit(manager))
            return value
        if is_async_callable(call):
            return await call(*args, **kwargs)
        return await asyncio.to_thread(call, *args, **kwargs)


def is_async_callable(call: Any) -> bool:
    """Whether calling ``call`` returns an awaitable (async functions, partials of them, and
    instances with an async ``__call__``)."""
    while isinstance(call, functools.partial):
        call = call.func
    return inspect.iscoroutinefunction(call) or (
        callable(call) and inspect.iscoroutinefunction(call.__call__)
    )


def _resolve_annotation(call: Callable[..., Any], annotation: Any) -> Any:
    """The annotation, evaluated if it is a string (``from __future__ import annotations``).

    Each parameter is resolved on its own: one annotation that cannot be (a name imported only
    under ``TYPE_CHECKING``) must not hide the ``Annotated[..., Depends(...)]`` of another.
    """
    if not isinstance(annotation, str):
        return annotation
    target = inspect.unwrap(call)
    namespace = getattr(target, "__globals__", None)
    if namespace is None:  # a class or a callable instance: the globals of its module
        module = sys.modules.get(getattr(target, "__module__", None) or "")
        namespace = vars(module) if module is not None else {}
    holder = types.SimpleNamespace(__annotations__={"annotation": annotation})
    try:
        return typing.get_type_hints(holder, globalns=namespace, include_extras=True)["annotation"]
    except Exception:  # unresolvable: keep the string; it names no dependency anyway
        return annotation


def _threaded_exit(manager: contextlib.AbstractContextManager[Any]) -> Callable[..., Any]:
    async def exit_(*exc_info: Any) -> bool | None:
        return await asyncio.to_thread(manager.__exit__, *exc_info)

    return exit_
