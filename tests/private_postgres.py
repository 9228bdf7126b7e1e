"""A PostgreSQL server of the test's own, for fault tests that stop and restart the database.

``initdb`` into a temporary folder, ``pg_ctl`` on a free port on 127.0.0.1, trust
authentication; stopped and deleted at teardown, even when the test failed. The server
binaries are taken from ``pg_config --bindir`` (they are not on ``PATH``); as ``initdb``
refuses to run as root, they run as the ``postgres`` OS user when the tests run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_sync

SERVER_USER = "postgres"  # the OS user that owns the data folder when the tests run as root
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections


def _bindir() -> Path:
    try:
        output = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"pg_config is needed to find initdb and pg_ctl: {exc}", pytrace=False)
    return Path(output.strip())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostgres:
    """One throw-away PostgreSQL server; ``url`` reaches its ``postgres`` database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.log = root / "server.log"
        self.port = free_port()
        self.bindir = _bindir()
        self.as_root = os.geteuid() == 0
        self.user = SERVER_USER if self.as_root else _current_user()
        self.url = f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = START_TIMEOUT + 30) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}\n{result.stdout}{result.stderr}"
                f"\n--- server log ---\n{self.server_log()}"
            )

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no server log)"

    def init(self) -> None:
        self.socket_dir.mkdir()
        if self.as_root:
            shutil.chown(self.socket_dir, SERVER_USER)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            self.user,
            "--no-sync",
            "-E",
            "UTF8",
        )

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server (on the same port every time) and wait until it accepts
        connections."""
        options = f"-k {self.socket_dir} -h 127.0.0.1 -p {self.port} -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(START_TIMEOUT),
            "start",
        )

    def stop(self) -> None:
        """Stop the server at once: open connections are cut (``-m fast``)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def migrate(self) -> None:
        from outbox_events import Outbox

        async def migrate() -> None:
            outbox = Outbox(self.url)
            try:
                await outbox.migrate()
            finally:
                await outbox.close()

        run_sync(migrate())


def _current_user() -> str:
    import getpass

    return getpass.getuser()


@contextlib.contextmanager
def private_postgres_server(*, start: bool = True) -> Iterator[PrivatePostgres]:
    """A fresh server (started and migrated unless ``start`` is false); stopped and deleted
    afterwards whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="outbox-pg-", dir="/tmp"))
    try:
        root.chmod(0o755)
        server = PrivatePostgres(root)
        if server.as_root:
            shutil.chown(root, SERVER_USER)
        server.init()
        if start:
            server.start()
            server.migrate()
        try:
            yield server
        finally:
            if server.running:
                with contextlib.suppress(Exception):
                    server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(name="private_postgres")
def private_postgres_fixture() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server, running and migrated; the test may stop and start it.

    Import it into a test module (``from tests.private_postgres import
    private_postgres_fixture``) and ask for ``private_postgres``."""
    with private_postgres_server() as server:
        yield server
