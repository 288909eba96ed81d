"""What the callers' tests share: certificates (trustme CAs, client certificates with SPIFFE IDs),
service-account tokens signed by a test key, a JWKS served on loopback, a settable clock, and
boto3 clients that present a certificate or send a bearer token. Its fixtures (``issuer``,
``clock``) are loaded for every test module by tests/conftest.py."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import jwt
import pytest
import trustme
from aiohttp import web
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.conftest import REGION

AUDIENCE = "sagemaker-gateway"
ISSUER = "https://kubernetes.default.svc.cluster.local"
TEAM_A_SCORER = "system:serviceaccount:team-a:scorer"
SPIFFE_SCORER = "spiffe://cluster.local/ns/team-a/sa/scorer"
P = "sagemaker_gateway_"


class ManualClock:
    """A clock that moves only when told: token buckets, key ages and circuit breakers see no
    real time pass (the ``clock`` fixture)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def issuer() -> Issuer:
    """The test cluster's token issuer (fresh keys for each test)."""
    return Issuer()


@pytest.fixture
def clock() -> ManualClock:
    """The clock the gateway's token buckets and token-key ages run on, moved by the test."""
    return ManualClock()


# --- certificates --------------------------------------------------------------------------


class Pki:
    """A CA, the gateway's server certificate for 127.0.0.1, and their files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.write("ca.pem", self.ca.cert_pem.bytes())
        self.cert_file = self.write("tls.crt", b"".join(b.bytes() for b in server.cert_chain_pems))
        self.key_file = self.write("tls.key", server.private_key_pem.bytes())

    def write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)

    def client_cert(self, name: str, *, uri: str | None = None, dns: str | None = None) -> tuple:
        """A client certificate this CA signed, with these SANs: (cert file, key file)."""
        return client_cert(self.ca, self.directory, name, uri=uri, dns=dns)


def client_cert(
    ca: trustme.CA, directory: Path, name: str, *, uri: str | None, dns: str | None
) -> tuple[str, str]:
    """trustme issues no URI SANs (SPIFFE IDs): this signs one with the CA's key."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    if uri:
        names.append(x509.UniformResourceIdentifier(uri))
    if dns:
        names.append(x509.DNSName(dns))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    cert_file = directory / f"{name}.crt"
    key_file = directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


# --- tokens --------------------------------------------------------------------------------


class Issuer:
    """A cluster's service-account issuer: an RSA and an EC signing key, and their JWKS."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa_kid = "rsa-" + uuid.uuid4().hex[:8]
        self.ec_kid = "ec-" + uuid.uuid4().hex[:8]

    def claims(self, subject: str = TEAM_A_SCORER, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": [AUDIENCE], "sub": subject, "iat": now,
                  "nbf": now, "exp": now + 600}  # fmt: skip
        claims.update(overrides)
        return {key: value for key, value in claims.items() if value is not None}

    def token(self, subject: str = TEAM_A_SCORER, *, ec_key: bool = False, **claims: Any) -> str:
        """A projected service-account token for ``subject``, as the kubelet mounts one."""
        key, kid, alg = (self.ec, self.ec_kid, "ES256") if ec_key else (
            self.rsa, self.rsa_kid, "RS256")  # fmt: skip
        return jwt.encode(self.claims(subject, **claims), key, algorithm=alg,
                          headers={"kid": kid})  # fmt: skip

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key, kid, alg in ((self.rsa, self.rsa_kid, "RS256"), (self.ec, self.ec_kid, "ES256")):
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        return {"keys": keys}

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWT with ``alg: none``: a header, a payload, no signature."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(issuer: Issuer) -> str:
    """The classic confusion: HMAC keyed with the issuer's public key (PEM bytes)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.rsa_kid}
    signing_input = (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(issuer.claims()).encode())}"
    )
    mac = hmac.new(issuer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def with_changed_payload(token: str, **claims: Any) -> str:
    """``token`` with claims changed in its payload and its signature left as it was."""
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    return f"{header}.{b64(json.dumps(data).encode())}.{signature}"


class JwksServer:
    """The cluster's JWKS on a loopback port; ``stop_answering()`` makes it accept and hang."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        self.answering = True
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.fetches += 1
        if not self.answering:
            await self._release.wait()  # until cleanup: the gateway's deadline must cut it
        return web.json_response(self.document)

    def stop_answering(self) -> None:
        self.answering = False

    async def start(self) -> JwksServer:
        app = web.Application()
        app.router.add_get("/openid/v1/jwks", self._jwks)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/openid/v1/jwks"
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


# --- clients -------------------------------------------------------------------------------


def runtime_client(
    url: str,
    *,
    verify: str | bool = True,
    client_cert: tuple[str, str] | None = None,
    token: str | Callable[[], str] | None = None,
):
    """A boto3 sagemaker-runtime client for the gateway at ``url``, unsigned, presenting
    ``client_cert`` and/or sending ``token`` as a bearer token (README's two snippets)."""
    config = BotoConfig(
        signature_version=UNSIGNED,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        client_cert=client_cert,
    )
    session = boto3.session.Session(region_name=REGION)
    client = session.client("sagemaker-runtime", endpoint_url=url, config=config, verify=verify)
    if token is not None:
        read = token if callable(token) else (lambda: token)

        def add_bearer_token(request, **_):
            request.headers["Authorization"] = f"Bearer {read()}"

        client.meta.events.register("before-send.sagemaker-runtime", add_bearer_token)
    return client


async def invoke(client, endpoint: str = "echo", body: bytes = b"{}") -> dict[str, Any]:
    """invoke_endpoint off the event loop (boto3 blocks); the response with its body read."""

    def call():
        response = client.invoke_endpoint(EndpointName=endpoint, Body=body)
        response["Body"] = response["Body"].read()
        return response

    return await asyncio.to_thread(call)


async def error_of(client, endpoint: str = "echo") -> tuple[int, str]:
    """The (HTTP status, error code) boto3 raises for an invocation that must fail."""
    from botocore.exceptions import ClientError

    try:
        await invoke(client, endpoint)
    except ClientError as error:
        return error.response["ResponseMetadata"]["HTTPStatusCode"], error.response["Error"]["Code"]
    raise AssertionError(f"{endpoint} was served")


def write_policy(directory: Path, text: str, name: str = "policy.toml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def caller_labels(registry) -> set[str]:
    """Every value of the caller label in requests_total and the duration histograms."""
    names = {P + "requests_total", P + "request_duration_seconds_count",
             P + "upstream_duration_seconds_count"}  # fmt: skip
    return {
        sample.labels["caller"]
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name in names
    }
