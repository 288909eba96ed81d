"""Pure checks of a request's parts against the API's rules.

Each function takes plain values and returns the accepted value or raises
:class:`gateway.errors.ValidationError` whose message names the field and the rule it broke.
Nothing here does I/O, so the rules can be tested exhaustively on their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.errors import PayloadTooLarge, ValidationError
from gateway.operations import MemberRule, Operation

#: DESIGN section 3: every accepted header is printable ASCII and at most 1024 characters,
#: whatever looser rule the model states for it.
MAX_HEADER_CHARS = 1024
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
#: RFC 9110 section 5.6.2 token, and section 5.5 field-value (VCHAR, SP, HTAB and obs-text:
#: a header the gateway drops anyway, such as ``User-Agent: café``, may carry UTF-8).
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_DIGITS = re.compile(r"-?[0-9]{1,10}")
_PATTERN = "Member must satisfy regular expression pattern: "


def validate_framing(raw_target: str, raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Refuse what no SageMaker client sends: absolute-form targets, control characters (other
    than HTAB) or non-token names in header fields.

    The HTTP parser refuses the same bytes; this states the rule where the gateway applies
    it, so that it holds whatever the parser's leniencies. The API's own headers are held to
    printable ASCII later (:func:`validate_header`).
    """
    if not raw_target.startswith("/"):
        raise ValidationError(
            "The request target must be a path (origin-form); absolute-form and "
            "asterisk-form targets are not accepted",
            reason="bad_http",
        )
    for name, value in raw_headers:
        if not (_FIELD_NAME.fullmatch(name) and _FIELD_VALUE.fullmatch(value)):
            shown = name.decode("ascii", "replace")[:64]
            raise ValidationError(
                f"Header '{shown}' must be a token with a value of visible characters, "
                "spaces and tabs (RFC 9110 section 5.5)",
                reason="bad_http",
            )


def validate_endpoint_name(raw_name: str, operation: Operation) -> str:
    """Accept the endpoint name exactly as it appeared in the raw path, or raise.

    The name is checked before any percent-decoding: ``%2F``, ``..`` and ``@`` can never match
    the model's pattern, so an encoded path trick is refused rather than normalised away.
    """
    rule = operation.endpoint_name
    if rule.max_length is not None and len(raw_name) > rule.max_length:
        raise _broken("endpointName", _too_long(rule.max_length, len(raw_name)), "endpoint_name")
    if rule.pattern is not None and not rule.pattern.fullmatch(raw_name):
        raise _broken("endpointName", _PATTERN + str(rule.pattern_text), "endpoint_name")
    return raw_name


def validate_header(rule: MemberRule, value: str) -> str:
    """Accept one request header value under the model's rule for it, or raise."""
    field = rule.wire_name
    if len(value) > MAX_HEADER_CHARS:
        raise _broken(field, _too_long(MAX_HEADER_CHARS, len(value)), "header_too_long")
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise _broken(
            field, "Member must contain only printable US-ASCII characters", "header_not_ascii"
        )
    if rule.kind == "integer":
        return _validate_integer(rule, value)
    if rule.max_length is not None and len(value) > rule.max_length:
        raise _broken(field, _too_long(rule.max_length, len(value)), "header_too_long")
    if rule.min_length is not None and len(value) < rule.min_length:
        raise _broken(
            field,
            f"Member must have length greater than or equal to {rule.min_length}",
            "header_invalid",
        )
    if rule.pattern is not None and not rule.pattern.fullmatch(value):
        raise _broken(field, _PATTERN + str(rule.pattern_text), "header_invalid")
    return value


def _validate_integer(rule: MemberRule, value: str) -> str:
    field = rule.wire_name
    if not _DIGITS.fullmatch(value):
        raise _broken(field, "Member must be an integer", "header_invalid")
    number = int(value)
    if rule.min_value is not None and number < rule.min_value:
        raise _broken(
            field,
            f"Member must have value greater than or equal to {rule.min_value}",
            "header_invalid",
        )
    if rule.max_value is not None and number > rule.max_value:
        raise _broken(
            field,
            f"Member must have value less than or equal to {rule.max_value}",
            "header_invalid",
        )
    return value


def _too_long(limit: int, length: int) -> str:
    return f"Member must have length less than or equal to {limit} (got {length} characters)"


def _broken(field: str, rule: str, reason: str) -> ValidationError:
    """The service's wording for a value that breaks one of its constraints."""
    return ValidationError(
        f"Value at '{field}' failed to satisfy constraint: {rule}", reason=reason
    )


def body_limit(operation: Operation, max_body_bytes: int) -> int:
    """The body limit for ``operation``: the configured one, never above the model's own."""
    if operation.body_max_bytes is None:
        return 0
    return min(max_body_bytes, operation.body_max_bytes)


def validate_content_length(content_length: int | None, limit: int) -> None:
    """Refuse a declared body larger than ``limit`` before a byte of it is read."""
    if content_length is not None and content_length > limit:
        raise body_too_large(limit)


def body_too_large(limit: int) -> PayloadTooLarge:
    """The error for a body over ``limit``, declared or counted."""
    return PayloadTooLarge(
        f"Value at 'body' failed to satisfy constraint: "
        f"Member must have length less than or equal to {limit} bytes"
    )
