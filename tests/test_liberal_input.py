"""Where the gateway is liberal, because real clients differ harmlessly, and where it stays
strict, because ambiguity could be abused: upgrades, repeated fields, obs-text, Host.

Each case is a raw request on a real socket; the emulator's journal shows what was forwarded.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.rawhttp import build_request, raw_request, read_response

INVOKE = "/endpoints/echo/invocations"
#: What Java's HttpClient (and ``curl --http2``) adds to every plain-http request.
H2C = [
    ("Connection", "Upgrade, HTTP2-Settings"),
    ("Upgrade", "h2c"),
    ("HTTP2-Settings", "AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA"),
]
UPGRADE_FIELDS = {"upgrade", "http2-settings", "connection"}


def names(entry) -> set[str]:
    return {name.lower() for name, _ in entry.headers}


def values(entry, name: str) -> list[str]:
    return [value for key, value in entry.headers if key.lower() == name]


async def exchange(gateway, data: bytes, answers: int = 1):
    """Send ``data`` in one write and read ``answers`` responses from the same connection."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        async with asyncio.timeout(10):
            writer.write(data)
            await writer.drain()
            return [await read_response(reader) for _ in range(answers)]
    finally:
        writer.close()


def head(method: str, target: str, lines: list[bytes], version: bytes = b"HTTP/1.1") -> bytes:
    return b"\r\n".join([f"{method} {target} ".encode() + version, *lines]) + b"\r\n\r\n"


@pytest.mark.parametrize("body", [b"", b'{"x": 1}'], ids=["no-body", "with-body"])
async def test_an_h2c_upgrade_is_ignored_and_answered_in_http_1_1(gateway, journal, body):
    """Connection: Upgrade, HTTP2-Settings / Upgrade: h2c: a plain HTTP/1.1 200 with the
    model's answer (RFC 9110 section 7.8), and none of the three fields is forwarded."""
    request = build_request("POST", INVOKE, [*H2C, ("Content-Type", "application/json")], body)
    [response] = await exchange(gateway, request)
    assert (response.status, response.body) == (200, body)
    assert "upgrade" not in response.headers
    assert len(journal) == 1 and journal[0].body_length == len(body)
    assert not names(journal[0]) & UPGRADE_FIELDS


async def test_the_connection_stays_usable_after_an_ignored_upgrade(gateway, journal):
    """An upgrade request with a body, then a plain request pipelined behind it on the same
    connection: both answered in order, each with its own body."""
    first = build_request("POST", INVOKE, [*H2C[:2], ("Content-Length", "3")], b"one")
    second = build_request("POST", INVOKE, [("Connection", "keep-alive")], b"two")
    answers = await exchange(gateway, first + second, answers=2)
    assert [(a.status, a.body) for a in answers] == [(200, b"one"), (200, b"two")]
    assert [entry.body_length for entry in journal] == [3, 3]


async def test_an_upgrade_with_a_chunked_body_is_read_whole(gateway, journal):
    """The body after an ignored upgrade is framed as usual, chunked included."""
    request = head(
        "POST", INVOKE,
        [b"Host: g", b"Connection: Upgrade", b"Upgrade: h2c", b"Transfer-Encoding: chunked"],
    ) + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"  # fmt: skip
    [response] = await exchange(gateway, request)
    assert (response.status, response.body) == (200, b"abcde")
    assert len(journal) == 1


async def test_a_websocket_upgrade_on_a_route_that_is_not_ours_is_a_404(gateway, journal):
    """Ignoring the Upgrade leaves an ordinary GET of an unknown path."""
    lines = [
        b"Host: g",
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
    ]
    request = head("GET", "/chat", lines)
    [response] = await exchange(gateway, request)
    assert response.status == 404
    assert response.headers["x-amzn-errortype"] == "UnknownOperationException"
    assert journal == []


async def test_connect_is_a_405_and_what_follows_is_never_read_as_http(gateway, journal):
    """CONNECT would make a tunnel: 405, the connection closes, and a request written after
    it (as a tunnel's bytes) is not answered."""
    tunnelled = build_request("POST", INVOKE, [], b"{}")
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    async with asyncio.timeout(10):
        writer.write(head("CONNECT", "169.254.169.254:80", [b"Host: 169.254.169.254:80"]))
        writer.write(tunnelled)
        response = await read_response(reader)
        rest = await reader.read()
    writer.close()
    assert response.status == 405
    assert rest == b""
    assert journal == []


