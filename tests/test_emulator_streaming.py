"""InvokeEndpointWithResponseStream on the emulator: real sockets, botocore's signer and decoder.

The streams are read as they arrive, each decoded message timed, and read again through boto3
pointed straight at the emulator: if boto3 iterates them, the emulator speaks the service's wire
format.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp
import pytest
from botocore.exceptions import EventStreamError

from gateway.emulator.app import STATE
from tests.emulator_client import (
    STREAM,
    decode_messages,
    emulator_runtime_client,
    first_message,
    invoke,
    read_stream,
    signed_headers,
    url,
    wait_until,
)

BODY = b"The quick brown fox jumps over the lazy dog."
EVENT_HEADERS = {
    ":event-type": "PayloadPart",
    ":content-type": "application/octet-stream",
    ":message-type": "event",
}


async def test_a_stream_is_payload_parts_that_join_to_the_body(server, client):
    """stream-5 answers five PayloadPart events, in order, that join to the request's body."""
    answer = await read_stream(client, server, "stream-5", BODY)
    assert answer.status == 200
    assert [m.headers for m in answer.messages] == [EVENT_HEADERS] * 5
    assert b"".join(answer.parts()) == BODY
    assert {len(part) for part in answer.parts()} == {len(BODY) // 5, len(BODY) // 5 + 1}


async def test_a_stream_carries_the_operations_headers(server, client):
    """The stream is chunked event-stream with the model's content type, variant and attributes."""
    headers = {
        "Content-Type": "application/json",
        "X-Amzn-SageMaker-Accept": "text/plain",
        "X-Amzn-SageMaker-Custom-Attributes": "trace=7",
        "X-Amzn-SageMaker-Target-Variant": "Blue",
    }
    answer = await read_stream(client, server, "stream", BODY, headers)
    assert answer.headers["Content-Type"] == "application/vnd.amazon.eventstream"
    assert answer.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in answer.headers
    assert answer.headers["X-Amzn-SageMaker-Content-Type"] == "text/plain"
    assert answer.headers["x-Amzn-Invoked-Production-Variant"] == "Blue"
    assert answer.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=7"
    assert answer.headers["x-amzn-RequestId"]
    assert len(answer.parts()) == 4  # the test settings' stream_parts


async def test_without_accept_the_stream_has_the_requests_content_type(server, client):
    """The model's content type falls back to the request's Content-Type."""
    answer = await read_stream(client, server, "stream-2", BODY, {"Content-Type": "text/csv"})
    assert answer.headers["X-Amzn-SageMaker-Content-Type"] == "text/csv"


async def test_parts_arrive_at_the_pace_they_are_produced(server, client):
    """stream-5-300: the first part is read well before the last is produced; none comes early.

    Part i is produced 0.3 s after part i-1, so it cannot be read before 0.3·i s have passed;
    the first is read before half the 1.2 s the whole stream takes: nothing buffers the parts.
    """
    parts, interval_s = 5, 0.3
    answer = await read_stream(client, server, f"stream-{parts}-{int(interval_s * 1000)}", BODY)
    waited = [m.received_at - answer.sent_at for m in answer.messages]
    assert len(waited) == parts
    assert waited[0] < (parts - 1) * interval_s / 2
    for index, seconds in enumerate(waited):
        assert seconds >= index * interval_s * 0.95, f"part {index} came early"


async def test_stream_fail_ends_with_a_model_stream_error(server, client):
    """stream-fail-3: three parts, then a ModelStreamError exception message, then the end."""
    answer = await read_stream(client, server, "stream-fail-3", BODY)
    assert answer.status == 200
    *events, error = answer.messages
    assert [m.headers for m in events] == [EVENT_HEADERS] * 3
    assert error.headers == {
        ":message-type": "exception",
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
    }
    members = json.loads(error.payload)
    assert members["ErrorCode"] == "StreamBroken"
    assert members["Message"]


async def test_stream_internal_failure_ends_with_an_internal_stream_failure(server, client):
    """stream-internal-failure-2: two parts, then an InternalStreamFailure with a Message."""
    answer = await read_stream(client, server, "stream-internal-failure-2", BODY)
    *events, error = answer.messages
    assert len(events) == 2
    assert error.headers[":exception-type"] == "InternalStreamFailure"
    assert set(json.loads(error.payload)) == {"Message"}


async def test_echo_streams_the_body_as_one_part(server, client):
    """A non-streaming model on the stream path: the whole body in one PayloadPart."""
    answer = await read_stream(client, server, "echo", BODY, {"Content-Type": "text/plain"})
    assert answer.parts() == [BODY]
    assert answer.headers["X-Amzn-SageMaker-Content-Type"] == "text/plain"
    assert answer.headers["X-Emulator-Private"] == "do-not-forward"


@pytest.mark.parametrize(
    ("endpoint", "status", "error_type"),
    [
        ("throttle", 400, "ThrottlingException"),
        ("unavailable", 503, "ServiceUnavailable"),
        ("model-error", 424, "ModelError"),
        ("no-such-model", 400, "ValidationError"),
        ("bad--", 400, "ValidationError"),
    ],
)
async def test_errors_before_the_stream_are_plain_json_errors(
    server, client, endpoint, status, error_type
):
    """An error the service finds before streaming is an ordinary JSON error, not a stream."""
    answer = await invoke(client, server, endpoint, BODY, operation=STREAM)
    assert answer.error[:2] == (status, error_type)
    assert answer.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("endpoint", "status", "error_type"),
    [("stream-fail-2", 424, "ModelError"), ("stream-internal-failure", 500, "InternalFailure")],
)
async def test_a_breaking_stream_called_with_invoke_endpoint_is_an_error(
    server, client, endpoint, status, error_type
):
    """InvokeEndpoint buffers the stream, so a stream that breaks becomes the call's error."""
    answer = await invoke(client, server, endpoint, BODY)
    assert answer.error[:2] == (status, error_type)


