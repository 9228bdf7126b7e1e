"""What the library costs a request, driven in-process through httpx's ASGITransport.

1. One event in the app's own transaction: a FastAPI app with the middleware and an
   instrumented ``async_sessionmaker``; ``POST /plain`` adds one row of the app's own table and
   commits; ``POST /event`` does the same plus one ``dispatch()`` (the event is inserted in the
   same transaction by the session's commit hook). The two routes alternate request by request;
   per-request latency p50 of /event over /plain.
2. Installing the library on a route that dispatches nothing: the same routes served by an app
   with the middleware + instrumented sessions, and by an app without either; blocks of
   requests alternate between the two apps; req/s ratio, for a trivial route (``GET /ping``) and
   for ``POST /plain``.

The Outbox is ``relay="external"`` by default, so no delivery runs between requests (this
measures the write path; ``--relay embedded`` lets the in-process relay deliver too).

    python bench/request_cost.py [--requests 2000] [--database postgres|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from _common import (
    Result,
    add_common_arguments,
    median,
    ms,
    noop_handler,
    percentile,
    print_table,
    rate,
    scratch_postgres,
    scratch_sqlite,
)
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outbox_events import Outbox, dispatch
from outbox_events.middleware import EventHandlerASGIMiddleware

TARGET_P50_RATIO = 1.15
TARGET_RPS_RATIO = 0.95


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str]


def make_app(engine: AsyncEngine, outbox: Outbox | None) -> FastAPI:
    """The benchmark app; with ``outbox``, the middleware and instrumented sessions."""
    session_factory = async_sessionmaker(engine, expire_on_commit=False)
    if outbox is not None:
        outbox.instrument(session_factory)
    app = FastAPI()
    if outbox is not None:
        app.add_middleware(EventHandlerASGIMiddleware, outbox=outbox)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/plain")
    async def plain() -> dict[str, bool]:
        async with session_factory() as session:
            session.add(Item(note="plain"))
            await session.commit()
        return {"ok": True}

    @app.post("/event")
    async def event() -> dict[str, bool]:
        async with session_factory() as session:
            session.add(Item(note="event"))
            dispatch("item.created", {"note": "event", "total": "10.00"})
            await session.commit()
        return {"ok": True}

    return app


@contextlib.asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        yield client


async def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    response = await call()
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}")
    return elapsed


async def one_event_cost(client: httpx.AsyncClient, requests: int, warmup: int) -> Result:
    plain: list[float] = []
    event: list[float] = []
    for index in range(warmup + requests):
        first, second = ("/plain", "/event") if index % 2 == 0 else ("/event", "/plain")
        for path in (first, second):
            elapsed = await timed(lambda path=path: client.post(path))
            if index >= warmup:
                (plain if path == "/plain" else event).append(elapsed)
    base, cand = percentile(plain, 0.5), percentile(event, 0.5)
    ratio = cand / base
    print(
        f"one event: mean {ms(sum(plain) / len(plain))} without dispatch, "
        f"{ms(sum(event) / len(event))} with",
        file=sys.stderr,
    )
    return Result(
        "one dispatch() in the app's transaction (p50)",
        f"{ms(base)} (no dispatch)",
        f"{ms(cand)} (p99 {ms(percentile(event, 0.99))})",
        f"{ratio:.2f}x",
        f"<= {TARGET_P50_RATIO}x",
        ratio <= TARGET_P50_RATIO,
    )


async def middleware_cost(
    with_library: httpx.AsyncClient,
    without: httpx.AsyncClient,
    method: str,
    path: str,
    requests: int,
    block: int,
) -> Result:
    """Blocks of ``block`` requests in ABBA quartets; the ratio is the median over quartets
    of (time without) / (time with), i.e. req/s with over req/s without."""
    seconds = {True: 0.0, False: 0.0}
    ratios: list[float] = []
    quartets = max(1, requests // (2 * block))
    for _ in range(quartets):
        spent = {True: 0.0, False: 0.0}
        for installed in (True, False, False, True):
            client = with_library if installed else without
            started = time.perf_counter()
            for _ in range(block):
                response = await client.request(method, path)
                if response.status_code != 200:
                    raise RuntimeError(f"{path} answered {response.status_code}")
            spent[installed] += time.perf_counter() - started
        ratios.append(spent[False] / spent[True])
        for installed in spent:
            seconds[installed] += spent[installed]
    done = quartets * 2 * block
    base = done / seconds[False]
    cand = done / seconds[True]
    ratio = median(ratios)
    return Result(
        f"{method} {path}, no dispatch: library installed vs not",
        f"{rate(base)} (no middleware)",
        f"{rate(cand)} (middleware)",
        f"{ratio:.2f}x",
        f">= {TARGET_RPS_RATIO}x",
        ratio >= TARGET_RPS_RATIO,
    )


async def run(url: str, args: argparse.Namespace) -> list[Result]:
    outbox = Outbox(url, handlers=[noop_handler()], relay=args.relay)
    try:
        async with outbox.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        installed = make_app(outbox.engine, outbox)
        bare = make_app(outbox.engine, None)
        async with client_for(installed) as with_library, client_for(bare) as without:
            results = [await one_event_cost(with_library, args.requests, args.warmup)]
            # warm both apps before the req/s comparison
            for client in (with_library, without):
                for _ in range(args.warmup):
                    await client.get("/ping")
                    await client.post("/plain")
            for method, path, count in (
                ("GET", "/ping", args.requests * 5),
                ("POST", "/plain", args.requests),
            ):
                results.append(
                    await middleware_cost(with_library, without, method, path, count, args.block)
                )
                print(f"{path}: {results[-1].ratio}", file=sys.stderr)
        return results
    finally:
        await outbox.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant")
    parser.add_argument("--warmup", type=int, default=50, help="requests dropped first")
    parser.add_argument("--block", type=int, default=50, help="requests per alternating block")
    parser.add_argument(
        "--database",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="where the app's rows and the outbox live (default postgres)",
    )
    parser.add_argument(
        "--relay",
        choices=("external", "embedded"),
        default="external",
        help="external: only write (default); embedded: deliver in-process between requests",
    )
    args = parser.parse_args()
    if args.database == "postgres":
        async with scratch_postgres(args.postgres_url, "request") as url:
            results = await run(url, args)
    else:
        with tempfile.TemporaryDirectory() as directory:
            async with scratch_sqlite(directory, "request") as url:
                results = await run(url, args)
    print_table(
        f"request cost ({args.database}, relay={args.relay}, httpx ASGITransport in-process)",
        results,
        [
            "one-event row: /plain and /event alternate request by request",
            f"req/s rows: blocks of {args.block} requests alternate between the apps (ABBA); "
            "ratio = median over quartets",
        ],
    )


if __name__ == "__main__":
    asyncio.run(main())