async def test_repeated_accept_fields_are_combined_in_order(gateway, journal):
    """Accept: text/csv then Accept: application/json reaches the upstream as one field,
    ``text/csv, application/json`` (RFC 9110 section 5.3)."""
    headers = [("Accept", "text/csv"), ("Accept", "application/json")]
    response = await raw_request(gateway.host, gateway.port, build_request("POST", INVOKE, headers))
    assert response.status == 200
    assert values(journal[0], "accept") == ["text/csv, application/json"]


async def test_a_combined_accept_over_1024_characters_is_refused(gateway, journal):
    """The combined value is what is validated: two halves that fit alone do not together."""
    headers = [("Accept", "a" * 600), ("Accept", "b" * 600)]
    response = await raw_request(gateway.host, gateway.port, build_request("POST", INVOKE, headers))
    assert response.status == 400
    assert "Value at 'Accept'" in response.json()["message"]
    assert "1024" in response.json()["message"]
    assert journal == []


async def test_repeated_async_accept_fields_are_combined(gateway, journal):
    """InvokeEndpointAsync's X-Amzn-SageMaker-Accept is list-valued too."""
    headers = [
        ("X-Amzn-SageMaker-InputLocation", "s3://bucket/input.json"),
        ("X-Amzn-SageMaker-Accept", "text/csv"),
        ("X-Amzn-SageMaker-Accept", "application/json"),
    ]
    request = build_request("POST", "/endpoints/async/async-invocations", headers)
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 202
    assert values(journal[0], "x-amzn-sagemaker-accept") == ["text/csv, application/json"]


@pytest.mark.parametrize(
    ("target", "field"),
    [(INVOKE, "Content-Type"),
     ("/endpoints/async/async-invocations", "X-Amzn-SageMaker-Content-Type")],
)  # fmt: skip
async def test_a_repeated_content_type_forwards_its_first_value(gateway, journal, target, field):
    """Two media types for one body: the first is forwarded and signed, the second dropped."""
    headers = [(field, "text/csv"), (field, "application/json")]
    if "async" in target:
        headers.append(("X-Amzn-SageMaker-InputLocation", "s3://bucket/input.csv"))
    response = await raw_request(gateway.host, gateway.port, build_request("POST", target, headers))
    assert response.status in (200, 202)
    assert values(journal[0], field.lower()) == ["text/csv"]
    assert journal[0].signature_ok


@pytest.mark.parametrize(
    "lines",
    [
        [b"Host: g", b"Content-Length: 2", b"Content-Length: 2"],
        [b"Host: g", b"Host: h", b"Content-Length: 2"],
        [b"Host: g", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    ],
    ids=["two-content-lengths", "two-hosts", "two-transfer-encodings"],
)
async def test_repeated_framing_and_routing_fields_are_refused(gateway, journal, lines):
    """Content-Length, Transfer-Encoding and Host repeated, even with equal values: 400."""
    [response] = await exchange(gateway, head("POST", INVOKE, lines) + b"{}")
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert journal == []


async def test_obs_text_in_a_header_that_is_not_forwarded_is_accepted(gateway, journal):
    """User-Agent: café in UTF-8 (obs-text, RFC 9110 section 5.5): 200, and it is dropped."""
    request = build_request("POST", INVOKE, [(b"User-Agent", "café".encode())], b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 200
    assert "user-agent" not in names(journal[0])


async def test_obs_text_in_an_api_header_is_a_validation_error_naming_it(gateway, journal):
    """The API's own headers keep the service model's rule: printable US-ASCII."""
    field = "X-Amzn-SageMaker-Custom-Attributes"
    request = build_request("POST", INVOKE, [(field.encode(), "café".encode())], b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert f"Value at '{field}'" in response.json()["message"]
    assert journal == []


@pytest.mark.parametrize("byte", [b"\x01", b"\x1f", b"\x7f", b"\x00"])
async def test_control_characters_stay_refused_in_any_header(gateway, journal, byte):
    """A control character other than HTAB, even in a header that is never forwarded: 400."""
    request = head("POST", INVOKE, [b"Host: g", b"Content-Length: 2", b"User-Agent: a" + byte])
    [response] = await exchange(gateway, request + b"{}")
    assert response.status == 400
    assert journal == []


async def test_trailing_whitespace_is_not_part_of_a_value(gateway, journal):
    """``Content-Type: text/plain<SP><SP>`` and ``text/plain<TAB>`` are forwarded as
    ``text/plain`` (RFC 9110 section 5.5: surrounding whitespace is not part of the value)."""
    for suffix in (b"  ", b"\t"):
        lines = [b"Host: g", b"Content-Length: 2", b"Content-Type: text/plain" + suffix]
        [response] = await exchange(gateway, head("POST", INVOKE, lines) + b"{}")
        assert response.status == 200
    assert [values(entry, "content-type") for entry in journal] == [["text/plain"]] * 2
