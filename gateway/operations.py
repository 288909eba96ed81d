"""The runtime operations the gateway serves, read from botocore's ``sagemaker-runtime`` model.

Header names, lengths and patterns are not copied into this project: they are loaded once at
start-up from the service model that ships with botocore, so the gateway follows the API as it
evolves (a new optional header appears here when botocore is upgraded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import botocore.session

SERVICE_NAME = "sagemaker-runtime"

#: The three operations the gateway forwards, by the last segment of their path.
SUPPORTED_OPERATIONS = ("InvokeEndpoint", "InvokeEndpointAsync", "InvokeEndpointWithResponseStream")

# The service model writes its patterns in Java's regex dialect; these are the constructs it
# uses that Python's ``re`` spells differently. A pattern with any other ``\p{..}`` class fails
# to compile at start-up, loudly, rather than being silently mistranslated.
_JAVA_REGEX_TRANSLATIONS = (
    (r"[\p{Print}]", r"[\x20-\x7e]"),
    (r"\p{Print}", r"[\x20-\x7e]"),
    (r"\p{ASCII}", r"[\x00-\x7f]"),
    (r"\z", r"\Z"),
)


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """One request header an operation accepts, with the model's constraints on its value."""

    member: str  # the API's parameter name, e.g. "TargetVariant"
    wire_name: str  # the HTTP header, e.g. "X-Amzn-SageMaker-Target-Variant"
    kind: str  # "string" or "integer"
    min_length: int | None
    max_length: int | None
    pattern: re.Pattern[str] | None
    pattern_text: str | None
    min_value: int | None
    max_value: int | None


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation of the runtime API: its path, its request headers and its response headers."""

    name: str
    path_suffix: str  # "invocations", "async-invocations", "invocations-response-stream"
    request_headers: Mapping[str, HeaderRule]  # keyed by lower-case header name
    response_headers: frozenset[str]  # lower-case names the API returns
    endpoint_name_max_length: int
    endpoint_name_pattern: re.Pattern[str]
    endpoint_name_pattern_text: str
    body_max_bytes: int | None  # the model's own limit; None when the operation has no body
    success_status: int


def java_pattern_to_python(pattern: str) -> re.Pattern[str]:
    """Compile a service-model pattern (Java dialect) as a Python regex, anchored by fullmatch."""
    translated = pattern
    for java, python in _JAVA_REGEX_TRANSLATIONS:
        translated = translated.replace(java, python)
    return re.compile(translated)


def _header_rule(member: str, shape: object) -> HeaderRule:
    meta: Mapping[str, object] = shape.metadata  # type: ignore[attr-defined]
    pattern_text = meta.get("pattern")
    kind = shape.type_name  # type: ignore[attr-defined]
    is_int = kind == "integer"
    return HeaderRule(
        member=member,
        wire_name=shape.serialization["name"],  # type: ignore[attr-defined]
        kind=kind,
        min_length=None if is_int else meta.get("min"),  # type: ignore[arg-type]
        max_length=None if is_int else meta.get("max"),  # type: ignore[arg-type]
        pattern=java_pattern_to_python(pattern_text) if isinstance(pattern_text, str) else None,
        pattern_text=pattern_text if isinstance(pattern_text, str) else None,
        min_value=meta.get("min") if is_int else None,  # type: ignore[arg-type]
        max_value=meta.get("max") if is_int else None,  # type: ignore[arg-type]
    )


def load_operations() -> dict[str, Operation]:
    """Read the supported operations from botocore's model, keyed by path suffix."""
    model = botocore.session.get_session().get_service_model(SERVICE_NAME)
    operations: dict[str, Operation] = {}
    for name in SUPPORTED_OPERATIONS:
        op = model.operation_model(name)
        uri = op.http["requestUri"]
        prefix, _, suffix = uri.partition("{EndpointName}/")
        if prefix != "/endpoints/" or not suffix:
            raise RuntimeError(f"unexpected request URI for {name} in the service model: {uri}")
        request_headers: dict[str, HeaderRule] = {}
        endpoint_shape = None
        body_max: int | None = None
        for member, shape in op.input_shape.members.items():
            location = shape.serialization.get("location")
            if location == "header":
                rule = _header_rule(member, shape)
                request_headers[rule.wire_name.lower()] = rule
            elif location == "uri":
                endpoint_shape = shape
            elif member == op.input_shape.serialization.get("payload"):
                body_max = shape.metadata.get("max")
        if endpoint_shape is None:
            raise RuntimeError(f"{name} has no EndpointName in the service model")
        response_headers = frozenset(
            shape.serialization["name"].lower()
            for shape in op.output_shape.members.values()
            if shape.serialization.get("location") == "header"
        )
        name_pattern = endpoint_shape.metadata["pattern"]
        operations[suffix] = Operation(
            name=name,
            path_suffix=suffix,
            request_headers=request_headers,
            response_headers=response_headers,
            endpoint_name_max_length=endpoint_shape.metadata["max"],
            endpoint_name_pattern=java_pattern_to_python(name_pattern),
            endpoint_name_pattern_text=name_pattern,
            body_max_bytes=body_max,
            success_status=op.http.get("responseCode", 200),
        )
    return operations
