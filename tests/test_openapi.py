"""The OpenAPI description: valid, made from botocore's model (a changed model changes it),
exact about what the gateway accepts, served on both listeners and printed by the CLI, and
silent about the deployment."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from typing import Any

import aiohttp
import botocore.loaders
import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate

from gateway.config import Config
from gateway.errors import GatewayError, MethodNotAllowed, UnknownOperation, VersionNotSupported
from gateway.openapi import describe, document_bytes
from gateway.operations import SERVICE_NAME, load_operations, load_service_model
from gateway.validation import validate_header
from tests.conftest import ACCESS_KEY, SECRET_KEY, gateway_process_env
from tests.toolchains import require

OPERATIONS = load_operations()
DOCUMENT = describe(OPERATIONS, max_body_bytes=Config().max_body_bytes)
STRING_HEADERS = [
    pytest.param(operation, rule, id=f"{operation.name}:{rule.wire_name}")
    for operation in OPERATIONS.values()
    for rule in operation.request_headers.values()
    if rule.kind == "string"
]
#: Values the patterns are tried on in an ECMA-262 engine and in Python's: each accepted by some.
PATTERN_SAMPLES = [
    "", "a", "A9", "a-b", "a--b", "-a", "a-", "NEW_SESSION", "s3://bucket/key", "https://h",
    "s3:/x", " leading", "trailing ", "x.y", "x.y.z", "name_1.csv", "caf\u00e9", "tab\there",
    "line\nbreak", "id; Expires=2026-01-01T00:00:00Z", "~!*'()", "v" * 64,
]  # fmt: skip


def operation_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The description of the operation with ``operationId`` ``name``."""
    for methods in document["paths"].values():
        for operation in methods.values():
            if operation["operationId"] == name:
                return operation
    raise KeyError(name)


def parameter_schema(document: dict[str, Any], operation: str, name: str) -> dict[str, Any]:
    """The schema of one parameter of an operation, by its (header or path) name."""
    parameters = operation_of(document, operation)["parameters"]
    return next(p["schema"] for p in parameters if p["name"].lower() == name.lower())


def every_pattern(node: object) -> list[str]:
    """Every ``pattern`` anywhere in the document."""
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [pattern for value in node.values() for pattern in every_pattern(value)]
    if isinstance(node, list):
        return [pattern for value in node for pattern in every_pattern(value)]
    return []


def test_the_description_is_a_valid_openapi_3_1_document():
    """openapi-spec-validator finds nothing wrong with the document (OpenAPI 3.1 schema and its
    references)."""
    assert DOCUMENT["openapi"] == "3.1.0"
    validate(DOCUMENT)


