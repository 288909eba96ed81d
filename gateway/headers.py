"""Which headers cross the gateway, in each direction.

Both directions are allowlists. Inbound, only the headers the operation defines in the service
model survive (everything else, Authorization, Cookie, X-Amz-*, X-Forwarded-*, hop-by-hop, is
dropped before signing, so nothing a caller adds can ride on our signature). Outbound, only
what the API returns plus the service's request id and error type reach the caller.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import ValidationError
from gateway.operations import Operation
from gateway.validation import validate_header

#: What the gateway passes back besides the operation's own response headers (DESIGN section 5).
ALWAYS_RETURNED = frozenset({"content-type", "x-amzn-requestid", "x-amzn-errortype"})

# A header of the API sent more than once. Exactly one value of each reaches SageMaker:
#: - list-valued fields are combined in order with commas (RFC 9110 section 5.3), then
#:   validated as one value (generated clients send the caller's Accept, then their default);
COMBINED = frozenset({"accept", "x-amzn-sagemaker-accept"})
#: - the body's media type is the first value, as Java servlets, Go's net/http and aiohttp
#:   read it (generated clients repeat it the same way);
FIRST_WINS = frozenset({"content-type", "x-amzn-sagemaker-content-type"})
#: - any other is a ValidationError naming it: two TargetVariants leave no value to choose.
#: Framing and routing fields (Content-Length, Transfer-Encoding, Host) repeated are refused by
#: the HTTP layer before this is reached.


def select_request_headers(
    operation: Operation, incoming: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The operation's headers from ``incoming``, validated, under their canonical names, in
    the order of their first appearance; repeats as :data:`COMBINED` and :data:`FIRST_WINS`
    say, else a ValidationError."""
    values: dict[str, str] = {}
    for name, value in incoming:
        key = name.lower()
        if key not in operation.request_headers:
            continue
        if key not in values:
            values[key] = value
        elif key in COMBINED:
            values[key] = f"{values[key]}, {value}"
        elif key not in FIRST_WINS:
            raise ValidationError(
                f"Header '{operation.request_headers[key].wire_name}' appears more than once; "
                "it takes a single value",
                reason="header_duplicate",
            )
    rules = operation.request_headers
    return [(rules[key].wire_name, validate_header(rules[key], value))
            for key, value in values.items()]  # fmt: skip


def response_header_names(operation: Operation) -> frozenset[str]:
    """Lower-case names of the upstream response headers the caller may see."""
    return operation.response_headers | ALWAYS_RETURNED


def select_response_headers(
    allowed: frozenset[str], upstream: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The upstream's response headers that are on ``allowed``, in order, names unchanged."""
    return [(name, value) for name, value in upstream if name.lower() in allowed]