async def test_a_stream_called_with_invoke_endpoint_answers_the_whole_body(server, client):
    """InvokeEndpoint on stream-3-50 answers once every part is produced: the body, whole."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await invoke(client, server, "stream-3-50", BODY, {"Content-Type": "text/plain"})
    assert loop.time() - started >= 0.1
    assert (answer.status, answer.body) == (200, BODY)
    assert answer.headers["Content-Type"] == "text/plain"


async def test_a_client_leaving_mid_stream_stops_the_stream(server, client):
    """Closing the connection after the first part cancels the emulator's stream."""
    target = url(server, "stream-5-10000", STREAM)
    async with client.post(target, data=BODY, headers=signed_headers(target, BODY)) as response:
        await first_message(response)
        assert server.app[STATE].pending
        response.close()
    await wait_until(lambda: not server.app[STATE].pending, "the stream is cancelled")


async def test_shutting_down_mid_stream_ends_it_with_an_internal_stream_failure(server, client):
    """A stream cut short by the emulator's shutdown ends in-band: InternalStreamFailure."""
    target = url(server, "stream-3-10000", STREAM)
    async with client.post(target, data=BODY, headers=signed_headers(target, BODY)) as response:
        first = await first_message(response)
        server.app[STATE].shutting_down.set()
        [failure] = decode_messages(await response.content.read())
    assert first.headers[":event-type"] == "PayloadPart"
    assert failure.headers[":exception-type"] == "InternalStreamFailure"


async def test_hang_on_the_stream_path_never_answers(server, client):
    """hang answers no stream either; the client's timeout ends it and the call is cancelled."""
    target = url(server, "hang", STREAM)
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(TimeoutError):
        await client.post(target, data=BODY, headers=signed_headers(target, BODY), timeout=timeout)
    await wait_until(lambda: not server.app[STATE].pending, "the hung call is cancelled")


# ---------------------------------------------------------------------------------------------
# boto3, pointed straight at the emulator
# ---------------------------------------------------------------------------------------------


def _timed_events(runtime, endpoint: str, **params):
    sent_at = time.monotonic()
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, Body=BODY, **params
    )
    return sent_at, response, [(time.monotonic(), event) for event in response["Body"]]


async def test_boto3_iterates_the_payload_parts(server):
    """boto3 reads the stream's headers and yields each PayloadPart's Bytes, in order."""
    runtime = emulator_runtime_client(server)
    _, response, events = await asyncio.to_thread(
        _timed_events,
        runtime,
        "stream-4",
        Accept="application/jsonlines",
        CustomAttributes="trace=9",
        TargetVariant="Green",
    )
    assert b"".join(event["PayloadPart"]["Bytes"] for _, event in events) == BODY
    assert len(events) == 4
    assert response["ContentType"] == "application/jsonlines"
    assert response["InvokedProductionVariant"] == "Green"
    assert response["CustomAttributes"] == "trace=9"


async def test_boto3_receives_each_part_as_it_is_produced(server):
    """Through boto3 too, the first of five parts 0.3 s apart comes before half the stream."""
    runtime = emulator_runtime_client(server)
    sent_at, _, events = await asyncio.to_thread(_timed_events, runtime, "stream-5-300")
    assert len(events) == 5
    assert events[0][0] - sent_at < 4 * 0.3 / 2
    assert events[-1][0] - sent_at >= 4 * 0.3 * 0.95


@pytest.mark.parametrize(
    ("endpoint", "code"),
    [("stream-fail-2", "ModelStreamError"), ("stream-internal-failure-2", "InternalStreamFailure")],
)
async def test_boto3_raises_the_streams_error_after_its_parts(server, endpoint, code):
    """boto3 yields the parts sent before the failure, then raises the stream's own error."""
    runtime = emulator_runtime_client(server)

    def read() -> tuple[list[bytes], EventStreamError]:
        response = runtime.invoke_endpoint_with_response_stream(EndpointName=endpoint, Body=BODY)
        parts = []
        with pytest.raises(EventStreamError) as raised:
            for event in response["Body"]:
                parts.append(event["PayloadPart"]["Bytes"])
        return parts, raised.value

    parts, error = await asyncio.to_thread(read)
    assert len(parts) == 2
    assert error.response["Error"]["Code"] == code
    assert error.response["Error"]["Message"]


