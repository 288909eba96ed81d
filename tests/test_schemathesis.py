"""schemathesis against the running gateway, the emulator behind it, judged by the gateway's own
OpenAPI description: no 5xx but those the emulated SageMaker answers (no 500 of the gateway's
own), every answer as the description says (status, headers, body), invalid requests refused,
and nothing the description does not allow ever forwarded.

The run here is short and deterministic (a few examples an operation, seconds). Set
``GATEWAY_FUZZ_SECONDS`` for a long random one (``make fuzz``): many examples an operation, for
that many seconds, a new seed each time (printed when something fails).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import schemathesis

from gateway.config import Config
from gateway.openapi import describe
from gateway.operations import load_operations

FUZZ_SECONDS = int(os.environ.get("GATEWAY_FUZZ_SECONDS", "0"))
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
#: The checks it runs, and its hooks (tests/schemathesis_hooks.py).
CONFIG = Path(__file__).with_name("schemathesis.toml")
#: Where ``tests.schemathesis_hooks`` is imported from, whatever the run's directory.
REPOSITORY = Path(__file__).resolve().parent.parent
#: What the gateway adds to a forwarded request besides the operation's own headers.
GATEWAY_HEADERS = {"host", "content-length", "x-amz-date", "authorization"}
DOCUMENT = describe(load_operations(), max_body_bytes=Config().max_body_bytes)
INVOKE_PATH = "/endpoints/{EndpointName}/invocations"

pytestmark = pytest.mark.timeout(max(120, FUZZ_SECONDS + 120))


def schemathesis_arguments(gateway_url: str) -> list[str]:
    """The command line: every check (as CONFIG sets them), bounded (see the module docstring)."""
    if FUZZ_SECONDS:
        bounds = ["--max-examples", "10000", "--max-time", str(FUZZ_SECONDS),
                  "--generation-database", "none"]  # fmt: skip
    else:
        bounds = ["--max-examples", "8", "--generation-deterministic"]
    return [
        SCHEMATHESIS, "--config-file", str(CONFIG), "run", f"{gateway_url}/openapi.json",
        "--url", gateway_url, *bounds, "--request-timeout", "10", "--no-color",
    ]  # fmt: skip


async def run_schemathesis(arguments: list[str], cwd: Path) -> tuple[int, str]:
    """Run the schemathesis CLI while the test's event loop serves the gateway; its exit status
    and its report."""
    process = await asyncio.create_subprocess_exec(
        *arguments, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(FUZZ_SECONDS + 100):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace")


def operation_for(raw_path: str) -> tuple[dict[str, Any], str]:
    """The description's operation for a forwarded path, and the endpoint name in it."""
    _, endpoints, name, suffix = raw_path.split("?")[0].split("/")
    return DOCUMENT["paths"][f"/{endpoints}/{{EndpointName}}/{suffix}"]["post"], name


def breaches(entry: Any) -> list[str]:
    """What in a forwarded request the description does not allow (empty when nothing)."""
    operation, name = operation_for(entry.raw_path)
    parameters = {parameter["name"].lower(): parameter for parameter in operation["parameters"]}
    found = []
    if "?" in entry.raw_path:
        found.append(f"a query: {entry.raw_path}")
    for sent_name, value in [("EndpointName", name), *entry.headers]:
        key = sent_name.lower()
        if key in GATEWAY_HEADERS:
            continue
        if key not in parameters:
            found.append(f"{sent_name} is not a parameter of {operation['operationId']}")
            continue
        schema = parameters[key]["schema"]
        instance: object = value
        if schema["type"] == "integer":
            instance = int(value) if re.fullmatch(r"-?[0-9]+", value) else value
        errors = [
            error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(instance)
        ]
        found.extend(f"{sent_name}: {message}" for message in errors)
    limit = operation["requestBody"]["content"]["*/*"]["schema"]["maxLength"]
    if entry.body_length > limit:
        found.append(f"a body of {entry.body_length} bytes, over {limit}")
    return found


async def test_schemathesis_finds_nothing_and_nothing_invalid_is_forwarded(
    gateway, journal, tmp_path
):
    """schemathesis's checks (no 5xx of the gateway's own; status, content type, headers and
    body as described; invalid requests refused; other methods 405) pass against the live
    gateway; each operation was forwarded, and only ever as the description allows."""
    code, output = await run_schemathesis(
        schemathesis_arguments(str(gateway.make_url("")).rstrip("/")), tmp_path
    )
    assert code == 0, output
    forwarded = {operation_for(entry.raw_path)[0]["operationId"] for entry in journal}
    assert forwarded == {
        "InvokeEndpoint",
        "InvokeEndpointAsync",
        "InvokeEndpointWithResponseStream",
    }
    invalid = [(entry.raw_path, found) for entry in journal if (found := breaches(entry))]
    assert invalid == []


def test_the_forwarded_request_judge_refuses_what_the_description_does_not_allow():
    """The judge above is not blind: a name, a header and a body the description refuses, and a
    header of another operation, are each reported."""

    class Entry:
        raw_path = "/endpoints/bad_name/invocations"
        headers = (
            ("X-Amzn-SageMaker-Target-Variant", "v" * 64),
            ("X-Amzn-SageMaker-Filename", "a"),
        )
        body_length = Config().max_body_bytes + 1

    found = breaches(Entry())
    assert [line.split(":")[0].split(" ")[0] for line in found] == [
        "EndpointName", "X-Amzn-SageMaker-Target-Variant", "X-Amzn-SageMaker-Filename", "a",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# What schemathesis found, each fixed, each kept
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "headers", "body"),
    [
        ("multi-model", {"X-Amzn-SageMaker-Target-Model": "m.tar.gz"}, b"x"),  # a JSON answer
        ("echo", {"Content-Type": "application/x-yaml"}, b"\x89PNG\r\n\x1a\n"),  # not YAML at all
    ],
    ids=["json", "yaml-named-bytes"],
)
async def test_a_models_answer_of_any_media_type_conforms_to_the_description(
    gateway_url, journal, endpoint, headers, body
):
    """Found by schemathesis: InvokeEndpoint's answer was described as a binary string of any
    media type, so a model's JSON answer (parsed by the judge) "violated" it, and bytes under a
    YAML media type failed to parse. The answer is now raw bytes with no schema to parse it by,
    and schemathesis's own validation passes both."""
    operation = schemathesis.openapi.from_dict(DOCUMENT)[INVOKE_PATH]["POST"]
    url = f"{gateway_url}/endpoints/{endpoint}/invocations"
    response = await asyncio.to_thread(requests.post, url, data=body, headers=headers, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == (
        headers.get("Content-Type", "application/json")
    )
    operation.validate_response(response)
    assert len(journal) == 1
