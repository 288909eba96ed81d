"""An OpenAPI 3.1 description of the gateway, made at start-up from what it validates against.

Nothing in it is written by hand about the API: the operations, their headers with lengths,
patterns and ranges, the body limits, the answers' headers and the errors' fields all come from
botocore's service model as :mod:`gateway.operations` reads it, the gateway's own limits from
the config and :mod:`gateway.validation`, and its own errors from :mod:`gateway.errors`. Only
the gateway's own routes (health, readiness, metrics, this document) are described here.

What each part says, and why it is said so:

- The body is raw bytes (``format: binary``) of any media type: ``application/octet-stream``,
  which generated clients send when their caller names none, and ``*/*``; its ``maxLength`` is
  the byte limit the gateway applies (``max_body_bytes``, never above the model's own).
- InvokeEndpoint's answer is bytes too, but under ``*/*`` with no schema: what they hold is the
  model's business, and a validator would otherwise parse a model's JSON and call it no string.
- A request header's ``pattern`` is the model's (Java dialect, translated to ECMA-262 and anchored
  at both ends, as the gateway matches it), narrowed to printable ASCII, which the gateway
  requires of every header it forwards; its ``maxLength`` is at most 1024 for the same reason.
- ``Content-Type`` and ``Accept`` are InvokeEndpoint's own members (ContentType, Accept), so they
  are header parameters as well as the body's and the answer's media types: OpenAPI tools that
  follow the specification ignore such parameters, and openapi-generator's clients take them as
  the call's arguments, which is how a caller names the body's real media type.
- Every status an operation can answer with is listed: the gateway's own errors, and the
  model's; SageMaker's errors pass through unchanged, so one status can carry several error
  types (the ``x-amzn-ErrorType`` header says which) and their bodies (``anyOf``).
- Nothing of the deployment is in it: no upstream URL, region, credential or allowlist.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import botocore

from gateway import __version__
from gateway.config import Config
from gateway.errors import (
    ERROR_TYPE_HEADER,
    REQUEST_ID_HEADER,
    GatewayError,
    MethodNotAllowed,
    UnknownOperation,
    VersionNotSupported,
)
from gateway.operations import (
    ErrorShape,
    MemberRule,
    Operation,
    java_pattern_to_ecma,
    load_operations,
)
from gateway.validation import MAX_HEADER_CHARS, body_limit

OPENAPI_VERSION = "3.1.0"
EVENT_STREAM_MEDIA_TYPE = "application/vnd.amazon.eventstream"
#: The default listener (a sidecar on loopback): generated clients start from it.
DEFAULT_SERVER = "http://127.0.0.1:8080"
#: The gateway's errors that no request to an operation's path and method can meet: routing
#: (another path or method) and HTTP versions, which OpenAPI does not describe.
_NOT_AN_OPERATIONS_ERROR = (UnknownOperation, MethodNotAllowed, VersionNotSupported)
#: Headers that OpenAPI describes through the media types of the content, not as headers.
_MEDIA_TYPE_HEADERS = frozenset({"content-type"})
_PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))
#: The atoms of a (translated) pattern that match one character of a class: a bracket
#: expression, an escape, or the dot; anything else is left as it is.
_ATOM = re.compile(r"\[\^?\]?(?:\\.|[^\]\\])*\]|\\x[0-9a-fA-F]{2}|\\[^bB0-9]|\.")
#: Atoms that can only match printable ASCII as they are written: a bracket expression of
#: printable characters and escaped punctuation (its ranges lie between printable bounds), or
#: one escaped punctuation character.
_PUNCTUATION_ESCAPE = r"\\[\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]"
_PRINTABLE_ALREADY = re.compile(
    rf"\[(?!\^)(?:{_PUNCTUATION_ESCAPE}|[\x20-\x5b\x5e-\x7e])+\]|{_PUNCTUATION_ESCAPE}"
)
_ERROR_TYPE = r"^[A-Za-z][A-Za-z0-9]*(:.*)?$"
_BINARY = {"type": "string", "format": "binary"}


def describe(operations: Mapping[str, Operation], *, max_body_bytes: int) -> dict[str, Any]:
    """The OpenAPI document of a gateway that serves ``operations`` with ``max_body_bytes``."""
    paths: dict[str, Any] = {
        f"/endpoints/{{{op.endpoint_name.member}}}/{op.path_suffix}": {
            "post": _operation(op, body_limit(op, max_body_bytes))
        }
        for op in operations.values()
    }
    paths.update(_views())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Amazon SageMaker Runtime through sagemaker-gateway",
            "version": __version__,
            "description": (
                "The SageMaker runtime's operations, called unsigned on the same paths: the "
                "gateway validates each request against botocore's service model, signs it "
                "with SigV4 and forwards it. Errors from SageMaker pass through unchanged, "
                "x-amzn-ErrorType naming each: those its model lists, and AWS's common ones "
                "(a ThrottlingException at 400, for one) under the statuses described here. "
                "Generated from the sagemaker-runtime service model of botocore "
                f"{botocore.__version__}."
            ),
        },
        "servers": [
            {"url": DEFAULT_SERVER, "description": "the default listener; use your gateway's"}
        ],
        "paths": paths,
        "components": {
            "schemas": _error_schemas(operations),
            "headers": {
                "RequestId": {
                    "description": "The request's id: SageMaker's, or the gateway's own for "
                    "an answer the gateway made itself.",
                    "schema": {"type": "string"},
                },
            },
        },
    }


def document_bytes(config: Config, operations: Mapping[str, Operation] | None = None) -> bytes:
    """The JSON document a gateway with ``config`` serves at ``GET /openapi.json``, describing
    ``operations`` (by default, as the installed botocore's model has them)."""
    operations = load_operations() if operations is None else operations
    document = describe(operations, max_body_bytes=config.max_body_bytes)
    return json.dumps(document, indent=2).encode()


# ---------------------------------------------------------------------------------------------
# The operations
# ---------------------------------------------------------------------------------------------


def _operation(op: Operation, limit: int) -> dict[str, Any]:
    endpoint = op.endpoint_name
    parameters = [
        {
            "name": endpoint.member,
            "in": "path",
            "required": True,
            "description": _text(endpoint.documentation),
            "schema": _string_schema(endpoint, _model_pattern, endpoint.max_length),
        },
        *(_header_parameter(rule) for rule in op.request_headers.values()),
    ]
    body_schema = {**_BINARY, "maxLength": limit}
    responses = {str(op.success_status): _success(op), **_errors(op)}
    return {
        "operationId": op.name,
        "description": _text(op.documentation),
        "parameters": parameters,
        "requestBody": {
            "required": op.body_required,
            "description": f"Raw bytes of any media type, at most {limit:,} bytes (the "
            "gateway's max_body_bytes, never above the model's own limit). "
            + _text(op.body_documentation),
            # Raw bytes first: a generated client sends that media type when its caller names
            # none (openapi-generator's Java client leaves "*/*" out of what it can send).
            "content": {
                "application/octet-stream": {"schema": body_schema},
                "*/*": {"schema": body_schema},
            },
        },
        "responses": responses,
    }


def _header_parameter(rule: MemberRule) -> dict[str, Any]:
    if rule.kind == "integer":
        schema: dict[str, Any] = {"type": "integer"}
        if rule.min_value is not None:
            schema["minimum"] = rule.min_value
        if rule.max_value is not None:
            schema["maximum"] = rule.max_value
    else:
        max_length = min(MAX_HEADER_CHARS, rule.max_length or MAX_HEADER_CHARS)
        schema = _string_schema(rule, request_header_pattern, max_length)
    return {
        "name": rule.wire_name,
        "in": "header",
        "required": False,
        "description": f"{rule.member}: {_text(rule.documentation)}",
        "schema": schema,
    }


def request_header_pattern(java_pattern: str | None) -> str:
    """The values a request header may have, as an ECMA-262 pattern: the model's pattern (if
    any) narrowed to printable ASCII, the gateway's rule for every header it forwards.

    Each character class of the translated pattern (a bracket expression, an escape such as
    ``\\S``, the dot) is replaced by the printable characters it matches, so the pattern needs
    no lookahead and stays one that generators of values and clients can read.
    """
    if java_pattern is None:
        return f"^{_char_class(_PRINTABLE)}*$"
    anchored = java_pattern_to_ecma(java_pattern)
    return _ATOM.sub(lambda atom: _printable_atom(atom[0]), anchored)


def _printable_atom(atom: str) -> str:
    if _PRINTABLE_ALREADY.fullmatch(atom):
        return atom
    matched = "".join(ch for ch in _PRINTABLE if re.fullmatch(atom, ch))
    return _char_class(matched) if matched else "(?!)"  # (?!) never matches


def _char_class(chars: str) -> str:
    """``chars`` as one bracket expression of ``\\xHH`` ranges (valid ECMA-262 and Python)."""
    codes = sorted(map(ord, chars))
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    parts = (f"\\x{low:02x}" + (f"-\\x{high:02x}" if high > low else "") for low, high in ranges)
    return f"[{''.join(parts)}]"


def _string_schema(
    rule: MemberRule, to_pattern: Callable[[str | None], str | None], max_length: int | None
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if rule.min_length:
        schema["minLength"] = rule.min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    pattern = to_pattern(rule.pattern_text)
    if pattern is not None:
        schema["pattern"] = pattern
    return schema


def _model_pattern(java_pattern: str | None) -> str | None:
    return None if java_pattern is None else java_pattern_to_ecma(java_pattern)


def _member_schema(rule: MemberRule) -> dict[str, Any]:
    """A response header's or an error field's schema: the model's constraints as they are."""
    if rule.kind == "integer":
        return {"type": "integer"}
    return _string_schema(rule, _model_pattern, rule.max_length)


def _success(op: Operation) -> dict[str, Any]:
    headers: dict[str, Any] = {
        rule.wire_name: {
            "description": f"{rule.member}: {_text(rule.documentation)}",
            "schema": _member_schema(rule),
        }
        for key, rule in op.response_header_rules.items()
        if key not in _MEDIA_TYPE_HEADERS
    }
    headers[REQUEST_ID_HEADER] = {"$ref": "#/components/headers/RequestId"}
    content: dict[str, Any]
    if op.response_payload == "eventstream":
        events = "; ".join(f"{name}: {_text(doc)}" for name, doc in op.stream_events.items())
        description = (
            "The answer as an event stream, relayed part by part as SageMaker sends it. "
            f"Its events: {events}"
        )
        content = {EVENT_STREAM_MEDIA_TYPE: {"schema": _BINARY}}
    elif op.response_payload == "json":
        description = "Accepted: where the result and a failure will be written."
        fields = {key: _member_schema(rule) for key, rule in op.response_fields.items()}
        content = {"application/json": {"schema": {"type": "object", "properties": fields}}}
    else:
        description = (
            "The model's answer: raw bytes of the media type Content-Type names, as the model "
            "wrote them (what they hold, JSON or else, is the model's, not described here)."
        )
        # Bytes for generated clients; any media type, with no schema to parse it by.
        content = {"application/octet-stream": {"schema": _BINARY}, "*/*": {}}
    return {"description": description, "headers": headers, "content": content}


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _gateway_errors() -> list[type[GatewayError]]:
    """Every error the gateway makes for a request to an operation (errors.py's tree)."""
    found: list[type[GatewayError]] = GatewayError.__subclasses__()
    for cls in found:  # breadth first: the loop also visits what it appends
        found.extend(cls.__subclasses__())
    return [cls for cls in found if not issubclass(cls, _NOT_AN_OPERATIONS_ERROR)]


def _errors(op: Operation) -> dict[str, Any]:
    """One answer per error status: who sends which ErrorType, the bodies they can have."""
    by_status: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    for cls in _gateway_errors():
        why = _first_line(cls.__doc__).replace("``", "")
        by_status[cls.status].append((cls.error_type, "GatewayError", f"from the gateway: {why}"))
    for shape in _http_errors(op.errors):
        assert shape.status is not None
        why = _first_sentence(shape.documentation)
        by_status[shape.status].append((shape.name, shape.name, f"from SageMaker: {why}."))
    responses: dict[str, Any] = {}
    for status in sorted(by_status):
        causes = by_status[status]
        schemas = list(dict.fromkeys(f"#/components/schemas/{schema}" for _, schema, _ in causes))
        error_types = ", ".join(dict.fromkeys(error_type for error_type, _, _ in causes))
        body: dict[str, Any] = (
            {"$ref": schemas[0]} if len(schemas) == 1 else {"anyOf": [{"$ref": s} for s in schemas]}
        )
        responses[str(status)] = {
            "description": " ".join(f"{error_type} {why}" for error_type, _, why in causes),
            "headers": {
                ERROR_TYPE_HEADER: {
                    "description": f"The error's type: {error_types}, or another of SageMaker's.",
                    "required": True,
                    "schema": {"type": "string", "pattern": _ERROR_TYPE},
                },
                REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"},
            },
            "content": {"application/json": {"schema": body}},
        }
    return responses


def _http_errors(errors: Iterable[ErrorShape]) -> list[ErrorShape]:
    """The errors answered as an HTTP status (others only travel inside a stream)."""
    return [shape for shape in errors if shape.status is not None]


def _error_schemas(operations: Mapping[str, Operation]) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "GatewayError": {
            "type": "object",
            "description": "An error the gateway answers itself, before or instead of "
            "forwarding; the x-amzn-ErrorType header names it.",
            "required": ["message"],
            "properties": {"message": {"type": "string"}},
        }
    }
    for op in operations.values():
        for shape in _http_errors(op.errors):
            schemas[shape.name] = {
                "type": "object",
                "description": _text(shape.documentation),
                "properties": {key: _member_schema(rule) for key, rule in shape.fields.items()},
                # The service adds fields of its own (ModelError's ErrorCode): not refused.
                "additionalProperties": True,
            }
    return schemas


# ---------------------------------------------------------------------------------------------
# The gateway's own routes
# ---------------------------------------------------------------------------------------------


def _views() -> dict[str, Any]:
    status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    readiness = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "reason": {"type": "string"}},
    }
    return {
        "/healthz": _view(
            "Healthz", "The process is up and serving HTTP.", {"200": _json("Alive.", status)}
        ),
        "/readyz": _view(
            "Readyz",
            "Whether a request can be signed and forwarded now.",
            {
                "200": _json("Ready: credentials resolved, not draining.", readiness),
                "503": _json("Not ready: no credentials, or draining.", readiness),
            },
        ),
        "/metrics": _view(
            "Metrics",
            "The Prometheus exposition (prefix sagemaker_gateway_).",
            {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        "/openapi.json": _view(
            "OpenApi",
            "This description.",
            {"200": _json("The OpenAPI document.", {"type": "object"})},
        ),
    }


def _view(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"operationId": operation_id, "summary": summary, "responses": responses}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# ---------------------------------------------------------------------------------------------
# The model's documentation, as plain text
# ---------------------------------------------------------------------------------------------


def _text(documentation: str) -> str:
    """The model's HTML documentation as one line of plain text."""
    plain = html.unescape(re.sub(r"<[^>]*>", " ", documentation))
    return re.sub(r"\s+", " ", plain).strip().replace(" .", ".").replace(" ,", ",")


def _first_sentence(documentation: str) -> str:
    return _text(documentation).split(". ")[0].rstrip(".")


def _first_line(docstring: str | None) -> str:
    return (docstring or "").strip().splitlines()[0] if docstring else ""
