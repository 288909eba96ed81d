"""Kubernetes service-account tokens: verified locally against a JWKS served on loopback.

Tokens are signed by test keys; the JWKS is served by an HTTP server in the test, fetched by
the gateway with a deadline. boto3 sends each token through botocore's before-send event (the
README's snippet). Nothing refused ever reaches the emulator.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from tests.conftest import make_runtime_client
from tests.tenancy_support import (
    AUDIENCE,
    ISSUER,
    TEAM_A_SCORER,
    Issuer,
    JwksServer,
    P,
    error_of,
    hs256_with_public_key,
    invoke,
    runtime_client,
    unsigned_token,
    with_changed_payload,
    write_policy,
)
from tests.waiting import poll

POLICY = """
[[callers]]
name = "team-a"
identities = ["system:serviceaccount:team-a:*"]
endpoints = ["echo", "team-a-*"]
"""


@pytest.fixture
async def jwks_server(issuer):
    server = await JwksServer(issuer.jwks()).start()
    yield server
    await server.close()


@pytest.fixture
async def token_gateway(start_gateway, jwks_server, clock, tmp_path):
    """A gateway taking tokens for AUDIENCE from ISSUER, keys from the loopback JWKS URL."""
    return await start_gateway(
        clock=clock,
        token_audience=AUDIENCE,
        token_issuer=ISSUER,
        jwks_url=jwks_server.url,
        jwks_refresh_interval_s=0.3,
        jwks_fetch_timeout_s=1.0,
        jwks_max_age_s=3600.0,
        policy_file=write_policy(tmp_path, POLICY),
    )


def url_of(gateway) -> str:
    return str(gateway.make_url("")).rstrip("/")


def rejected(registry, reason: str) -> float:
    return registry.get_sample_value(P + "rejected_requests_total", {"reason": reason}) or 0


async def test_a_valid_token_is_served_counted_under_its_caller_and_never_forwarded(
    token_gateway, issuer, journal, registry
):
    """A team-a token is served; upstream sees the gateway's SigV4, not the token; the call
    counts under caller="team-a" and the access line names the service account."""
    token = issuer.token()
    with capture_logs() as logs:
        response = await invoke(runtime_client(url_of(token_gateway), token=token))
    assert response["Body"] == b"{}"
    (entry,) = journal
    authorization = dict((k.lower(), v) for k, v in entry.headers)["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 ") and token not in authorization
    labels = {"endpoint": "echo", "variant": "AllTraffic", "operation": "InvokeEndpoint",
              "caller": "team-a"}  # fmt: skip
    assert (
        registry.get_sample_value(P + "requests_total", {**labels, "status": "200", "error": ""})
        == 1
    )
    assert registry.get_sample_value(P + "request_duration_seconds_count", labels) == 1
    (line,) = [entry for entry in logs if entry.get("event") == "request"]
    assert line["caller"] == TEAM_A_SCORER
    assert not any(token in repr(entry) for entry in logs)


async def test_an_es256_token_is_served(token_gateway, issuer, journal):
    """The EC key of the JWKS verifies ES256 tokens."""
    await invoke(runtime_client(url_of(token_gateway), token=issuer.token(ec_key=True)))
    assert len(journal) == 1


#: A key of nobody's JWKS (made once: key generation would hold up the event loop mid-test).
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def bad_tokens(issuer: Issuer) -> dict[str, str]:
    now = int(time.time())
    stranger = STRANGER
    good = issuer.token()
    unknown_kid = jwt.encode(issuer.claims(), stranger, "RS256", {"kid": "not-in-the-jwks"})
    other_key = jwt.encode(issuer.claims(), stranger, "RS256", {"kid": issuer.rsa_kid})
    return {
        "expired": issuer.token(iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not yet valid": issuer.token(nbf=now + 3600, exp=now + 7200),
        "wrong audience": issuer.token(aud=["kubernetes.default.svc"]),
        "wrong issuer": issuer.token(iss="https://evil.example"),
        "unknown kid": unknown_kid,
        "right kid, other key": other_key,
        "alg none": unsigned_token(issuer.claims(), {"alg": "none", "kid": issuer.rsa_kid}),
        "HS256 keyed with the public key": hs256_with_public_key(issuer),
        "changed payload": with_changed_payload(good, sub="system:serviceaccount:team-b:x"),
        "no exp": issuer.token(exp=None),
        "no sub": issuer.token(subject=None),  # type: ignore[arg-type]
        "not a JWT": "not.a.jwt",
    }


@pytest.mark.parametrize("kind", list(bad_tokens(Issuer())))
async def test_an_invalid_token_is_refused_as_unrecognized_and_not_forwarded(
    token_gateway, issuer, journal, registry, kind
):
    """Each kind of bad token: 403 UnrecognizedClientException, nothing forwarded, counted
    as rejected for reason unauthenticated, and the token in no log line."""
    token = bad_tokens(issuer)[kind]
    with capture_logs() as logs:
        status, code = await error_of(runtime_client(url_of(token_gateway), token=token))
    assert (status, code) == (403, "UnrecognizedClientException")
    assert journal == []
    assert rejected(registry, "unauthenticated") == 1
    assert not any(token in repr(entry) for entry in logs)


async def test_no_token_is_missing_authentication_even_when_the_client_signs(
    token_gateway, journal, registry
):
    """Without a bearer token (a SigV4 Authorization proves nothing here): 403
    MissingAuthenticationTokenException, nothing forwarded."""
    url = url_of(token_gateway)
    for client in (runtime_client(url), make_runtime_client(url, ("AKIDCALLER", "secret"))):
        assert await error_of(client) == (403, "MissingAuthenticationTokenException")
    assert journal == []
    assert rejected(registry, "unauthenticated") == 2


async def test_the_refusal_message_says_why_without_the_token(token_gateway, issuer):
    """The caller learns its token expired; the answer is AWS-shaped."""
    now = int(time.time())
    token = issuer.token(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    async with (
        aiohttp.ClientSession() as session,
        session.post(token_gateway.make_url("/endpoints/echo/invocations"), data=b"{}",
                     headers={"Authorization": f"Bearer {token}"}) as response,
    ):  # fmt: skip
        body = await response.json()
        assert response.status == 403
        assert response.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
        assert "expired" in body["message"] and token not in body["message"]


async def test_keys_outlive_an_unreachable_jwks_server_until_they_expire(
    token_gateway, issuer, jwks_server, journal, registry, clock
):
    """The JWKS server stops answering: refreshes fail (each cut by its deadline), valid
    tokens are still served with the cached keys; once those are older than jwks_max_age,
    tokens get 503 and nothing is forwarded."""
    client = runtime_client(url_of(token_gateway), token=issuer.token())
    await invoke(client)
    jwks_server.stop_answering()
    await poll(
        lambda: registry.get_sample_value(P + "reload_failed", {"source": "jwks"}) == 1,
        deadline_s=10,
    )
    fresh = runtime_client(url_of(token_gateway), token=issuer.token(jti="another"))
    await invoke(fresh)
    assert len(journal) == 2
    clock.advance(3601)
    assert await error_of(fresh) == (503, "ServiceUnavailable")
    assert await error_of(client) == (503, "ServiceUnavailable")
    assert len(journal) == 2
    async with (
        aiohttp.ClientSession() as session,
        session.get(token_gateway.make_url("/readyz")) as response,
    ):
        assert (response.status, (await response.json())["reason"]) == (503, "no token keys")


async def test_a_new_key_in_the_jwks_is_fetched_for_a_token_that_names_it(
    token_gateway, issuer, jwks_server, journal, clock
):
    """A token signed by a key added to the JWKS after the gateway fetched it is served: an
    unknown kid makes the gateway fetch again (at most every 30 s)."""
    await invoke(runtime_client(url_of(token_gateway), token=issuer.token()))
    rotated = await asyncio.to_thread(Issuer)  # key generation off the event loop
    jwks_server.document = {"keys": issuer.jwks()["keys"] + rotated.jwks()["keys"]}
    clock.advance(31)
    await invoke(runtime_client(url_of(token_gateway), token=rotated.token()))
    assert len(journal) == 2


async def test_a_jwks_file_works_like_the_url(start_gateway, issuer, journal, tmp_path):
    """jwks_file: the same checks against keys read from a file."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    gateway = await start_gateway(
        token_audience=AUDIENCE,
        token_issuer=ISSUER,
        jwks_file=str(path),
        policy_file=write_policy(tmp_path, POLICY),
    )
    await invoke(runtime_client(url_of(gateway), token=issuer.token()))
    assert await error_of(runtime_client(url_of(gateway), token=issuer.token(aud="x"))) == (
        403,
        "UnrecognizedClientException",
    )
    assert len(journal) == 1