# ---------------------------------------------------------------------------------------------
# First-part delay, stall, and the ends added for the stream figures
# ---------------------------------------------------------------------------------------------


async def test_first_delays_the_first_part_apart_from_the_pace(server, client):
    """stream-4-50-first-300: no part before 0.3 s, then each part 50 ms after the one before."""
    answer = await read_stream(client, server, "stream-4-50-first-300", BODY)
    waited = [m.received_at - answer.sent_at for m in answer.messages]
    assert len(waited) == 4
    assert waited[0] >= 0.3 * 0.95
    for index, seconds in enumerate(waited):
        assert seconds >= (0.3 + index * 0.05) * 0.95, f"part {index} came early"
    # The whole stream is 0.45 s of waiting: the delay is not paid again between parts.
    assert waited[-1] - waited[0] < 0.3 * 3


async def test_stall_pauses_after_the_named_part_only(server, client):
    """stream-5-10-stall-2-400: parts 1-2 at the pace, 0.4 s before part 3, then the pace."""
    answer = await read_stream(client, server, "stream-5-10-stall-2-400", BODY)
    arrivals = [m.received_at for m in answer.messages]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(gaps) == 4
    assert gaps[1] >= 0.4 * 0.95
    assert max(gaps[0], gaps[2], gaps[3]) < 0.4  # only the named gap stalls


async def test_a_stall_after_the_last_part_holds_the_streams_end(server, client):
    """stream-fail-2-10-stall-2-300: both parts, then 0.3 s, then the ModelStreamError."""
    answer = await read_stream(client, server, "stream-fail-2-10-stall-2-300", BODY)
    *parts, error = answer.messages
    assert len(parts) == 2
    assert error.received_at - parts[-1].received_at >= 0.3 * 0.95
    assert error.headers[":exception-type"] == "ModelStreamError"


async def test_stream_timeout_ends_with_a_model_invocation_time_exceeded(server, client):
    """stream-timeout-2: two parts, then a ModelStreamError with ErrorCode
    ModelInvocationTimeExceeded and a Message."""
    answer = await read_stream(client, server, "stream-timeout-2", BODY)
    *events, error = answer.messages
    assert len(events) == 2
    assert error.headers[":exception-type"] == "ModelStreamError"
    members = json.loads(error.payload)
    assert members["ErrorCode"] == "ModelInvocationTimeExceeded"
    assert members["Message"]


async def test_stream_cut_resets_the_connection_after_its_parts(server, client):
    """stream-cut-3: three whole parts, then the connection breaks before the stream's end."""
    target = url(server, "stream-cut-3", STREAM)
    async with client.post(target, data=BODY, headers=signed_headers(target, BODY)) as response:
        assert response.status == 200
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in response.content.iter_any():
                received += chunk
    assert len(decode_messages(received)) == 3


async def test_stream_timeout_called_with_invoke_endpoint_is_a_model_timeout(server, client):
    """InvokeEndpoint on stream-timeout answers the ModelError of a model timeout (status 0)."""
    answer = await invoke(client, server, "stream-timeout-2", BODY)
    status, error_type, body = answer.error
    assert (status, error_type, body["OriginalStatusCode"]) == (424, "ModelError", 0)
    assert "timed out" in body["Message"]


async def test_stream_cut_called_with_invoke_endpoint_resets_the_connection(server, client):
    """InvokeEndpoint on stream-cut gets no answer: the connection is reset."""
    with pytest.raises(aiohttp.ClientError):
        await invoke(client, server, "stream-cut-2", BODY)


async def test_invoke_endpoint_waits_the_first_part_delay_and_the_stall_too(server, client):
    """InvokeEndpoint on stream-3-10-first-200-stall-1-200 answers after at least 0.42 s."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await invoke(client, server, "stream-3-10-first-200-stall-1-200", BODY)
    assert answer.status == 200 and answer.body == BODY
    assert loop.time() - started >= 0.41 * 0.95


@pytest.mark.parametrize(
    "endpoint",
    ["stream-3-10-stall-0-100", "stream-3-stall-2", "stream-2-first", "stream-first-2-3"],
)
async def test_names_outside_the_stream_grammar_are_not_endpoints(server, client, endpoint):
    """A stall after part 0, a stall or a delay without its length, the pace after the delay:
    no such endpoint (the service's 400)."""
    answer = await invoke(client, server, endpoint, BODY, operation=STREAM)
    status, error_type, body = answer.error
    assert (status, error_type) == (400, "ValidationError")
    assert "not found" in body["message"]
