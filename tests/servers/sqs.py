"""An SQS server for the tests: moto in server mode, in this process, on 127.0.0.1.

Import the fixture explicitly where it is used::

    from tests.servers.sqs import sqs_server  # noqa: F401

Moto keeps its queues in memory per process, shared by every moto server the process runs: a
server stopped and started again on the same port finds its queues as it left them.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# Dummy credentials, passed explicitly so that nothing depends on the environment.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MotoServer:
    """A moto server that can be stopped (its port then refuses connections) and started again
    on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._server is None, "the server is already running"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() leaves the listening socket open: clients would hang
        # instead of being refused, and the port could not be bound again.
        if server._server is not None:
            server._server.server_close()


@dataclass(frozen=True)
class SQSServer:
    """Where the test SQS server listens, and helpers to use it with a real boto3 client."""

    endpoint_url: str
    region_name: str = REGION

    def client_kwargs(self) -> dict[str, Any]:
        """What ``SQSForwardHandler`` (or ``boto3.client("sqs", ...)``) needs to reach it."""
        return {"endpoint_url": self.endpoint_url, **CREDENTIALS}

    def client(self) -> Any:
        return boto3.session.Session().client(
            "sqs", region_name=self.region_name, **self.client_kwargs()
        )

    def create_queue(self, *, fifo: bool = False, **attributes: str) -> str:
        """A new queue with a unique name; returns its URL."""
        name = f"test-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        if fifo:
            attributes.setdefault("FifoQueue", "true")
        client = self.client()
        try:
            url: str = client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        finally:
            client.close()
        return url

    def receive_all(self, queue_url: str) -> list[dict[str, Any]]:
        """Every message in the queue (with all attributes), deleting them as they are read;
        FIFO messages come group by group in order."""
        client = self.client()
        messages: list[dict[str, Any]] = []
        try:
            while True:
                batch = client.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=10,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                    WaitTimeSeconds=0,
                ).get("Messages", [])
                if not batch:
                    return messages
                messages.extend(batch)
                client.delete_message_batch(
                    QueueUrl=queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(batch)
                    ],
                )
        finally:
            client.close()


@pytest.fixture(scope="session")
def sqs_server() -> Iterator[SQSServer]:
    """A moto SQS server for the whole session; stopped at the end."""
    server = MotoServer()
    server.start()
    try:
        yield SQSServer(server.endpoint_url)
    finally:
        server.stop()
