"""What crosses the gateway in each direction, and what it answers itself, over raw HTTP."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.credentials import CredentialSource
from tests.rawhttp import build_request, raw_request

#: Headers the gateway itself adds to every forwarded request: framing and the signature.
SIGNING_HEADERS = {"host", "x-amz-date", "authorization", "content-length"}


def names(entry) -> set[str]:
    return {name.lower() for name, _ in entry.headers}


async def test_headers_outside_the_api_never_reach_the_upstream(gateway, journal):
    """Cookie, Authorization, X-Amz-*, X-Forwarded-*, Forwarded, Proxy-* and junk are dropped."""
    hostile = [
        ("Cookie", "session=stolen"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDCALLER/x, Signature=00"),
        ("X-Amz-Date", "20000101T000000Z"),
        ("X-Amz-Security-Token", "caller-token"),
        ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=10.0.0.1"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("X-Junk", "junk"),
        ("X-Amzn-SageMaker-Not-A-Header", "junk"),
        ("Content-Type", "application/json"),
    ]
    request = build_request("POST", "/endpoints/echo/invocations", hostile, b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 200
    assert len(journal) == 1 and journal[0].signature_ok
    assert names(journal[0]) == SIGNING_HEADERS | {"content-type"}
    sent_values = " ".join(value for _, value in journal[0].headers)
    for stripped in ("stolen", "AKIDCALLER", "caller-token", "10.0.0.1", "evil", "junk"):
        assert stripped not in sent_values


async def test_only_the_apis_response_headers_come_back(gateway):
    """The emulator's private header and cookie stay behind; the API's headers come back."""
    async with aiohttp.ClientSession() as session, session.post(
        gateway.make_url("/endpoints/echo/invocations"),
        data=b"{}",
        headers={"Content-Type": "application/json",
                 "X-Amzn-SageMaker-Custom-Attributes": "k=v"},
    ) as response:  # fmt: skip
        assert response.status == 200
        returned = {name.lower() for name in response.headers}
    assert "x-emulator-private" not in returned
    assert "set-cookie" not in returned
    assert {"content-type", "x-amzn-invoked-production-variant",
            "x-amzn-sagemaker-custom-attributes", "x-amzn-requestid"} <= returned  # fmt: skip
    assert returned <= {
        "content-type", "content-length", "x-amzn-invoked-production-variant",
        "x-amzn-sagemaker-custom-attributes", "x-amzn-requestid", "date", "server",
    }  # fmt: skip


async def test_a_chunked_body_over_the_limit_is_413_and_not_forwarded(gateway, journal):
    """Without Content-Length the body is counted as it arrives and refused past 5,242,880."""

    async def chunks():
        for _ in range(80):  # 80 x 65,536 = 5,242,880, then one byte more
            yield b"z" * 65_536
        yield b"!"

    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.make_url("/endpoints/echo/invocations"), data=chunks()) as response,
    ):
        assert response.status == 413
        assert response.headers["x-amzn-ErrorType"] == "ValidationError"
    assert journal == []


async def test_a_chunked_body_at_the_limit_is_forwarded(gateway, journal):
    """A chunked body of exactly 5,242,880 bytes is forwarded with its length."""

    async def chunks():
        for _ in range(80):
            yield b"z" * 65_536

    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.make_url("/endpoints/echo/invocations"), data=chunks()) as response,
    ):
        assert response.status == 200
        assert len(await response.read()) == 5_242_880
    assert journal[0].body_length == 5_242_880


@pytest.mark.parametrize(
    "header",
    [
        (b"X-Amzn-SageMaker-Custom-Attributes", "caf\u00e9".encode()),
        (b"X-Amzn-SageMaker-Target-Model", "\u6a21\u578b".encode()),
        (b"Accept", b"\xff\xfe"),
    ],
)
async def test_a_non_ascii_header_value_is_refused(gateway, journal, header):
    """Header values outside printable US-ASCII are a ValidationError naming the header."""
    request = build_request("POST", "/endpoints/echo/invocations", [header], b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert header[0].decode() in response.json()["message"]
    assert journal == []


@pytest.mark.parametrize(
    "target",
    [
        "/endpoints/..%2Fadmin/invocations",
        "/endpoints/a%2Fb/invocations",
        "/endpoints/a%40b/invocations",
        "/endpoints/a@b/invocations",
        "/endpoints/%65cho/invocations",
    ],
)
async def test_an_encoded_endpoint_name_is_refused_as_sent(gateway, journal, target):
    """Percent-encoded names are checked before decoding: never normalised into a valid one."""
    request = build_request("POST", target, [], b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 400
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert journal == []


async def test_two_values_for_one_header_are_refused(gateway, journal):
    """A repeated API header leaves no single value to forward: ValidationError."""
    headers = [("X-Amzn-SageMaker-Target-Variant", "A"), ("X-Amzn-SageMaker-Target-Variant", "B")]
    request = build_request("POST", "/endpoints/echo/invocations", headers, b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 400
    assert "more than once" in response.json()["message"]
    assert journal == []


async def test_a_query_string_is_refused(gateway, journal):
    """The runtime takes no query parameters; one is refused rather than silently dropped."""
    request = build_request("POST", "/endpoints/echo/invocations?x=1", [], b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 400
    assert journal == []


@pytest.mark.parametrize(
    "target", ["/", "/endpoints", "/endpoints/echo", "/endpoints/echo/other", "/admin", "/ping"]
)
async def test_an_unknown_path_is_a_sagemaker_shaped_404(gateway, journal, target):
    """Paths the runtime does not have: 404 with an ErrorType, a JSON message and a request id."""
    response = await raw_request(gateway.host, gateway.port, build_request("POST", target, []))
    assert response.status == 404
    assert response.headers["x-amzn-errortype"] == "UnknownOperationException"
    assert response.headers["x-amzn-requestid"]
    assert response.json()["message"]
    assert journal == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/endpoints/echo/invocations"),
        ("PUT", "/endpoints/echo/invocations"),
        ("DELETE", "/endpoints/echo/async-invocations"),
        ("POST", "/healthz"),
        ("POST", "/metrics"),
    ],
)
async def test_a_wrong_method_is_a_sagemaker_shaped_405(gateway, journal, method, target):
    """A known path with the wrong method: 405, Allow, ErrorType and JSON message."""
    response = await raw_request(gateway.host, gateway.port, build_request(method, target, []))
    assert response.status == 405
    assert response.headers["x-amzn-errortype"]
    assert response.headers["allow"]
    assert response.json()["message"]
    assert journal == []


async def test_healthz_answers_without_credentials_or_upstream(start_gateway):
    """/healthz is 200 with no credentials and an upstream that cannot be reached."""
    gateway = await start_gateway(
        credentials=CredentialSource(lambda: None), upstream_url="http://127.0.0.1:9"
    )
    response = await raw_request(gateway.host, gateway.port, build_request("GET", "/healthz", []))
    assert response.status == 200


async def test_readyz_reflects_whether_requests_can_be_signed(start_gateway, gateway):
    """/readyz is 200 with credentials and 503 without."""
    ready = await raw_request(gateway.host, gateway.port, build_request("GET", "/readyz", []))
    assert ready.status == 200
    bare = await start_gateway(credentials=CredentialSource(lambda: None))
    unready = await raw_request(bare.host, bare.port, build_request("GET", "/readyz", []))
    assert unready.status == 503


async def test_without_credentials_requests_fail_closed(start_gateway, journal):
    """No credentials: 503 ServiceUnavailable, and nothing is forwarded unsigned."""
    gateway = await start_gateway(credentials=CredentialSource(lambda: None))
    request = build_request("POST", "/endpoints/echo/invocations", [], b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 503
    assert response.headers["x-amzn-errortype"] == "ServiceUnavailable"
    assert journal == []


async def test_an_unreachable_upstream_is_a_503(start_gateway):
    """A refused connection to the upstream: 503 ServiceUnavailable, quickly."""
    gateway = await start_gateway(upstream_url="http://127.0.0.1:9")
    request = build_request("POST", "/endpoints/echo/invocations", [], b"{}")
    response = await raw_request(gateway.host, gateway.port, request)
    assert response.status == 503
    assert response.headers["x-amzn-errortype"] == "ServiceUnavailable"
