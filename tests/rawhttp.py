"""A tiny HTTP/1.1 client over a raw socket, for requests no well-behaved client would send."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


async def raw_request(host: str, port: int, data: bytes, *, timeout_s: float = 10.0) -> RawResponse:
    """Send ``data`` as-is on a new connection and read one response (the server closes after)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(data)
            await writer.drain()
            return await read_response(reader)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """Read one response: its head, then a body framed by Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        body = b"".join(parts)
    else:
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
    return RawResponse(int(status_line.split()[1]), headers, body)


def build_request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | list[tuple[bytes, bytes]],
    body: bytes = b"",
) -> bytes:
    """Request bytes with exactly these headers (plus Host and Connection: close if absent)."""
    lines = [f"{method} {target} HTTP/1.1".encode()]
    names = set()
    for name, value in headers:
        name_b = name if isinstance(name, bytes) else name.encode()
        value_b = value if isinstance(value, bytes) else value.encode()
        names.add(name_b.lower())
        lines.append(name_b + b": " + value_b)
    if b"host" not in names:
        lines.append(b"Host: gateway.test")
    if b"connection" not in names:
        lines.append(b"Connection: close")
    if b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
