"""InvokeEndpointAsync on the emulator: the service's checks, its 202 and its locations."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from gateway.emulator.async_inference import (
    ASYNC_MAX_BODY_BYTES,
    INTEGER_RULES,
    TEXT_RULES,
)
from tests.emulator_client import (
    ASYNC,
    INVOKE,
    STREAM,
    emulator_runtime_client,
    invoke,
    service_shape,
)

INPUT = {"X-Amzn-SageMaker-InputLocation": "s3://inputs/request-1.json"}
BASE = "s3://sagemaker-us-east-1-123456789012/async-inference"


async def call_async(client, server, headers=None, body=b"", endpoint="async"):
    """A signed InvokeEndpointAsync call of ``endpoint``."""
    return await invoke(client, server, endpoint, body, headers, operation=ASYNC)


async def test_async_is_accepted_with_its_inference_id_and_locations(server, client):
    """202, the request's InferenceId in the JSON body, and where output and failure will be."""
    headers = {**INPUT, "X-Amzn-SageMaker-Inference-Id": "job-42"}
    answer = await call_async(client, server, headers)
    assert answer.status == 202
    assert answer.json() == {"InferenceId": "job-42"}
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["X-Amzn-SageMaker-OutputLocation"] == f"{BASE}/async/output/job-42.out"
    assert answer.headers["X-Amzn-SageMaker-FailureLocation"] == (
        f"{BASE}/async/failure/job-42-error.out"
    )


async def test_without_an_inference_id_one_is_generated_and_used_in_the_locations(server, client):
    """The service makes up an id when none is given; the locations are named after it."""
    answer = await call_async(client, server, INPUT, endpoint="async-fast")
    inference_id = answer.json()["InferenceId"]
    assert uuid.UUID(inference_id)
    output = answer.headers["X-Amzn-SageMaker-OutputLocation"]
    assert output == f"{BASE}/async-fast/output/{inference_id}.out"


async def test_the_output_path_extension_and_filename_shape_the_output_location(server, client):
    """S3OutputPathExtension is appended to the output path; Filename names the output object."""
    headers = {
        **INPUT,
        "X-Amzn-SageMaker-Inference-Id": "job-7",
        "X-Amzn-SageMaker-S3OutputPathExtension": "tenant-a/2026",
        "X-Amzn-SageMaker-Filename": "result.json",
    }
    answer = await call_async(client, server, headers)
    assert answer.headers["X-Amzn-SageMaker-OutputLocation"] == (
        f"{BASE}/async/output/tenant-a/2026/result.json"
    )
    assert answer.headers["X-Amzn-SageMaker-FailureLocation"] == (
        f"{BASE}/async/failure/job-7-error.out"
    )


async def test_an_inline_body_replaces_the_input_location(server, client):
    """The model allows the payload inline (Body) instead of an InputLocation."""
    answer = await call_async(client, server, body=b'{"inputs": "hi"}')
    assert answer.status == 202


async def test_echo_accepts_async_calls(server, client):
    """echo answers every operation, async included."""
    answer = await call_async(client, server, INPUT, endpoint="echo")
    assert answer.status == 202


def message_of(answer):
    status, error_type, body = answer.error
    assert (status, error_type) == (400, "ValidationError")
    return body["message"]


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("RequestTTLSeconds", "30", "greater than or equal to 60"),
        ("RequestTTLSeconds", "21601", "less than or equal to 21600"),
        ("RequestTTLSeconds", "6_0", "Member must be an integer"),
        ("InvocationTimeoutSeconds", "0", "greater than or equal to 1"),
        ("InvocationTimeoutSeconds", "4000", "less than or equal to 3600"),
        ("InputLocation", "ftp://bucket/key", "regular expression pattern"),
        ("InputLocation", "s3://", "regular expression pattern"),
        ("InputLocation", "s3://b/" + "k" * 1020, "length less than or equal to 1024"),
        ("Inference-Id", "naïve", "regular expression pattern"),
        ("Inference-Id", "i" * 65, "length less than or equal to 64"),
        ("S3OutputPathExtension", "s3:/bucket", "regular expression pattern"),
        ("Filename", "a.b.c", "regular expression pattern"),
        ("Filename", "f" * 33, "length less than or equal to 32"),
    ],
)
async def test_values_outside_the_models_rules_are_refused(server, client, header, value, expected):
    """Each async header outside the service model's rules is a ValidationError naming it."""
    answer = await call_async(client, server, {**INPUT, f"X-Amzn-SageMaker-{header}": value})
    message = message_of(answer)
    member = header.replace("-", "")
    assert f"Value '{value}' at '{member[0].lower()}{member[1:]}'" in message
    assert expected in message