def test_every_pattern_is_ecma_262_and_means_what_it_means_in_python():
    """Node.js compiles every pattern of the document in unicode mode (JSON Schema's dialect),
    and on sample values each matches exactly where Python's ``re.search`` does (the judge the
    tests' own schema checks use)."""
    require("node")
    patterns = sorted(set(every_pattern(DOCUMENT)))
    script = (
        "const [patterns, samples] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const matches = p => samples.map(s => new RegExp(p, 'u').test(s));"
        "console.log(JSON.stringify(patterns.map(matches)));"
    )
    result = subprocess.run(
        ["node", "-e", script], input=json.dumps([patterns, PATTERN_SAMPLES]),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    in_ecma = json.loads(result.stdout)
    in_python = [[re.search(p, s) is not None for s in PATTERN_SAMPLES] for p in patterns]
    assert dict(zip(patterns, in_ecma, strict=True)) == dict(zip(patterns, in_python, strict=True))
    assert len(patterns) > 10


@pytest.mark.parametrize(("operation", "rule"), STRING_HEADERS)
@given(data=st.data())
def test_a_header_value_is_described_as_valid_exactly_when_the_gateway_forwards_it(
    operation, rule, data
):
    """For any value (random text, or one the model's own pattern allows), the header's schema in
    the description accepts it exactly when the gateway's validation does: the model's pattern
    and lengths, narrowed to printable ASCII and 1024 characters.

    Line breaks are not drawn: no header value can hold one (the HTTP layer refuses it first),
    and Python's ``$``, which this test's validator uses, matches before a final newline where
    ECMA-262's does not."""
    candidates = [st.text(max_size=70)]
    if rule.pattern is not None:
        candidates.append(st.from_regex(rule.pattern, fullmatch=True))
    value = data.draw(st.one_of(candidates).map(lambda text: re.sub("[\r\n]", "", text)))
    schema = parameter_schema(DOCUMENT, operation.name, rule.wire_name)
    described = jsonschema.Draft202012Validator(schema).is_valid(value)
    try:
        validate_header(rule, value)
        forwarded = True
    except GatewayError:
        forwarded = False
    assert described == forwarded, (value, schema)


def test_integer_headers_carry_the_models_range():
    """InvokeEndpointAsync's RequestTTLSeconds and InvocationTimeoutSeconds are integers with
    the model's minimum and maximum."""
    ttl = parameter_schema(DOCUMENT, "InvokeEndpointAsync", "X-Amzn-SageMaker-RequestTTLSeconds")
    timeout = parameter_schema(
        DOCUMENT, "InvokeEndpointAsync", "X-Amzn-SageMaker-InvocationTimeoutSeconds"
    )
    assert ttl == {"type": "integer", "minimum": 60, "maximum": 21600}
    assert timeout == {"type": "integer", "minimum": 1, "maximum": 3600}


def test_the_body_limit_is_the_gateways_never_above_the_models():
    """The body's maxLength is max_body_bytes, except where the model's own limit is lower
    (InvokeEndpointAsync, 128,000 bytes); both media types say the same."""
    document = describe(OPERATIONS, max_body_bytes=200_000)
    limits = {
        name: {
            media_type: content["schema"]["maxLength"]
            for media_type, content in operation_of(document, name)["requestBody"][
                "content"
            ].items()
        }
        for name in ("InvokeEndpoint", "InvokeEndpointAsync", "InvokeEndpointWithResponseStream")
    }
    assert limits == {
        "InvokeEndpoint": {"application/octet-stream": 200_000, "*/*": 200_000},
        "InvokeEndpointAsync": {"application/octet-stream": 128_000, "*/*": 128_000},
        "InvokeEndpointWithResponseStream": {"application/octet-stream": 200_000, "*/*": 200_000},
    }


def test_every_error_the_gateway_makes_for_an_operation_is_described_with_its_type():
    """Each operation lists every status the gateway's own errors can have (errors.py's tree,
    less routing and HTTP versions), each with a required x-amzn-ErrorType header whose
    description names the error type."""
    found: list[type[GatewayError]] = GatewayError.__subclasses__()
    for cls in found:
        found.extend(cls.__subclasses__())
    routing = (UnknownOperation, MethodNotAllowed, VersionNotSupported)
    errors = [cls for cls in found if not issubclass(cls, routing)]
    assert {cls.status for cls in errors} >= {400, 403, 408, 413, 429, 500, 503, 504}
    for name in ("InvokeEndpoint", "InvokeEndpointAsync", "InvokeEndpointWithResponseStream"):
        responses = operation_of(DOCUMENT, name)["responses"]
        for cls in errors:
            header = responses[str(cls.status)]["headers"]["x-amzn-ErrorType"]
            assert header["required"] is True
            assert cls.error_type in header["description"], (name, cls)


def test_the_models_errors_are_described_with_their_fields():
    """ModelError (424) carries the model's four fields, OriginalStatusCode an integer, and admits
    the service's extra ones; InvokeEndpoint lists the model's 530 InternalDependencyException."""
    model_error = DOCUMENT["components"]["schemas"]["ModelError"]
    assert set(model_error["properties"]) == {
        "Message", "OriginalStatusCode", "OriginalMessage", "LogStreamArn",
    }  # fmt: skip
    assert model_error["properties"]["OriginalStatusCode"] == {"type": "integer"}
    assert model_error["additionalProperties"] is True
    responses = operation_of(DOCUMENT, "InvokeEndpoint")["responses"]
    assert responses["424"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModelError"
    }
    assert (
        "InternalDependencyException"
        in responses["530"]["headers"]["x-amzn-ErrorType"]["description"]
    )


def test_the_success_answers_describe_their_headers_and_media_types():
    """InvokeEndpoint's 200 carries the model's session headers with their patterns; the
    response stream's 200 is application/vnd.amazon.eventstream naming its events; the async
    202 is JSON with the InferenceId, and the two S3 locations as headers."""
    invoke = operation_of(DOCUMENT, "InvokeEndpoint")["responses"]["200"]
    new_session = invoke["headers"]["X-Amzn-SageMaker-New-Session-Id"]["schema"]
    assert new_session["maxLength"] == 256
    assert "Expires=" in new_session["pattern"]
    stream = operation_of(DOCUMENT, "InvokeEndpointWithResponseStream")["responses"]["200"]
    assert list(stream["content"]) == ["application/vnd.amazon.eventstream"]
    assert "PayloadPart" in stream["description"]
    assert "ModelStreamError" in stream["description"]
    accepted = operation_of(DOCUMENT, "InvokeEndpointAsync")["responses"]["202"]
    assert "InferenceId" in accepted["content"]["application/json"]["schema"]["properties"]
    assert {"X-Amzn-SageMaker-OutputLocation", "X-Amzn-SageMaker-FailureLocation"} <= set(
        accepted["headers"]
    )


def test_a_changed_constraint_in_the_model_changes_the_description(tmp_path):
    """A modified copy of botocore's sagemaker-runtime model, found first by a Loader: a shorter
    TargetVariant with another pattern, a longer async time to live and a new header appear in
    the description (and in what the gateway validates), where the installed model's do not."""
    model = botocore.loaders.Loader().load_service_model(SERVICE_NAME, "service-2")
    shapes = model["shapes"]
    shapes["TargetVariantHeader"].update(max=42, pattern="^[a-z]+$")
    shapes["RequestTTLSecondsHeader"]["max"] = 43_200
    shapes["InvokeEndpointInput"]["members"]["Tenant"] = {
        "shape": "TargetVariantHeader", "location": "header",
        "locationName": "X-Amzn-SageMaker-Tenant",
    }  # fmt: skip
    copy = tmp_path / SERVICE_NAME / model["metadata"]["apiVersion"] / "service-2.json"
    copy.parent.mkdir(parents=True)
    copy.write_text(json.dumps(model))
    loader = botocore.loaders.Loader(extra_search_paths=[str(tmp_path)])
    changed_operations = load_operations(load_service_model(loader))
    changed = describe(changed_operations, max_body_bytes=Config().max_body_bytes)

    variant = parameter_schema(changed, "InvokeEndpoint", "X-Amzn-SageMaker-Target-Variant")
    assert (variant["maxLength"], variant["pattern"]) == (42, "^[a-z]+$")
    ttl = parameter_schema(changed, "InvokeEndpointAsync", "X-Amzn-SageMaker-RequestTTLSeconds")
    assert ttl["maximum"] == 43_200
    assert parameter_schema(changed, "InvokeEndpoint", "X-Amzn-SageMaker-Tenant")["maxLength"]
    rule = changed_operations["invocations"].request_headers["x-amzn-sagemaker-target-variant"]
    with pytest.raises(GatewayError):
        validate_header(rule, "VariantA")  # the new pattern, lower case only

    installed = parameter_schema(DOCUMENT, "InvokeEndpoint", "X-Amzn-SageMaker-Target-Variant")
    assert installed["maxLength"] == 63
    with pytest.raises(StopIteration):
        parameter_schema(DOCUMENT, "InvokeEndpoint", "X-Amzn-SageMaker-Tenant")


async def fetch(url: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.read()


async def test_both_listeners_serve_the_description_of_this_gateway(start_gateway, gateway_config):
    """GET /openapi.json answers 200 application/json on the signing listener and on the admin
    listener, the same document, made for this gateway's max_body_bytes."""
    gateway = await start_gateway(admin_port=0, max_body_bytes=1000)
    expected = document_bytes(replace(gateway_config, max_body_bytes=1000))
    admin_url = f"http://127.0.0.1:{gateway.server.admin_port}/openapi.json"
    for url in (str(gateway.make_url("/openapi.json")), admin_url):
        assert await fetch(url) == (200, "application/json", expected)
    limit = json.loads(expected)["paths"]["/endpoints/{EndpointName}/invocations"]["post"]
    assert limit["requestBody"]["content"]["*/*"]["schema"]["maxLength"] == 1000


async def test_the_description_reveals_nothing_of_the_deployment(start_gateway, emulator):
    """Neither the upstream's address, the credentials, the region nor the endpoint allowlist
    appear in the served document."""
    gateway = await start_gateway(allowed_endpoints=("team-secret-*",), region="eu-central-1")
    _, _, body = await fetch(str(gateway.make_url("/openapi.json")))
    text = body.decode()
    for secret in (
        f"127.0.0.1:{emulator.port}", ACCESS_KEY, SECRET_KEY, "team-secret", "eu-central-1",
    ):  # fmt: skip
        assert secret not in text


def test_the_cli_prints_the_description_without_a_region():
    """`sagemaker-gateway openapi --max-body-bytes 1000` prints the document a gateway with that
    option serves, needing no region; a bad option is one line and exit 2."""
    env = gateway_process_env(HOME="/tmp")
    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "openapi", "--max-body-bytes", "1000"],
        capture_output=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    assert printed.stdout == document_bytes(Config(max_body_bytes=1000)) + b"\n"
    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "openapi", "--max-body-bytes", "many"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert (refused.returncode, refused.stderr.count("\n")) == (2, 1)
