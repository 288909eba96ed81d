"""The runtime operations the gateway serves, read from botocore's ``sagemaker-runtime`` model.

Header names, lengths and patterns are not copied into this project: they are loaded once at
start-up from the service model that ships with botocore, so the gateway follows the API as it
evolves (a new optional header appears here when botocore is upgraded). The validation rules
and the OpenAPI description (:mod:`gateway.openapi`) are both made from what this module reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.loaders
import botocore.session

SERVICE_NAME = "sagemaker-runtime"

#: The three operations the gateway forwards, by the last segment of their path.
SUPPORTED_OPERATIONS = ("InvokeEndpoint", "InvokeEndpointAsync", "InvokeEndpointWithResponseStream")

# The service model writes its patterns in Java's regex dialect; these are the constructs it
# uses that Python's ``re`` and ECMA-262 (JSON Schema's dialect, for the OpenAPI description)
# spell differently. A pattern with any other ``\p{..}`` class fails to compile at start-up,
# loudly, rather than being silently mistranslated.
_JAVA_CLASSES = (
    (r"[\p{Print}]", r"[\x20-\x7e]"),
    (r"\p{Print}", r"[\x20-\x7e]"),
    (r"\p{ASCII}", r"[\x00-\x7f]"),
)
_JAVA_TO_PYTHON = (*_JAVA_CLASSES, (r"\z", r"\Z"))
#: ECMA-262 has no ``\A`` or ``\z``; without the multiline flag ``^`` and ``$`` mean just that.
_JAVA_TO_ECMA = (*_JAVA_CLASSES, (r"\A", "^"), (r"\z", "$"))
#: What ECMA-262 would read differently or not at all (Python's compile catches its own).
_NOT_ECMA = re.compile(r"\\[pPAZzQE]|\(\?[a-zA-Z]|[*+?}]\+")


@dataclass(frozen=True, slots=True)
class MemberRule:
    """One member of an operation's input, output or error, with the model's constraints on its
    value: a request or response header, the endpoint name in the path, or a JSON field."""

    member: str  # the API's parameter name, e.g. "TargetVariant"
    wire_name: str  # the HTTP header ("X-Amzn-SageMaker-Target-Variant") or the JSON key
    kind: str  # the model's type: "string", "integer", ...
    min_length: int | None
    max_length: int | None
    pattern: re.Pattern[str] | None
    pattern_text: str | None  # as the model writes it (Java's dialect)
    min_value: int | None
    max_value: int | None
    documentation: str = ""  # the model's, in HTML


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """An error the model says an operation can answer with, or send inside its stream."""

    name: str  # the ErrorType, e.g. "ModelError"
    status: int | None  # None for an error that only travels as an event of a response stream
    fields: Mapping[str, MemberRule]  # by JSON key
    documentation: str


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation of the runtime API: its path, request headers, body, answers and errors."""

    name: str
    path_suffix: str  # "invocations", "async-invocations", "invocations-response-stream"
    request_headers: Mapping[str, MemberRule]  # keyed by lower-case header name
    response_header_rules: Mapping[str, MemberRule]  # keyed by lower-case header name
    endpoint_name: MemberRule
    body_max_bytes: int | None  # the model's own limit; None when the operation has no body
    body_required: bool
    success_status: int
    #: The answer's payload: "blob" (raw bytes), "eventstream", or "json" (``response_fields``).
    response_payload: str
    response_fields: Mapping[str, MemberRule]
    #: The events of a response stream, by name (PayloadPart, ModelStreamError, ...).
    stream_events: Mapping[str, str]
    errors: tuple[ErrorShape, ...]
    documentation: str = ""
    body_documentation: str = ""

    @property
    def response_headers(self) -> frozenset[str]:
        """Lower-case names of the headers the API returns."""
        return frozenset(self.response_header_rules)


def java_pattern_to_python(pattern: str) -> re.Pattern[str]:
    """Compile a service-model pattern (Java dialect) as a Python regex, anchored by fullmatch."""
    return re.compile(_translate(pattern, _JAVA_TO_PYTHON))


def java_pattern_to_ecma(pattern: str) -> str:
    """A service-model pattern (Java dialect) in ECMA-262's, anchored at both ends as the
    gateway applies it (JSON Schema's ``pattern`` matches anywhere unless anchored)."""
    translated = _translate(pattern, _JAVA_TO_ECMA)
    if _NOT_ECMA.search(translated):
        raise ValueError(f"the service model's pattern {pattern!r} has no ECMA-262 form here")
    if _has_top_level_alternation(translated):
        return f"^(?:{translated})$"
    # One branch: its own anchors, if it has them, are the ones it needs.
    start = 1 if translated.startswith("^") else 0
    end = -1 if translated.endswith("$") and not translated.endswith("\\$") else None
    return f"^{translated[start:end]}$"


