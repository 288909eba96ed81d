"""What a differential test (the gateway beside nginx, aiohttp and a strict RFC 9112 reading)
found the gateway looser or quieter about than it should be, each now a raw-socket case.

Stricter than nginx is fine; looser, or silent, is a finding.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.rawhttp import build_request, read_response

INVOKE = b"/endpoints/echo/invocations"


def request(version: bytes = b"HTTP/1.1", *lines: bytes, body: bytes = b"{}") -> bytes:
    """POST to echo with these lines (Host and Content-Length unless given)."""
    names = {line.split(b":")[0].lower() for line in lines}
    head = [b"POST " + INVOKE + (b" " + version if version else b""), *lines]
    if b"host" not in names:
        head.append(b"Host: gateway.test")
    if b"content-length" not in names and b"transfer-encoding" not in names:
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def converse(gateway, *writes: bytes, half_close: bool = False) -> bytes:
    """Send each write in turn, then read everything the gateway answers until it closes."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def statuses(answer: bytes) -> list[int]:
    """The status of each answer in what was read (bodies here never contain "HTTP/1.")."""
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3})", answer)]


CHUNKED_1_0 = b"\r\n".join(
    [b"POST " + INVOKE + b" HTTP/1.0", b"Host: g", b"Transfer-Encoding: chunked", b"", b""]
)


@pytest.mark.parametrize(
    "data",
    [
        CHUNKED_1_0 + b"2\r\n{}\r\n0\r\n\r\n",
        # A whole second request inside the chunked body.
        CHUNKED_1_0 + b"%x\r\n%b\r\n0\r\n\r\n" % (len(request()), request()),
        # With a Content-Length too: RFC 9112 section 6.1 says faulty all the same.
        CHUNKED_1_0.replace(b"Host: g", b"Host: g\r\nContent-Length: 7") + b"2\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["chunked", "smuggled-request", "with-content-length"],
)
async def test_transfer_encoding_in_http_1_0_is_refused(gateway, journal, data):
    """HTTP/1.0 with Transfer-Encoding: the framing is faulty (RFC 9112 section 6.1): 400,
    and nothing, neither the body nor a request inside it, is forwarded."""
    answer = await converse(gateway, data)
    assert statuses(answer) == [400]
    assert journal == []


@pytest.mark.parametrize(
    ("version", "status"),
    [(b"", 505), (b"HTTP/2.0", 505), (b"HTTP/1.2", 505), (b"HTTP/0.9", 505)],
    ids=["no-version", "2.0", "1.2", "0.9"],
)
async def test_a_request_line_without_http_1_x_is_refused(gateway, journal, version, status):
    """A request line with no version (llhttp reads it as 0.9 and still takes headers and a
    body) or another version than 1.0 and 1.1: refused, never forwarded."""
    answer = await converse(gateway, request(version))
    assert statuses(answer) in ([status], [400], [])
    assert journal == []


@pytest.mark.parametrize(
    "host_lines",
    [[b"Host: a b"], [b"Host: a/b"], [b"Host: evil@good"], [b"Host: a:b"], [b"Host: a:1:2"]],
    ids=["space", "slash", "userinfo", "non-numeric-port", "two-colons"],
)
@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_a_host_that_is_not_host_port_is_refused(gateway, journal, host_lines, version):
    """RFC 9112 section 3.2: a Host field with an invalid value is a 400, in 1.0 and 1.1."""
    answer = await converse(gateway, request(version, *host_lines))
    assert statuses(answer) == [400]
    assert journal == []


async def test_two_hosts_in_http_1_0_are_refused(gateway, journal):
    """Only counted in HTTP/1.1 before: a repeated Host is a 400 in any version."""
    answer = await converse(gateway, request(b"HTTP/1.0", b"Host: a", b"Host: b"))
    assert statuses(answer) == [400]
    assert journal == []


@pytest.mark.parametrize("host", [b"gateway.test:8080", b"127.0.0.1", b"[::1]:80", b""])
async def test_a_valid_host_passes(gateway, journal, host):
    """reg-name, IPv4 and IP-literal hosts, with or without a port, and an empty Host."""
    answer = await converse(gateway, request(b"HTTP/1.1", b"Host: " + host, b"Connection: close"))
    assert statuses(answer) == [200]
    assert len(journal) == 1


def tiny_chunks(count: int) -> bytes:
    head = b"POST " + INVOKE + b" HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"1\r\nx\r\n" * count + b"0\r\n\r\n"


@pytest.mark.parametrize("writes", [1, 6], ids=["one-write", "six-writes"])
async def test_many_tiny_chunks_are_refused_however_they_arrive(gateway, journal, writes):
    """12,000 one-byte chunks: refused in one write as in six (the limit used to count only
    the bytes of reads after the head's)."""
    data = tiny_chunks(12_000)
    step = -(-len(data) // writes)
    answer = await converse(gateway, *(data[i : i + step] for i in range(0, len(data), step)))
    assert statuses(answer) == [400]
    assert b"framing" in answer
    assert journal == []


async def test_a_malformed_request_behind_good_ones_gets_its_400_after_them(gateway, journal):
    """Two good requests and a malformed one in one write: 200, 200, then 400 and the close
    (nginx's answer), and the two good ones forwarded, in order."""
    good = [build_request("POST", INVOKE.decode(), [("Connection", "keep-alive")], b"%d" % n)
            for n in (1, 2)]  # fmt: skip
    malformed = b"POST " + INVOKE + b" HTTP/1.1\r\nHost: g\r\nContent-Length: x\r\n\r\n"
    answer = await converse(gateway, b"".join([*good, malformed]))
    assert statuses(answer) == [200, 200, 400]
    assert [entry.body_length for entry in journal] == [1, 1]


async def test_a_request_sent_with_a_half_close_is_not_forwarded(gateway, journal):
    """A complete request and then a FIN: the caller is taken as gone (as nginx takes it), so
    the request never reaches the model, even with an idle upstream connection ready."""
    # One request first, so that the pool holds an idle connection to send on at once.
    first = await converse(gateway, build_request("POST", INVOKE.decode(), [], b"{}"))
    assert statuses(first) == [200]
    answer = await converse(
        gateway, build_request("POST", INVOKE.decode(), [], b"{}"), half_close=True
    )
    assert answer == b""
    assert len(journal) == 1


async def test_a_head_over_32_kib_is_refused_and_one_under_passes(gateway, journal):
    """The head limit is 32 KiB (the README says so in one place, and means it)."""
    under = request(b"HTTP/1.1", b"X-Pad: " + b"a" * (31 * 1024), b"Connection: close")
    over = request(b"HTTP/1.1", b"X-Pad: " + b"a" * (33 * 1024))
    assert statuses(await converse(gateway, under)) == [200]
    assert statuses(await converse(gateway, over)) == [400]
    assert len(journal) == 1


async def test_a_malformed_answer_is_never_given_to_a_good_request(gateway, journal):
    """A read still answers every good request before a broken one that follows it: the
    answers carry the bodies of their own requests, in order."""
    good = [build_request("POST", INVOKE.decode(), [("Connection", "keep-alive")], b"[%d]" % n)
            for n in range(3)]  # fmt: skip
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(b"".join(good) + b"GARBAGE\r\n\r\n")
    async with asyncio.timeout(10):
        bodies = [(await read_response(reader)).body for _ in range(3)]
        refusal = await read_response(reader)
    writer.close()
    assert bodies == [b"[0]", b"[1]", b"[2]"]
    assert refusal.status == 400
