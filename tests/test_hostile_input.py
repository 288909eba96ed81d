"""Hostile raw requests: each gets a 4xx or a closed connection, and none reaches the upstream."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ValidationError
from gateway.headers import select_request_headers
from gateway.operations import load_operations
from gateway.validation import validate_framing

INVOKE = load_operations()["invocations"]
TARGET = b"/endpoints/echo/invocations"


def request_bytes(head_lines: list[bytes], body: bytes = b"", target: bytes = TARGET) -> bytes:
    lines = [b"POST " + target + b" HTTP/1.1", b"Host: gateway.test", *head_lines]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


HOSTILE = {
    "content-length-and-chunked": request_bytes(
        [b"Content-Length: 5", b"Transfer-Encoding: chunked"], b"0\r\n\r\n"
    ),
    "two-content-lengths": request_bytes([b"Content-Length: 2", b"Content-Length: 3"], b"{}"),
    "negative-content-length": request_bytes([b"Content-Length: -1"], b"{}"),
    "content-length-with-sign": request_bytes([b"Content-Length: +2"], b"{}"),
    "obs-fold": request_bytes(
        [b"Content-Length: 2", b"X-Amzn-SageMaker-Custom-Attributes: a", b" folded"], b"{}"
    ),
    "control-character-in-value": request_bytes(
        [b"Content-Length: 2", b"X-Amzn-SageMaker-Custom-Attributes: a\x01b"], b"{}"
    ),
    "control-character-in-junk-header": request_bytes(
        [b"Content-Length: 2", b"X-Junk: a\x7fb"], b"{}"
    ),
    "non-ascii-header-name": request_bytes([b"Content-Length: 2", b"X-J\xffnk: a"], b"{}"),
    "70kb-header": request_bytes([b"Content-Length: 2", b"X-Big: " + b"a" * 70_000], b"{}"),
    "many-headers": request_bytes(
        [b"Content-Length: 2", *(b"X-H%d: v" % i for i in range(300))], b"{}"
    ),
    "dot-dot-path": request_bytes([b"Content-Length: 2"], b"{}", b"/endpoints/../echo/invocations"),
    "dot-dot-name": request_bytes([b"Content-Length: 2"], b"{}", b"/endpoints/../invocations"),
    "encoded-slash": request_bytes(
        [b"Content-Length: 2"], b"{}", b"/endpoints/echo%2F..%2Fx/invocations"
    ),
    "absolute-form-metadata": request_bytes(
        [b"Content-Length: 2"], b"{}", b"http://169.254.169.254/latest/meta-data/"
    ),
    "absolute-form-endpoint": request_bytes(
        [b"Content-Length: 2"], b"{}", b"http://169.254.169.254/endpoints/echo/invocations"
    ),
    "bare-lf-line-endings": b"POST /endpoints/echo/invocations HTTP/1.1\nHost: x\n"
    b"Content-Length: 2\n\n{}",
    "space-before-colon": request_bytes([b"Content-Length : 2"], b"{}"),
    "null-byte-in-target": request_bytes([b"Content-Length: 2"], b"{}", b"/endpoints/ec\x00ho/x"),
}


async def send_raw(port: int, data: bytes) -> bytes:
    """Send raw bytes and read whatever comes back until the server closes (5 s at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(65_536)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_a_hostile_request_is_refused_and_never_forwarded(gateway, journal, name):
    """A 4xx with a SageMaker error type, or a closed connection; the upstream sees nothing."""
    answer = await send_raw(gateway.port, HOSTILE[name])
    assert journal == []
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        status = int(status_line.split()[1])
        assert 400 <= status < 500, status_line
        assert b"x-amzn-errortype:" in answer.lower()


async def test_a_well_formed_request_still_passes_after_hostile_ones(gateway, journal):
    """The hostile cases do not wedge the gateway: a clean request is forwarded."""
    for data in HOSTILE.values():
        await send_raw(gateway.port, data)
    answer = await send_raw(
        gateway.port, request_bytes([b"Content-Length: 2", b"Connection: close"], b"{}")
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert len(journal) == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "Content-Type",
                    "Cookie",
                    "X-Amzn-SageMaker-Target-Model",
                    "X-Amz-Date",
                    "Authorization",
                    "X-Forwarded-For",
                    "X-Amzn-SageMaker-Custom-Attributes",
                    "Accept",
                    "X-Junk",
                ]
            ),
            st.text(
                alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                min_size=1,
                max_size=40,
            ).filter(lambda v: not v.startswith(" ")),
        ),
        max_size=8,
        unique_by=lambda pair: pair[0].lower(),
    )
)
def test_only_the_operations_headers_can_ever_be_selected(headers):
    """Whatever headers arrive, the forwarded set is a subset of the operation's own."""
    try:
        selected = select_request_headers(INVOKE, headers)
    except ValidationError:
        return
    assert {name.lower() for name, _ in selected} <= set(INVOKE.request_headers)
    assert all(
        name.lower() not in {"cookie", "authorization", "x-amz-date", "x-forwarded-for", "x-junk"}
        for name, _ in selected
    )


TOKEN_BYTES = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_framing_accepts_exactly_rfc_9110_field_bytes(name, value):
    """A name must be a token; a value may hold visible ASCII, SP, HTAB and obs-text (0x80 to
    0xFF), and no other control character (RFC 9110 sections 5.1, 5.5)."""
    ok = (
        bool(name)
        and all(b in TOKEN_BYTES for b in name)
        and all(0x20 <= b <= 0x7E or b == 9 or b >= 0x80 for b in value)
    )
    try:
        validate_framing("/endpoints/x/invocations", [(name, value)])
    except ValidationError:
        assert not ok
    else:
        assert ok


@given(st.text(max_size=60))
def test_framing_accepts_only_origin_form_targets(target):
    """Only targets that start with '/' pass; absolute and asterisk forms never do."""
    try:
        validate_framing(target, [])
    except ValidationError:
        assert not target.startswith("/")
    else:
        assert target.startswith("/")