def _has_top_level_alternation(pattern: str) -> bool:
    depth, in_class, escaped = 0, False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char in "()":
            depth += 1 if char == "(" else -1
        elif char == "|" and depth == 0:
            return True
    return False


def _translate(pattern: str, table: tuple[tuple[str, str], ...]) -> str:
    for java, other in table:
        pattern = pattern.replace(java, other)
    return pattern


def _member_rule(member: str, shape: Any, wire_name: str) -> MemberRule:
    meta: Mapping[str, Any] = shape.metadata
    pattern_text = meta.get("pattern")
    if not isinstance(pattern_text, str):
        pattern_text = None
    is_int = shape.type_name == "integer"
    return MemberRule(
        member=member,
        wire_name=wire_name,
        kind=shape.type_name,
        min_length=None if is_int else meta.get("min"),
        max_length=None if is_int else meta.get("max"),
        pattern=java_pattern_to_python(pattern_text) if pattern_text is not None else None,
        pattern_text=pattern_text,
        min_value=meta.get("min") if is_int else None,
        max_value=meta.get("max") if is_int else None,
        documentation=shape.documentation or "",
    )


def _headers(shape: Any) -> dict[str, MemberRule]:
    """The structure's members that travel as headers, keyed by lower-case header name."""
    rules = (
        _member_rule(member, member_shape, member_shape.serialization["name"])
        for member, member_shape in shape.members.items()
        if member_shape.serialization.get("location") == "header"
    )
    return {rule.wire_name.lower(): rule for rule in rules}


def _error_shape(shape: Any) -> ErrorShape:
    return ErrorShape(
        name=shape.name,
        status=shape.metadata.get("error", {}).get("httpStatusCode"),
        fields={name: _member_rule(name, member, name) for name, member in shape.members.items()},
        documentation=shape.documentation or "",
    )


def load_service_model(loader: botocore.loaders.Loader | None = None) -> Any:
    """botocore's ``sagemaker-runtime`` model (a ``botocore.model.ServiceModel``) as the
    installed botocore ships it, or as ``loader`` finds it (a modified copy, in a test)."""
    session = botocore.session.get_session()
    if loader is not None:
        session.register_component("data_loader", loader)
    return session.get_service_model(SERVICE_NAME)


def load_operations(model: Any = None) -> dict[str, Operation]:
    """Read the supported operations from botocore's model (by default the installed one),
    keyed by path suffix."""
    model = model if model is not None else load_service_model()
    operations = (_operation(model.operation_model(name)) for name in SUPPORTED_OPERATIONS)
    return {operation.path_suffix: operation for operation in operations}


def _operation(op: Any) -> Operation:
    name = op.name
    uri = op.http["requestUri"]
    prefix, _, suffix = uri.partition("{EndpointName}/")
    if prefix != "/endpoints/" or not suffix:
        raise RuntimeError(f"unexpected request URI for {name} in the service model: {uri}")
    request = op.input_shape
    endpoint_shape = next(
        (shape for shape in request.members.values()
         if shape.serialization.get("location") == "uri"),
        None,
    )  # fmt: skip
    if endpoint_shape is None:
        raise RuntimeError(f"{name} has no EndpointName in the service model")
    body_member = request.serialization.get("payload")
    body = request.members.get(body_member) if body_member else None
    output = op.output_shape
    payload_member = output.serialization.get("payload")
    payload = output.members.get(payload_member) if payload_member else None
    events: dict[str, str] = {}
    if payload is None:
        response_payload = "json"
    elif payload.serialization.get("eventstream"):
        response_payload = "eventstream"
        events = {event: shape.documentation or "" for event, shape in payload.members.items()}
    else:
        response_payload = "blob"
    body_fields = {
        member: _member_rule(member, shape, member)
        for member, shape in output.members.items()
        if payload is None and "location" not in shape.serialization
    }
    return Operation(
        name=name,
        path_suffix=suffix,
        request_headers=_headers(request),
        response_header_rules=_headers(output),
        endpoint_name=_member_rule("EndpointName", endpoint_shape, "EndpointName"),
        body_max_bytes=body.metadata.get("max") if body is not None else None,
        body_required=body_member in request.required_members,
        success_status=op.http.get("responseCode", 200),
        response_payload=response_payload,
        response_fields=body_fields,
        stream_events=events,
        errors=tuple(_error_shape(shape) for shape in op.error_shapes),
        documentation=op.documentation or "",
        body_documentation=body.documentation if body is not None else "",
    )
