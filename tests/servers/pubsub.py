"""Pub/Sub servers for the tests: Google's emulator where it is installed, else our fake.

Import the fixtures a test module uses explicitly (the ``*_fixture`` functions register the
fixtures named without the suffix, so that test parameters do not shadow the imports)::

    from tests.servers.pubsub import pubsub_fixture, pubsub_server  # noqa: F401

- ``pubsub_server`` (session): one server for the run. ``OUTBOX_TEST_PUBSUB=fake`` forces the
  fake (``tests/servers/pubsub_fake.py``), ``=emulator`` requires the emulator; unset, the
  emulator is used when installed.
- ``pubsub``: a fresh topic and ordered subscription on that server (unique names), with
  ``PUBSUB_EMULATOR_HOST`` pointing at it for the test, and helpers to pull what arrived.
- ``private_pubsub_server``: a server of the same kind for one test, which it may stop and
  start again on the same port (an outage).

Tests always talk to the server through the real google-cloud-pubsub clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.servers.pubsub_fake import FakePubSubServer

BACKEND_VARIABLE = "OUTBOX_TEST_PUBSUB"  # "emulator", "fake", or unset: emulator if installed
EMULATOR_HOST_VARIABLE = "PUBSUB_EMULATOR_HOST"
LAUNCHER = Path("platform", "pubsub-emulator", "bin", "cloud-pubsub-emulator")
EMULATOR_PACKAGE = "google-cloud-cli-pubsub-emulator"
START_TIMEOUT = 60.0  # seconds for a server to answer on its port
STOP_TIMEOUT = 10.0  # seconds for the emulator to exit after SIGTERM
PULL_TIMEOUT = 30.0  # seconds to wait for the messages a test expects
PROJECT = "outbox-tests"
PR_SET_PDEATHSIG = 1  # prctl option: signal this process when its parent dies
STRICT_MAX_MESSAGE_SIZE = 2000  # bytes per message that ``strict_pubsub_fake`` accepts


class PubSubServer(Protocol):
    kind: str

    @property
    def address(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


# -- finding and running the emulator ----------------------------------------------------------


def _command_output(*command: str) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def emulator_launcher() -> Path | None:
    """The emulator's launcher script, found under the Cloud SDK root that gcloud reports, or
    in the files of its Debian package."""
    if shutil.which("gcloud"):
        root = _command_output("gcloud", "info", "--format=value(installation.sdk_root)").strip()
        if root and (Path(root) / LAUNCHER).is_file():
            return Path(root) / LAUNCHER
    if shutil.which("dpkg"):
        for line in _command_output("dpkg", "-L", EMULATOR_PACKAGE).splitlines():
            if line.endswith(str(LAUNCHER)) and Path(line).is_file():
                return Path(line)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class EmulatorServer:
    """Google's Pub/Sub emulator (Java) as a child process on 127.0.0.1:``port``."""

    kind = "emulator"

    def __init__(self, launcher: Path, port: int) -> None:
        self.launcher = launcher
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="pubsub-emulator-"))
        self._log = self._log_dir / "emulator.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self._log.open("ab") as log:
            # The launcher execs java, so the child is the emulator itself.
            self._process = subprocess.Popen(
                [str(self.launcher), "--host=127.0.0.1", f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_tail = self._log.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"the Pub/Sub emulator did not answer on port {self.port}:\n{log_tail}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop, and remove the log."""
        self.stop()
        shutil.rmtree(self._log_dir, ignore_errors=True)


def _die_with_parent() -> None:
    """In the emulator's process before exec: get SIGTERM when the process that started it
    dies, so that a killed test run leaves no emulator behind (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class FakeServer:
    """The test tree's own gRPC fake, in this process."""

    kind = "fake"

    def __init__(self, port: int, **options: Any) -> None:
        self._fake = FakePubSubServer("127.0.0.1", port, **options)

    @property
    def address(self) -> str:
        return self._fake.address

    def start(self) -> None:
        self._fake.start()

    def stop(self) -> None:
        self._fake.stop()

    def close(self) -> None:
        self.stop()


def _backend() -> tuple[str, Path | None]:
    choice = os.environ.get(BACKEND_VARIABLE, "").strip().lower()
    if choice not in ("", "emulator", "fake"):
        pytest.fail(f"{BACKEND_VARIABLE} must be 'emulator' or 'fake', got {choice!r}")
    if choice == "fake":
        return "fake", None
    launcher = emulator_launcher()
    if launcher is None and choice == "emulator":
        pytest.fail(
            f"{BACKEND_VARIABLE}=emulator but the Pub/Sub emulator is not installed "
            f"(apt-get install {EMULATOR_PACKAGE})",
            pytrace=False,
        )
    return ("emulator", launcher) if launcher else ("fake", None)


_backend_choice: tuple[str, Path | None] | None = None


def new_server(port: int | None = None) -> PubSubServer:
    """A server (not started) of the kind this run uses."""
    global _backend_choice
    if _backend_choice is None:
        _backend_choice = _backend()
    kind, launcher = _backend_choice
    port = free_port() if port is None else port
    if kind == "emulator" and launcher is not None:
        return EmulatorServer(launcher, port)
    return FakeServer(port)


@contextlib.contextmanager
def running(server: PubSubServer) -> Iterator[PubSubServer]:
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pubsub_server() -> Iterator[PubSubServer]:
    """The Pub/Sub server of this test run (emulator, or fake; see the module docstring)."""
    with running(new_server()) as server:
        yield server


@pytest.fixture(name="private_pubsub_server")
def private_pubsub_server_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[PubSubServer]:
    """A server for one test, which may stop and restart it on the same port; the test's
    ``PUBSUB_EMULATOR_HOST`` points at it."""
    with running(new_server()) as server:
        monkeypatch.setenv(EMULATOR_HOST_VARIABLE, server.address)
        yield server


@pytest.fixture(name="strict_pubsub_fake")
def strict_pubsub_fake_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The fake with a small message size limit, whatever the run's backend: a server that
    rejects one message of a Publish request the client sends. The test's
    ``PUBSUB_EMULATOR_HOST`` points at it."""
    server = FakeServer(free_port(), max_message_size=STRICT_MAX_MESSAGE_SIZE)
    with running(server):
        monkeypatch.setenv(EMULATOR_HOST_VARIABLE, server.address)
        yield server


# -- topics, subscriptions and what arrived ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Received:
    """A message as a subscriber got it."""

    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    message_id: str


@dataclasses.dataclass
class PubSubTopic:
    """A topic and an ordered subscription with unique names, and helpers for tests (run the
    blocking client calls in threads, off the event loop)."""

    project: str = PROJECT
    topic: str = dataclasses.field(default_factory=lambda: f"topic-{uuid.uuid4().hex[:12]}")
    subscription: str = dataclasses.field(default_factory=lambda: f"sub-{uuid.uuid4().hex[:12]}")

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}"

    def create_now(self) -> None:
        """Create the topic and its subscription (either may already exist)."""
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        try:
            with contextlib.suppress(exceptions.AlreadyExists):
                publisher.create_topic(name=self.topic_path)
            with contextlib.suppress(exceptions.AlreadyExists):
                subscriber.create_subscription(
                    request={
                        "name": self.subscription_path,
                        "topic": self.topic_path,
                        "enable_message_ordering": True,
                    }
                )
        finally:
            publisher.transport.close()
            subscriber.close()

    async def create(self) -> None:
        await asyncio.to_thread(self.create_now)

    async def pull(self, count: int, timeout: float = PULL_TIMEOUT) -> list[Received]:
        """Pull and acknowledge until ``count`` messages arrived (fails the test after
        ``timeout`` seconds with fewer), in the order the subscription delivered them."""
        return await asyncio.to_thread(self._pull, count, timeout)

    async def pull_more(self) -> list[Received]:
        """Whatever else is waiting (a short pull; for checking that nothing else came)."""
        return await asyncio.to_thread(self._pull_once, 1.0)

    def _pull(self, count: int, timeout: float) -> list[Received]:
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        while len(received) < count:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"only {len(received)} of {count} messages arrived in {self.subscription} "
                    f"within {timeout} s: {received}"
                )
            received.extend(self._pull_once(2.0))
        return received

    def _pull_once(self, timeout: float) -> list[Received]:
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        try:
            try:
                response = subscriber.pull(
                    subscription=self.subscription_path,
                    max_messages=1000,
                    timeout=timeout,
                    retry=None,
                )
            except exceptions.DeadlineExceeded:
                return []
            messages = response.received_messages
            if messages:
                subscriber.acknowledge(
                    subscription=self.subscription_path, ack_ids=[m.ack_id for m in messages]
                )
            return [
                Received(
                    data=m.message.data,
                    attributes=dict(m.message.attributes),
                    ordering_key=m.message.ordering_key,
                    message_id=m.message.message_id,
                )
                for m in messages
            ]
        finally:
            subscriber.close()


@pytest.fixture(name="pubsub")
def pubsub_fixture(pubsub_server: PubSubServer, monkeypatch: pytest.MonkeyPatch) -> PubSubTopic:
    """A new topic with an ordered subscription on the run's server; ``PUBSUB_EMULATOR_HOST``
    points at the server for this test."""
    monkeypatch.setenv(EMULATOR_HOST_VARIABLE, pubsub_server.address)
    topic = PubSubTopic()
    topic.create_now()
    return topic
