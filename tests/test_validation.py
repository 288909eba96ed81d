"""The pure validation rules, against the service model's constraints and at random."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import PayloadTooLarge, ValidationError
from gateway.headers import select_request_headers, select_response_headers
from gateway.operations import java_pattern_to_python, load_operations
from gateway.validation import (
    body_limit,
    validate_content_length,
    validate_endpoint_name,
    validate_header,
)

OPERATIONS = load_operations()
INVOKE = OPERATIONS["invocations"]
ASYNC = OPERATIONS["async-invocations"]
NAME_RE = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


def test_the_three_operations_come_from_the_service_model():
    """Paths, success codes and the documented headers are read from botocore's model."""
    assert {op.name for op in OPERATIONS.values()} == {
        "InvokeEndpoint", "InvokeEndpointAsync", "InvokeEndpointWithResponseStream",
    }  # fmt: skip
    assert ASYNC.success_status == 202
    assert INVOKE.request_headers["x-amzn-sagemaker-target-variant"].max_length == 63
    assert INVOKE.request_headers["x-amzn-sagemaker-inference-id"].max_length == 64
    assert "x-amzn-invoked-production-variant" in INVOKE.response_headers


@pytest.mark.parametrize(
    ("java", "accepted", "refused"),
    [
        (r"\p{ASCII}*", "plain text", "caf\u00e9"),
        (r"\A\S[\p{Print}]*\z", "id 42", " leading space"),
        (r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*", "a--b", "a-"),
    ],
)
def test_java_patterns_translate_to_the_same_language(java, accepted, refused):
    """The model's Java-dialect classes (\\p{ASCII}, \\p{Print}, \\z) mean the same in Python."""
    pattern = java_pattern_to_python(java)
    assert pattern.fullmatch(accepted)
    assert not pattern.fullmatch(refused)


@given(st.text(max_size=80))
def test_an_endpoint_name_passes_exactly_when_the_pattern_and_length_allow(name):
    """For any string, validation agrees with the documented pattern and the 63 limit."""
    expected = bool(NAME_RE.fullmatch(name)) and len(name) <= 63
    try:
        validate_endpoint_name(name, INVOKE)
    except ValidationError:
        assert not expected
    else:
        assert expected


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=1100))
def test_a_custom_attributes_value_passes_only_if_printable_ascii_and_short(value):
    """CustomAttributes: any value of at most 1024 printable US-ASCII characters, nothing else."""
    rule = INVOKE.request_headers["x-amzn-sagemaker-custom-attributes"]
    expected = len(value) <= 1024 and all(0x20 <= ord(ch) <= 0x7E for ch in value)
    try:
        assert validate_header(rule, value) == value
    except ValidationError as error:
        assert not expected
        assert "X-Amzn-SageMaker-Custom-Attributes" in error.message
    else:
        assert expected


@pytest.mark.parametrize(
    ("header", "value", "ok"),
    [
        ("x-amzn-sagemaker-inference-id", "i" * 64, True),
        ("x-amzn-sagemaker-inference-id", "i" * 65, False),
        ("x-amzn-sagemaker-inference-id", "", False),
        ("x-amzn-sagemaker-target-variant", "v" * 63, True),
        ("x-amzn-sagemaker-target-variant", "v" * 64, False),
        ("x-amzn-sagemaker-target-container-hostname", "host_1", False),
        ("x-amzn-sagemaker-inference-component", "ic-1", True),
        ("x-amzn-sagemaker-inference-component", "ic-", False),
        ("x-amzn-sagemaker-session-id", "NEW_SESSION", True),
        ("x-amzn-sagemaker-session-id", "s" * 256, True),
        ("x-amzn-sagemaker-session-id", "s" * 257, False),
        ("x-amzn-sagemaker-target-model", " model.tar.gz", False),
        ("x-amzn-sagemaker-enable-explanations", "`true`", True),
        ("content-type", "text/csv\x01", False),
        ("accept", "a" * 1024, True),
        ("accept", "a" * 1025, False),
    ],
)
def test_invoke_endpoint_header_rules(header, value, ok):
    """Each header's own limits from the model, on top of 1024 printable ASCII characters."""
    check_rule(INVOKE.request_headers[header], value, ok)


@pytest.mark.parametrize(
    ("header", "value", "ok"),
    [
        ("x-amzn-sagemaker-requestttlseconds", "60", True),
        ("x-amzn-sagemaker-requestttlseconds", "30", False),
        ("x-amzn-sagemaker-requestttlseconds", "21601", False),
        ("x-amzn-sagemaker-requestttlseconds", "6O", False),
        ("x-amzn-sagemaker-invocationtimeoutseconds", "3600", True),
        ("x-amzn-sagemaker-invocationtimeoutseconds", "4000", False),
        ("x-amzn-sagemaker-inputlocation", "s3://bucket/key", True),
        ("x-amzn-sagemaker-inputlocation", "https://bucket.example/key", True),
        ("x-amzn-sagemaker-inputlocation", "ftp://bucket/key", False),
    ],
)
def test_async_header_rules(header, value, ok):
    """Integer ranges and the InputLocation scheme of InvokeEndpointAsync."""
    check_rule(ASYNC.request_headers[header], value, ok)


def check_rule(rule, value: str, ok: bool) -> None:
    """``value`` passes ``rule`` unchanged, or is refused with an error naming the header."""
    if ok:
        assert validate_header(rule, value) == value
    else:
        with pytest.raises(ValidationError, match=rule.wire_name):
            validate_header(rule, value)


def test_request_headers_are_an_allowlist_under_canonical_names():
    """Only the operation's headers survive, renamed to the model's spelling, values unchanged."""
    selected = select_request_headers(
        INVOKE,
        [
            ("content-type", "text/csv"),
            ("authorization", "AWS4-HMAC-SHA256 ..."),
            ("x-amzn-sagemaker-target-variant", "A"),
            ("cookie", "x=1"),
            ("x-forwarded-for", "10.0.0.1"),
        ],
    )
    assert selected == [("Content-Type", "text/csv"), ("X-Amzn-SageMaker-Target-Variant", "A")]


def test_the_async_content_type_is_its_own_header():
    """InvokeEndpointAsync takes X-Amzn-SageMaker-Content-Type, not Content-Type."""
    selected = select_request_headers(
        ASYNC, [("Content-Type", "text/csv"), ("X-Amzn-SageMaker-Content-Type", "text/csv")]
    )
    assert selected == [("X-Amzn-SageMaker-Content-Type", "text/csv")]


def test_response_headers_are_an_allowlist():
    """Set-Cookie and private headers are dropped; the API's own come back unchanged."""
    allowed = frozenset({"content-type", "x-amzn-requestid"})
    upstream = [("Content-Type", "a/b"), ("Set-Cookie", "x"), ("x-amzn-RequestId", "r")]
    assert select_response_headers(allowed, upstream) == [
        ("Content-Type", "a/b"), ("x-amzn-RequestId", "r"),
    ]  # fmt: skip


def test_body_limits_follow_config_and_never_pass_the_model():
    """The configured limit applies, capped by the model (6 MiB; 128,000 bytes for async)."""
    assert body_limit(INVOKE, 5_242_880) == 5_242_880
    assert body_limit(INVOKE, 100 * 1024 * 1024) == 6_291_456
    assert body_limit(ASYNC, 5_242_880) == 128_000
    validate_content_length(5_242_880, 5_242_880)
    validate_content_length(None, 5_242_880)
    with pytest.raises(PayloadTooLarge):
        validate_content_length(5_242_881, 5_242_880)
