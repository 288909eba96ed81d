"""The AWS SDK for Go v2 (service/sagemakerruntime) calling the gateway, unsigned, as a Go
service would: InvokeEndpoint, InvokeEndpointAsync, response streams and the typed errors.

The program in ``tests/clients/go-sdk`` is built once a session (outside the repository) and
run once a test; it prints what the SDK gave it, one JSON object a line, and this module asserts
on those lines and on the emulator's journal.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from tests.toolchains import CLIENTS_DIR, build, require, run_client

SOURCE = CLIENTS_DIR / "go-sdk"
BUILD_TIMEOUT_S = 600.0

#: What the program's invoke scenario sends (main.go's invokeBody): every byte value, then text.
INVOKE_BODY = bytes(range(256)) + b"go-sdk says hello\r\n\x00end"
#: The headers the invoke scenario sets, as they must reach the emulator: by wire name.
INVOKE_HEADERS = {
    "Content-Type": "application/x-go-sdk",
    "Accept": "application/x-go-sdk-answer",
    "X-Amzn-SageMaker-Custom-Attributes": "trace=go-1;tenant=a b",
    "X-Amzn-SageMaker-Target-Model": "models/go-model.tar.gz",
    "X-Amzn-SageMaker-Target-Variant": "VariantGo",
    "X-Amzn-SageMaker-Target-Container-Hostname": "container-go",
    "X-Amzn-SageMaker-Inference-Id": "go-inference-1",
    "X-Amzn-SageMaker-Enable-Explanations": "`true`",
    "X-Amzn-SageMaker-Inference-Component": "ic-go-1",
}
#: What the gateway itself adds to the API's headers when it forwards a request.
SIGNING_AND_FRAMING = {"host", "content-length", "x-amz-date", "authorization"}
ASYNC_HEADERS = {
    "X-Amzn-SageMaker-InputLocation": "s3://bucket/go-sdk/input.json",
    "X-Amzn-SageMaker-Content-Type": "application/json",
    "X-Amzn-SageMaker-Accept": "application/json",
    "X-Amzn-SageMaker-Custom-Attributes": "trace=go-async",
    "X-Amzn-SageMaker-Inference-Id": "go-async-1",
    "X-Amzn-SageMaker-RequestTTLSeconds": "600",
    "X-Amzn-SageMaker-InvocationTimeoutSeconds": "900",
}
#: main.go's streamBody, and the endpoint the stream scenario calls: 5 parts, 300 ms apart.
STREAM_BODY = b"0123456789abcdefghijklmnopqrstuvwxyz"
STREAM_PARTS, STREAM_INTERVAL_MS = 5, 300


@pytest.fixture(scope="session")
def go_sdk_client(tmp_path_factory) -> Path:
    """The Go program, built once a session into a pytest tmp dir with the pinned go.sum."""
    require("go")
    out = tmp_path_factory.mktemp("go-sdk") / "go-sdk-client"
    build(
        ["go", "build", "-o", str(out), "."],
        cwd=SOURCE,
        timeout_s=BUILD_TIMEOUT_S,
        env={"GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"},
    )
    return out


async def run_scenario(program: Path, scenario: str, gateway_url: str) -> list[dict]:
    return await run_client([str(program), scenario, gateway_url])


def occurrences(entry, name: str) -> list[str]:
    """Every value a journal entry's header ``name`` arrived with (any case), in order."""
    return [value for header, value in entry.headers if header.lower() == name.lower()]


def assert_all_signed(journal, count: int) -> None:
    """Exactly ``count`` requests reached the emulator, each with a valid signature."""
    assert len(journal) == count
    assert all(entry.signature_ok for entry in journal), [e.signature_error for e in journal]


async def test_invoke_endpoint_echoes_body_and_forwards_every_header(
    go_sdk_client, gateway_url, journal
):
    """InvokeEndpoint on echo: the body comes back byte for byte with its content type, the
    requested variant and the custom attributes; upstream got each API header exactly once,
    with the value the SDK sent, and nothing else but the signing and framing headers (the SDK's
    User-Agent, amz-sdk-* and Go's Accept-Encoding stay behind)."""
    [answer] = await run_scenario(go_sdk_client, "invoke", gateway_url)
    assert answer.get("error") is None, answer
    assert answer["status"] == 200
    assert base64.b64decode(answer["body"]) == INVOKE_BODY
    assert answer["content_type"] == "application/x-go-sdk"
    assert answer["invoked_production_variant"] == "VariantGo"
    assert answer["custom_attributes"] == "trace=go-1;tenant=a b"
    assert answer["request_id"]

    assert_all_signed(journal, 1)
    [entry] = journal
    assert entry.raw_path == "/endpoints/echo/invocations"
    assert entry.body_sha256 == hashlib.sha256(INVOKE_BODY).hexdigest()
    for name, value in INVOKE_HEADERS.items():
        assert occurrences(entry, name) == [value], name
    forwarded = sorted(name.lower() for name, _ in entry.headers)
    assert forwarded == sorted({name.lower() for name in INVOKE_HEADERS} | SIGNING_AND_FRAMING)


async def test_invoke_endpoint_async_202_reaches_the_sdk_as_success(
    go_sdk_client, gateway_url, journal
):
    """InvokeEndpointAsync: the 202 is a success to the SDK, with the InferenceId sent and the
    OutputLocation/FailureLocation the service chose; the async headers arrive unchanged."""
    [answer] = await run_scenario(go_sdk_client, "async", gateway_url)
    assert answer.get("error") is None, answer
    assert answer["status"] == 202
    assert answer["inference_id"] == "go-async-1"
    assert answer["output_location"].startswith("s3://")
    assert answer["output_location"].endswith("/async/output/go-async-1.out")
    assert answer["failure_location"].startswith("s3://")
    assert answer["failure_location"].endswith("/async/failure/go-async-1-error.out")

    assert_all_signed(journal, 1)
    [entry] = journal
    assert entry.raw_path == "/endpoints/async/async-invocations"
    for name, value in ASYNC_HEADERS.items():
        assert occurrences(entry, name) == [value], name
    assert occurrences(entry, "Content-Type") == []  # the async form replaces the plain one


