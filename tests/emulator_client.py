"""Helpers for the ``test_emulator*`` modules: a client that signs as botocore does, and readers.

Those modules import these helpers and load the fixtures of :mod:`tests.emulator_fixtures` with
``pytest_plugins = ["tests.emulator_fixtures"]``. botocore's SigV4Auth is a third-party signer that
shares no code with the emulator's verifier, and botocore's event-stream parser shares none with
the emulator's encoder, so what they accept says something about both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import botocore.session
from aiohttp.test_utils import TestServer
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, EventStreamMessage

from gateway.emulator import EmulatorSettings
from tests.conftest import make_runtime_client
from tests.waiting import poll

ACCESS_KEY = "AKIDEMULATORTEST"
SECRET_KEY = "emulator/test+secret"
TEMPORARY_KEY = "ASIAEMULATORTEST"
TEMPORARY_SECRET = "temporary-secret"
SESSION_TOKEN = "session-token-value"
REGION = "us-east-1"
MODEL_TIMEOUT_S = 0.3
SETTINGS = EmulatorSettings(
    credentials={ACCESS_KEY: SECRET_KEY, TEMPORARY_KEY: (TEMPORARY_SECRET, SESSION_TOKEN)},
    region=REGION,
    model_timeout_s=MODEL_TIMEOUT_S,
    slow_default_ms=50,
    stream_parts=4,
    stream_part_interval_ms=10,
    max_body_bytes=200_000,
)
WAIT_DEADLINE_S = 5.0

INVOKE = "invocations"
STREAM = "invocations-response-stream"
ASYNC = "async-invocations"


def url(server: TestServer, endpoint: str, operation: str = INVOKE) -> str:
    return str(server.make_url(f"/endpoints/{endpoint}/{operation}"))


def signed_headers(
    target: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    token: str | None = None,
) -> dict[str, str]:
    """The headers botocore's SigV4Auth adds to a request (signing name ``sagemaker``)."""
    request = AWSRequest(method=method, url=target, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(access_key, secret_key, token), "sagemaker", REGION).add_auth(request)
    return dict(request.headers.items())


@dataclass(frozen=True)
class Answer:
    """A response, read in full."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    async def read(cls, response: aiohttp.ClientResponse) -> Answer:
        return cls(response.status, response.headers, await response.read())

    @property
    def error(self) -> tuple[int, str, Any]:
        """(status, x-amzn-ErrorType, JSON body) of an error answer."""
        return self.status, self.headers["x-amzn-ErrorType"], json.loads(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


async def post(
    client: aiohttp.ClientSession, target: str, body: bytes = b"{}", **kwargs: Any
) -> Answer:
    """POST ``target`` and read the whole answer."""
    async with client.post(target, data=body, **kwargs) as response:
        return await Answer.read(response)


async def invoke(
    client: aiohttp.ClientSession,
    server: TestServer,
    endpoint: str,
    body: bytes = b"{}",
    headers: Mapping[str, str] | None = None,
    *,
    operation: str = INVOKE,
    **signing: str,
) -> Answer:
    """A botocore-signed call of ``operation`` (InvokeEndpoint by default), read in full."""
    target = url(server, endpoint, operation)
    return await post(
        client, target, body, headers=signed_headers(target, body, headers, **signing)
    )


@dataclass(frozen=True)
class TimedMessage:
    """An event-stream message and when its last byte was read (the loop's clock)."""

    received_at: float
    message: EventStreamMessage

    @property
    def headers(self) -> dict[str, Any]:
        return self.message.headers

    @property
    def payload(self) -> bytes:
        return bytes(self.message.payload)


@dataclass(frozen=True)
class StreamAnswer:
    """A response stream read message by message as it arrived, decoded by botocore."""

    status: int
    headers: Mapping[str, str]
    sent_at: float
    messages: list[TimedMessage]

    def parts(self) -> list[bytes]:
        """The payloads of the PayloadPart events, in order."""
        return [m.payload for m in self.messages if m.headers.get(":event-type") == "PayloadPart"]


async def read_stream(
    client: aiohttp.ClientSession,
    server: TestServer,
    endpoint: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> StreamAnswer:
    """A signed InvokeEndpointWithResponseStream call, each message timed as it is decoded."""
    target = url(server, endpoint, STREAM)
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    request_headers = signed_headers(target, body, headers)
    async with client.post(target, data=body, headers=request_headers) as response:
        buffer = EventStreamBuffer()
        messages: list[TimedMessage] = []
        received = 0
        async for chunk in response.content.iter_any():
            received += len(chunk)
            buffer.add_data(chunk)
            messages.extend(TimedMessage(loop.time(), message) for message in buffer)
        decoded = sum(m.message.prelude.total_length for m in messages)
        assert decoded == received, "the stream ended inside a message"
        return StreamAnswer(response.status, response.headers, sent_at, messages)


def decode_messages(data: bytes) -> list[EventStreamMessage]:
    """The whole event-stream messages in ``data``, decoded by botocore (CRCs checked)."""
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


async def first_message(response: aiohttp.ClientResponse) -> EventStreamMessage:
    """Read ``response`` until its first event-stream message is whole; return that message."""
    buffer = EventStreamBuffer()
    while not (messages := list(buffer)):
        buffer.add_data(await response.content.readany())
    [message] = messages
    return message


def emulator_runtime_client(server: TestServer) -> Any:
    """A boto3 sagemaker-runtime client pointed straight at the emulator, signing with its keys."""
    return make_runtime_client(str(server.make_url("")).rstrip("/"), (ACCESS_KEY, SECRET_KEY))


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true, failing with ``what`` after a deadline."""
    try:
        await poll(condition, deadline_s=WAIT_DEADLINE_S, interval_s=0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


def service_model() -> Any:
    """botocore's sagemaker-runtime service model."""
    return botocore.session.get_session().get_service_model("sagemaker-runtime")


def service_shape(name: str) -> Any:
    """A shape of botocore's sagemaker-runtime service model."""
    return service_model().shape_for(name)


def output_members(operation: str) -> Mapping[str, Any]:
    """The members of an operation's output shape in the service model."""
    return service_model().operation_model(operation).output_shape.members