@pytest.mark.parametrize("ttl", ["60", "21600"])
async def test_the_ttl_bounds_themselves_are_accepted(server, client, ttl):
    """60 and 21600 are inside RequestTTLSeconds' range."""
    answer = await call_async(client, server, {**INPUT, "X-Amzn-SageMaker-RequestTTLSeconds": ttl})
    assert answer.status == 202


async def test_neither_input_location_nor_body_is_refused(server, client):
    """Without an InputLocation and without a body there is nothing to infer on."""
    assert "exactly one" in message_of(await call_async(client, server))


async def test_both_input_location_and_body_are_refused(server, client):
    """InputLocation and Body are mutually exclusive."""
    assert "exactly one" in message_of(await call_async(client, server, INPUT, b"{}"))


async def test_an_inline_body_over_128000_bytes_is_413(server, client):
    """The model's limit for an inline async body is 128,000 bytes."""
    answer = await call_async(client, server, body=b"x" * (ASYNC_MAX_BODY_BYTES + 1))
    assert answer.error[:2] == (413, "ValidationError")


async def test_the_request_is_checked_before_the_endpoint_is_looked_up(server, client):
    """A bad header is refused as such even on an endpoint that does not exist."""
    headers = {**INPUT, "X-Amzn-SageMaker-RequestTTLSeconds": "30"}
    answer = await call_async(client, server, headers, endpoint="no-such-model")
    assert "requestTTLSeconds" in message_of(answer)


@pytest.mark.parametrize(
    ("endpoint", "operation", "refused"),
    [
        ("variants", ASYNC, "InvokeEndpointAsync"),
        ("async", INVOKE, "InvokeEndpoint"),
        ("async", STREAM, "InvokeEndpointWithResponseStream"),
    ],
)
async def test_an_endpoint_refuses_the_operations_it_does_not_answer(
    server, client, endpoint, operation, refused
):
    """A real-time endpoint refuses async calls; the async endpoint refuses real-time ones."""
    answer = await invoke(client, server, endpoint, b"", INPUT, operation=operation)
    assert message_of(answer).endswith(f"does not support {refused}.")


@pytest.mark.parametrize(
    ("endpoint", "status", "error_type"),
    [("throttle", 400, "ThrottlingException"), ("unavailable", 503, "ServiceUnavailable")],
)
async def test_service_failures_answer_async_calls_too(
    server, client, endpoint, status, error_type
):
    """throttle and unavailable fail async calls as they fail real-time ones."""
    answer = await call_async(client, server, INPUT, endpoint=endpoint)
    assert answer.error[:2] == (status, error_type)


def test_the_rules_the_emulator_copies_are_the_models():
    """Lengths, patterns, ranges and the body limit equal botocore's sagemaker-runtime model."""
    members = service_shape("InvokeEndpointAsyncInput").members
    for rule in TEXT_RULES:
        metadata = members[rule.member].metadata
        assert (metadata["min"], metadata["max"]) == (rule.min_length, rule.max_length)
        assert metadata["pattern"] == rule.pattern_text
        assert members[rule.member].serialization["name"] == rule.header
    for integer in INTEGER_RULES:
        metadata = members[integer.member].metadata
        assert (metadata["min"], metadata["max"]) == (integer.minimum, integer.maximum)
        assert members[integer.member].serialization["name"] == integer.header
    assert members["Body"].metadata["max"] == ASYNC_MAX_BODY_BYTES


# ---------------------------------------------------------------------------------------------
# boto3, pointed straight at the emulator
# ---------------------------------------------------------------------------------------------


async def test_boto3_invoke_endpoint_async_gets_its_id_and_locations(server):
    """boto3 parses the 202: InferenceId from the body, both locations from the headers."""
    runtime = emulator_runtime_client(server)
    result = await asyncio.to_thread(
        runtime.invoke_endpoint_async,
        EndpointName="async",
        InputLocation="s3://inputs/request-1.json",
        InferenceId="boto-1",
        RequestTTLSeconds=600,
        InvocationTimeoutSeconds=900,
        ContentType="application/json",
        Accept="application/json",
    )
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert result["InferenceId"] == "boto-1"
    assert result["OutputLocation"] == f"{BASE}/async/output/boto-1.out"
    assert result["FailureLocation"] == f"{BASE}/async/failure/boto-1-error.out"


async def test_boto3_sends_an_inline_body(server):
    """boto3's Body parameter (this botocore's model has it) is accepted without InputLocation."""
    runtime = emulator_runtime_client(server)
    result = await asyncio.to_thread(
        runtime.invoke_endpoint_async, EndpointName="async", Body=b'{"inputs": "hi"}'
    )
    assert re.fullmatch(r"[0-9a-f-]{36}", result["InferenceId"])
