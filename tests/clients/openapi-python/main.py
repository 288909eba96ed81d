"""Calls the gateway through the client openapi-generator made from its OpenAPI description
(package ``sagemaker_gateway_client``, on PYTHONPATH) and prints what it saw, one JSON object a
line. It only reports: tests/test_client_openapi.py decides what is right.

Usage: ``main.py <scenario> <gateway-url> <body-file>``; the body file's bytes are sent as they
are. Every other value sent is fixed here.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import sagemaker_gateway_client as smgw
from sagemaker_gateway_client.exceptions import ApiException


def invoke_csv(api: smgw.DefaultApi, body: bytes) -> None:
    """InvokeEndpoint with a CSV body, its media types and three of its headers."""
    response = api.invoke_endpoint_with_http_info(
        "echo",
        body,
        _content_type="text/csv",  # the body's media type: the generated client's own argument
        accept="text/csv",
        x_amzn_sage_maker_custom_attributes="trace=openapi-python",
        x_amzn_sage_maker_target_variant="VariantCsv",
        x_amzn_sage_maker_inference_id="openapi-python-1",
    )
    headers = response.headers or {}
    report(
        "response",
        status=response.status_code,
        content_type=headers.get("Content-Type"),
        invoked_variant=headers.get("x-Amzn-Invoked-Production-Variant"),
        custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes"),
        body_b64=base64.b64encode(bytes(response.data)).decode(),
    )


def invoke_async(api: smgw.DefaultApi, body: bytes) -> None:
    """InvokeEndpointAsync with the body inline, a time to live and an invocation timeout."""
    response = api.invoke_endpoint_async_with_http_info(
        "echo",
        x_amzn_sage_maker_content_type="text/csv",
        x_amzn_sage_maker_inference_id="openapi-python-async-1",
        x_amzn_sage_maker_request_ttl_seconds=600,
        x_amzn_sage_maker_invocation_timeout_seconds=120,
        body=body,
    )
    headers = response.headers or {}
    report(
        "accepted",
        status=response.status_code,
        inference_id=response.data.inference_id,
        output_location=headers.get("X-Amzn-SageMaker-OutputLocation"),
        failure_location=headers.get("X-Amzn-SageMaker-FailureLocation"),
    )


def model_error(api: smgw.DefaultApi, body: bytes) -> None:
    """InvokeEndpoint on a model that fails: the 424's body, as the generated ModelError."""
    try:
        api.invoke_endpoint("model-error", body, _content_type="text/csv")
    except ApiException as exception:
        error = exception.data
        report(
            "error",
            status=exception.status,
            error_type=(exception.headers or {}).get("x-amzn-ErrorType"),
            message=error.message,
            original_status_code=error.original_status_code,
            original_message=error.original_message,
            log_stream_arn=error.log_stream_arn,
        )
    else:
        report("no-error")


def report(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


SCENARIOS = {"invoke-csv": invoke_csv, "async": invoke_async, "model-error": model_error}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in SCENARIOS:
        print(
            f"usage: main.py {{{','.join(SCENARIOS)}}} <gateway-url> <body-file>", file=sys.stderr
        )
        return 2
    scenario, url, body_file = argv
    client = smgw.ApiClient(smgw.Configuration(host=url))
    SCENARIOS[scenario](smgw.DefaultApi(client), Path(body_file).read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
