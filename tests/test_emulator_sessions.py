"""Stateful sessions on the emulator: opening, joining, closing, and the streaming path's rules."""

from __future__ import annotations

import asyncio
import re

import pytest
from botocore.exceptions import ClientError

from tests.emulator_client import (
    STREAM,
    emulator_runtime_client,
    invoke,
    output_members,
    read_stream,
)

SESSION_ID = "X-Amzn-SageMaker-Session-Id"
CLOSE = b'{"close_session": true}'


async def open_session(client, server) -> str:
    answer = await invoke(client, server, "echo", headers={SESSION_ID: "NEW_SESSION"})
    return answer.headers["X-Amzn-SageMaker-New-Session-Id"].split(";")[0]


async def test_a_close_request_closes_the_session_and_names_it(server, client):
    """The close body on an open session answers Closed-Session-Id: <id>, per the model's rule."""
    session_id = await open_session(client, server)
    closed = await invoke(client, server, "echo", CLOSE, {SESSION_ID: session_id})
    assert closed.status == 200
    assert closed.headers["X-Amzn-SageMaker-Closed-Session-Id"] == session_id
    pattern = output_members("InvokeEndpoint")["ClosedSessionId"].metadata["pattern"]
    assert re.fullmatch(pattern, session_id)


async def test_a_closed_session_cannot_be_used_again(server, client):
    """After the close, the id is no session: a ValidationError."""
    session_id = await open_session(client, server)
    await invoke(client, server, "echo", CLOSE, {SESSION_ID: session_id})
    again = await invoke(client, server, "echo", b"{}", {SESSION_ID: session_id})
    assert again.error[:2] == (400, "ValidationError")


@pytest.mark.parametrize(
    "body", [b'{"close_session": 1}', b'{"close_session": true, "x": 1}', b"close_session"]
)
async def test_only_the_exact_close_body_closes(server, client, body):
    """A body that only resembles the convention is an ordinary call in the session."""
    session_id = await open_session(client, server)
    answer = await invoke(client, server, "echo", body, {SESSION_ID: session_id})
    assert "X-Amzn-SageMaker-Closed-Session-Id" not in answer.headers
    still_open = await invoke(client, server, "echo", b"{}", {SESSION_ID: session_id})
    assert still_open.status == 200


async def test_closing_an_unknown_session_is_refused(server, client):
    """A close request for an id never issued is the usual ValidationError."""
    answer = await invoke(client, server, "echo", CLOSE, {SESSION_ID: "never-issued"})
    assert answer.error[:2] == (400, "ValidationError")


async def test_a_stream_joins_an_open_session(server, client):
    """InvokeEndpointWithResponseStream accepts an issued session id."""
    session_id = await open_session(client, server)
    answer = await read_stream(client, server, "stream-2", b"abcd", {SESSION_ID: session_id})
    assert answer.status == 200
    assert answer.parts() == [b"ab", b"cd"]


async def test_a_stream_cannot_open_a_session(server, client):
    """NEW_SESSION breaks the stream operation's SessionId pattern: a ValidationError."""
    answer = await invoke(
        client, server, "stream", headers={SESSION_ID: "NEW_SESSION"}, operation=STREAM
    )
    status, error_type, body = answer.error
    assert (status, error_type) == (400, "ValidationError")
    assert "Value 'NEW_SESSION' at 'sessionId'" in body["message"]


async def test_a_stream_with_an_unknown_session_is_refused(server, client):
    """An id that is no session is refused before the stream starts."""
    answer = await invoke(client, server, "stream", headers={SESSION_ID: "gone"}, operation=STREAM)
    assert answer.error[:2] == (400, "ValidationError")


async def test_a_close_body_on_a_stream_leaves_the_session_open(server, client):
    """The stream's output has no Closed-Session-Id: the close convention is InvokeEndpoint's."""
    session_id = await open_session(client, server)
    answer = await read_stream(client, server, "echo", CLOSE, {SESSION_ID: session_id})
    assert "X-Amzn-SageMaker-Closed-Session-Id" not in answer.headers
    still_open = await invoke(client, server, "echo", b"{}", {SESSION_ID: session_id})
    assert still_open.status == 200


async def test_boto3_reads_new_and_closed_session_ids(server):
    """boto3 parses NewSessionId and ClosedSessionId, then refuses the closed id."""
    runtime = emulator_runtime_client(server)

    def sessions() -> tuple[str, str, ClientError]:
        opened = runtime.invoke_endpoint(EndpointName="echo", Body=b"{}", SessionId="NEW_SESSION")
        session_id = opened["NewSessionId"].split(";")[0]
        closed = runtime.invoke_endpoint(EndpointName="echo", Body=CLOSE, SessionId=session_id)
        with pytest.raises(ClientError) as refused:
            runtime.invoke_endpoint(EndpointName="echo", Body=b"{}", SessionId=session_id)
        return session_id, closed["ClosedSessionId"], refused.value

    session_id, closed_id, refused = await asyncio.to_thread(sessions)
    assert closed_id == session_id
    assert refused.response["Error"]["Code"] == "ValidationError"