async def test_response_stream_parts_arrive_in_order_as_they_are_produced(
    go_sdk_client, gateway_url, journal
):
    """InvokeEndpointWithResponseStream on stream-5-300: the SDK's event-stream reader yields
    five PayloadParts in order that join to the body, spread over the time the model took to
    produce them (not delivered together at the end), and ends without an error."""
    lines = await run_scenario(go_sdk_client, "stream", gateway_url)
    headers, *parts, end = lines
    assert headers.get("error") is None, headers
    assert headers["event"] == "headers"
    assert headers["status"] == 200
    assert headers["content_type"] == "text/x-parts"  # the model's: the request's Accept
    assert headers["invoked_production_variant"] == "AllTraffic"
    assert headers["custom_attributes"] == "trace=go-stream"

    assert [part["event"] for part in parts] == ["part"] * STREAM_PARTS, lines
    assert [part["index"] for part in parts] == list(range(STREAM_PARTS))
    assert "".join(part["bytes"] for part in parts).encode() == STREAM_BODY
    arrivals = [part["at_ms"] for part in parts]
    assert arrivals == sorted(arrivals)
    assert arrivals[-1] - arrivals[0] >= (STREAM_PARTS - 1) * STREAM_INTERVAL_MS / 2, arrivals
    assert end == {"event": "end", "at_ms": end["at_ms"], "parts": STREAM_PARTS}

    assert_all_signed(journal, 1)
    [entry] = journal
    assert entry.raw_path == "/endpoints/stream-5-300/invocations-response-stream"
    assert occurrences(entry, "X-Amzn-SageMaker-Accept") == ["text/x-parts"]
    assert occurrences(entry, "Content-Type") == ["text/plain"]


async def test_a_stream_that_breaks_ends_with_the_typed_model_stream_error(
    go_sdk_client, gateway_url, journal
):
    """stream-fail-2: both parts arrive, then the reader's Err() is a *types.ModelStreamError
    carrying the service's ErrorCode (StreamBroken) and message."""
    lines = await run_scenario(go_sdk_client, "stream-fail", gateway_url)
    headers, *parts, end = lines
    assert headers.get("error") is None, headers
    assert headers["status"] == 200
    assert "".join(part["bytes"] for part in parts).encode() == STREAM_BODY, lines
    assert len(parts) == 2
    assert end["event"] == "end"
    assert end["error_type"] == "ModelStreamError", end
    assert end["error_code"] == "StreamBroken"
    assert "reset before it ended" in end["message"]

    assert_all_signed(journal, 1)


async def test_model_error_is_the_typed_model_error_with_its_fields(
    go_sdk_client, gateway_url, journal
):
    """model-error: a 424 that errors.As finds as *types.ModelError, with OriginalStatusCode,
    OriginalMessage and LogStreamArn as the service sent them."""
    [answer] = await run_scenario(go_sdk_client, "model-error", gateway_url)
    assert answer["error_type"] == "ModelError", answer
    assert answer["status"] == 424
    assert answer["original_status_code"] == 500
    assert answer["original_message"] == "Emulated model failure: the container answered HTTP 500."
    assert answer["log_stream_arn"].startswith("arn:aws:logs:us-east-1:")
    assert "model-error" in answer["log_stream_arn"]
    assert answer["request_id"]

    assert_all_signed(journal, 1)


async def test_values_outside_the_model_are_a_typed_validation_error_before_forwarding(
    go_sdk_client, gateway_url, journal
):
    """A 64-character TargetVariant and an endpoint name outside the pattern (the SDK does not
    check either) are *types.ValidationError from the gateway naming the field, and never reach
    the emulator; a 63-character TargetVariant, the longest allowed, goes through."""
    too_long, bad_name, longest = await run_scenario(go_sdk_client, "validation", gateway_url)

    assert too_long["case"] == "target-variant-64"
    assert too_long["error_type"] == "ValidationError", too_long
    assert too_long["status"] == 400
    assert "X-Amzn-SageMaker-Target-Variant" in too_long["message"]
    assert "63" in too_long["message"]

    assert bad_name["case"] == "endpoint-name-invalid"
    assert bad_name["error_type"] == "ValidationError", bad_name
    assert bad_name["status"] == 400
    assert "endpointName" in bad_name["message"]

    assert longest["case"] == "target-variant-63"
    assert longest.get("error") is None, longest
    assert longest["invoked_production_variant"] == "v" * 63

    # Only the valid call reached the emulator.
    assert_all_signed(journal, 1)
    assert occurrences(journal[0], "X-Amzn-SageMaker-Target-Variant") == ["v" * 63]


async def test_service_unavailable_is_the_typed_error_sent_once(
    go_sdk_client, gateway_url, journal
):
    """unavailable: the emulator's 503 reaches the SDK as *types.ServiceUnavailable; with the
    SDK's retries off, the gateway forwarded it exactly once."""
    [answer] = await run_scenario(go_sdk_client, "unavailable", gateway_url)
    assert answer["error_type"] == "ServiceUnavailable", answer
    assert answer["status"] == 503
    assert answer["message"] == "The service is unavailable. Try your call again."

    assert_all_signed(journal, 1)
