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


def select_request_headers(
    operation: Operation, incoming: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The operation's headers from ``incoming``, validated, under their canonical names.

    Raises ValidationError for a value that breaks its rule or for an accepted header that
    appears twice (two TargetVariants leave no single value to forward).
    """
    selected: dict[str, tuple[str, str]] = {}
    for name, value in incoming:
        key = name.lower()
        rule = operation.request_headers.get(key)
        if rule is None:
            continue
        if key in selected:
            raise ValidationError(
                f"Header '{rule.wire_name}' appears more than once; it takes a single value",
                reason="header_duplicate",
            )
        selected[key] = (rule.wire_name, validate_header(rule, value))
    return list(selected.values())


def response_header_names(operation: Operation) -> frozenset[str]:
    """Lower-case names of the upstream response headers the caller may see."""
    return operation.response_headers | ALWAYS_RETURNED


def select_response_headers(
    allowed: frozenset[str], upstream: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The upstream's response headers that are on ``allowed``, in order, names unchanged."""
    return [(name, value) for name, value in upstream if name.lower() in allowed]
