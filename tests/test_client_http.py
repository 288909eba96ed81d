"""Plain HTTP clients nobody on the team wrote, at their defaults: Java's own HttpClient and
``curl --http2``. Both ask for an h2c upgrade on every plain-http request; the gateway ignores
it (RFC 9110 section 7.8) and answers in HTTP/1.1, and nothing of the upgrade is forwarded."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.toolchains import CLIENTS_DIR, require, run_client

JDK_CLIENT = CLIENTS_DIR / "jdk" / "JdkClient.java"
UPGRADE_FIELDS = {"upgrade", "http2-settings", "connection"}


def forwarded_names(journal) -> list[set[str]]:
    return [{name.lower() for name, _ in entry.headers} for entry in journal]


class HeadRecorder:
    """A loopback server that keeps the head of each request and answers 200 in HTTP/1.1:
    what a client sends when nothing in between changes it."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_javas_http_client_at_its_defaults_asks_for_h2c():
    """The premise: HttpClient.newHttpClient() sends Upgrade: h2c and HTTP2-Settings."""
    require("java")
    recorder = HeadRecorder()
    async with recorder as url:
        await run_client(["java", str(JDK_CLIENT), "defaults", url], timeout_s=60)
    first = recorder.heads[0].lower()
    assert b"upgrade: h2c" in first and b"http2-settings:" in first


async def test_javas_http_client_at_its_defaults_is_served(gateway_url, journal):
    """Three calls from one default HttpClient: 200 each, the model's answer, HTTP/1.1; the
    emulator saw no Upgrade, HTTP2-Settings or Connection field."""
    require("java")
    answers = await run_client(["java", str(JDK_CLIENT), "defaults", gateway_url], timeout_s=60)
    assert [(a["status"], json.loads(a["body"])) for a in answers] == [
        (200, {"n": n}) for n in range(3)
    ]
    assert {a["version"] for a in answers} == {"HTTP_1_1"}
    assert len(journal) == 3 and all(entry.signature_ok for entry in journal)
    assert all(not names & UPGRADE_FIELDS for names in forwarded_names(journal))


async def test_javas_http_client_with_repeated_accept_and_content_type(gateway_url, journal):
    """As generated clients send them: Accept twice reaches the upstream combined in order,
    Content-Type twice as its first value; each exactly once."""
    require("java")
    [answer] = await run_client(["java", str(JDK_CLIENT), "repeated", gateway_url], timeout_s=60)
    assert answer["status"] == 200 and answer["body"] == "1,2,3"
    assert answer["headers"]["content-type"] == "text/csv"  # echo answers in the request's type
    [entry] = journal
    forwarded = [(name.lower(), value) for name, value in entry.headers]
    assert [v for n, v in forwarded if n == "accept"] == ["text/csv, application/json"]
    assert [v for n, v in forwarded if n == "content-type"] == ["text/csv"]
    assert entry.signature_ok


async def curl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "20", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_curl_http2_is_answered_in_http_1_1(gateway_url, journal, method):
    """curl --http2 on plain http asks for h2c (verbose output shows it); the gateway answers
    HTTP/1.1: InvokeEndpoint 200 for POST, /healthz 200 for GET."""
    require("curl")
    if method == "POST":
        target = f"{gateway_url}/endpoints/echo/invocations"
        extra = ["--data-binary", '{"curl": true}', "-H", "Content-Type: application/json"]
    else:
        target, extra = f"{gateway_url}/healthz", []
    code, out, err = await curl(
        "--http2", "--verbose", "--write-out", "\n%{http_version} %{http_code}", *extra, target
    )
    assert code == 0, err
    assert "upgrade: h2c" in err.lower()  # what curl sent
    body, _, status = out.rpartition("\n")
    assert status == "1.1 200"
    if method == "POST":
        assert json.loads(body) == {"curl": True}
        assert len(journal) == 1 and journal[0].signature_ok
        assert not forwarded_names(journal)[0] & UPGRADE_FIELDS
    else:
        assert journal == []
