"""schemathesis hooks and a check for tests/test_schemathesis.py (loaded by SCHEMATHESIS_HOOKS).

A name the generator draws at random is one no emulated endpoint has, and every call with it
would end in the service's "endpoint not found": so a valid endpoint name is swapped for one of
the emulator's behaviours (or kept, for that answer too), chosen by the drawn name so a run
stays reproducible. An invalid name is left alone: it is what a negative case is about.

schemathesis's own "server error" check fails on any 5xx, even the 503 the gateway owes its
caller when SageMaker is unavailable; :func:`no_server_error_of_its_own` (which the test runs in
its place) allows a 5xx only where the emulated SageMaker answers one, so anything else, a 500 of
the gateway's own above all, fails the run.
"""

from __future__ import annotations

import zlib
from typing import Any

import schemathesis

from gateway.operations import load_operations

#: The emulator's endpoints whose answers a run should meet (see gateway/emulator/behaviours.py);
#: None keeps the generated name. hang is left out: it answers only when the gateway gives up.
#: The 5xx statuses the emulated SageMaker answers on purpose, by endpoint (and the 503 the
#: gateway answers for an upstream that resets the connection); none for any other endpoint.
SERVER_ERRORS = {"unavailable": {503}, "reset": {503}, "stream-internal-failure-1": {500}}
ENDPOINTS = (
    "echo",
    "variants",
    "slow-5",
    "stream-3-0",
    "stream-fail-2",
    "stream-internal-failure-1",
    "async",
    "explainer",
    "multi-model",
    "components",
    "model-error",
    "model-timeout",
    "throttle",
    "unavailable",
    "reset",
    None,
)
_NAME = load_operations()["invocations"].endpoint_name


@schemathesis.hook("map_path_parameters")
def emulated_endpoints(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    """Swap a valid EndpointName for one of the emulator's behaviours."""
    name = (path_parameters or {}).get(_NAME.member)
    if not isinstance(name, str) or not _valid(name):
        return path_parameters
    chosen = ENDPOINTS[zlib.crc32(name.encode()) % len(ENDPOINTS)]
    return {**path_parameters, _NAME.member: chosen or name}


@schemathesis.check
def no_server_error_of_its_own(ctx: Any, response: Any, case: Any) -> None:
    """A 5xx only where the emulated SageMaker answers one (see :data:`SERVER_ERRORS`)."""
    if response.status_code < 500:
        return
    endpoint = (case.path_parameters or {}).get(_NAME.member)
    if response.status_code not in SERVER_ERRORS.get(endpoint, set()):
        raise AssertionError(
            f"{response.status_code} from {case.method} {case.formatted_path}: no emulated "
            f"SageMaker behaviour answers it: {response.text[:300]}"
        )


def _valid(name: str) -> bool:
    assert _NAME.pattern is not None and _NAME.max_length is not None
    return len(name) <= _NAME.max_length and _NAME.pattern.fullmatch(name) is not None
