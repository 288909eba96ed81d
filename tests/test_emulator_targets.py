"""Routing headers on the emulator: TargetModel (multi-model) and inference components.

Also: every successful answer carries only headers the API defines for its operation, plus the
two private ones a gateway must strip.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from tests.emulator_client import (
    ASYNC,
    INVOKE,
    STREAM,
    emulator_runtime_client,
    invoke,
    output_members,
    read_stream,
)

BODY = b'{"inputs": "hello"}'
DIGEST = hashlib.sha256(BODY).hexdigest()
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
COMPONENT = "X-Amzn-SageMaker-Inference-Component"


async def test_multi_model_answers_as_the_model_asked_for(server, client):
    """The model named by TargetModel answers with its name and the digest of what it got."""
    answer = await invoke(client, server, "multi-model", BODY, {TARGET_MODEL: "models/a.tar.gz"})
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"target_model": "models/a.tar.gz", "body_sha256": DIGEST}


async def test_multi_model_without_a_target_model_is_refused(server, client):
    """Without TargetModel a multi-model endpoint has no model to run: a ValidationError."""
    answer = await invoke(client, server, "multi-model", BODY)
    status, error_type, body = answer.error
    assert (status, error_type) == (400, "ValidationError")
    request_id = answer.headers["x-amzn-RequestId"]
    assert body["message"] == f"Request {request_id} is missing a target model header."


async def test_components_answers_as_the_component_asked_for(server, client):
    """The inference component named in the request answers with its name."""
    answer = await invoke(client, server, "components", BODY, {COMPONENT: "llama-ic-1"})
    assert answer.json() == {"inference_component": "llama-ic-1", "body_sha256": DIGEST}


async def test_components_without_a_component_is_the_services_refusal(server, client):
    """Without InferenceComponentName: 400 ValidationError, the service's ErrorCode and Message."""
    status, error_type, body = (await invoke(client, server, "components", BODY)).error
    assert (status, error_type) == (400, "ValidationError")
    assert body["ErrorCode"] == "INFERENCE_COMPONENT_NAME_MISSING"
    assert body["Message"].startswith("Inference Component Name header is required")


async def test_components_stream_their_answer(server, client):
    """Inference components answer the streaming operation too, as one part."""
    answer = await read_stream(client, server, "components", BODY, {COMPONENT: "llama-ic-1"})
    [part] = answer.parts()
    assert json.loads(part)["inference_component"] == "llama-ic-1"
    assert answer.headers["X-Amzn-SageMaker-Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("endpoint", "operation"),
    [("multi-model", STREAM), ("explainer", STREAM), ("multi-model", ASYNC)],
)
async def test_endpoints_refuse_operations_they_do_not_answer(server, client, endpoint, operation):
    """The stream operation has no TargetModel or EnableExplanations; nor do these go async."""
    headers = {TARGET_MODEL: "a", "X-Amzn-SageMaker-InputLocation": "s3://b/k"}
    answer = await invoke(client, server, endpoint, b"", headers, operation=operation)
    assert answer.error[:2] == (400, "ValidationError")
    assert "does not support" in answer.error[2]["message"]


# ---------------------------------------------------------------------------------------------
# The headers of an answer
# ---------------------------------------------------------------------------------------------

OPERATION_NAMES = {
    INVOKE: "InvokeEndpoint",
    STREAM: "InvokeEndpointWithResponseStream",
    ASYNC: "InvokeEndpointAsync",
}
# What any HTTP server adds, the request id every AWS answer has, and the two private headers.
TRANSPORT = {"content-length", "transfer-encoding", "date", "server", "x-amzn-requestid"}
PRIVATE = {"x-emulator-private", "set-cookie"}


def api_response_headers(operation: str) -> set[str]:
    """The lower-case names of the headers an operation's output has in the service model."""
    members = output_members(operation).values()
    return {m.serialization["name"].lower() for m in members if "name" in m.serialization}


@pytest.mark.parametrize(
    ("endpoint", "operation", "headers"),
    [
        ("echo", INVOKE, {"X-Amzn-SageMaker-Session-Id": "NEW_SESSION"}),
        ("multi-model", INVOKE, {TARGET_MODEL: "a"}),
        ("components", INVOKE, {COMPONENT: "c"}),
        ("explainer", INVOKE, {"Content-Type": "text/csv"}),
        ("stream-2", STREAM, {}),
        ("components", STREAM, {COMPONENT: "c"}),
        ("async", ASYNC, {"X-Amzn-SageMaker-InputLocation": "s3://b/k"}),
    ],
)
async def test_answers_carry_only_the_apis_headers_and_the_private_ones(
    server, client, endpoint, operation, headers
):
    """Every header of a success is the operation's, transport's, or one of the private two."""
    body = b"" if operation == ASYNC else b"1,2\n"
    all_headers = {"X-Amzn-SageMaker-Custom-Attributes": "t=1", **headers}
    answer = await invoke(client, server, endpoint, body, all_headers, operation=operation)
    assert answer.status in (200, 202)
    allowed = api_response_headers(OPERATION_NAMES[operation]) | {"content-type"}
    names = {name.lower() for name in answer.headers}
    assert names - allowed - TRANSPORT == PRIVATE


async def test_boto3_sends_target_model_and_inference_component(server):
    """boto3's TargetModel and InferenceComponentName reach the emulator as their headers."""
    runtime = emulator_runtime_client(server)

    def call(endpoint: str, **params: str) -> dict:
        response = runtime.invoke_endpoint(EndpointName=endpoint, Body=BODY, **params)
        return json.loads(response["Body"].read())

    multi = await asyncio.to_thread(call, "multi-model", TargetModel="b.tar.gz")
    component = await asyncio.to_thread(call, "components", InferenceComponentName="ic-2")
    assert multi["target_model"] == "b.tar.gz"
    assert component["inference_component"] == "ic-2"
