"""TLS on the signing listener, with real handshakes: client certificates name callers.

Certificates come from trustme CAs (and, for SPIFFE IDs, which trustme does not issue, are
signed with a trustme CA's key). boto3 presents its certificate with ``client_cert`` and
needs no code for it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl

import pytest
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError
from botocore.exceptions import SSLError as BotoSSLError

from tests.tenancy_support import (
    AUDIENCE,
    ISSUER,
    SPIFFE_SCORER,
    P,
    Pki,
    caller_labels,
    client_cert,
    error_of,
    invoke,
    runtime_client,
    write_policy,
)
from tests.waiting import poll

POLICY = f"""
[[callers]]
identities = ["{SPIFFE_SCORER}"]
endpoints = ["*"]

[[callers]]
name = "batch"
identities = ["batch.team-b.svc"]
endpoints = ["echo"]
"""
#: How boto3 reports a handshake the server refused (TLS 1.3 reports it at the first read).
HANDSHAKE_REFUSED = (BotoSSLError, ConnectionClosedError, EndpointConnectionError)


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
async def mtls_gateway(start_gateway, pki, tmp_path):
    """A gateway serving TLS that identifies callers by client certificates only."""
    gateway = await start_gateway(
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        tls_client_ca_file=pki.ca_file,
        tls_reload_interval_s=0.05,
        policy_file=write_policy(tmp_path, POLICY),
    )
    gateway.url = f"https://127.0.0.1:{gateway.port}"
    return gateway


async def test_a_client_certificate_is_served_and_counted_under_its_spiffe_id(
    mtls_gateway, pki, journal, registry
):
    """boto3 with a certificate whose URI SAN is a SPIFFE ID: served, counted under that ID."""
    cert = pki.client_cert("scorer", uri=SPIFFE_SCORER, dns="scorer.team-a.svc")
    client = runtime_client(mtls_gateway.url, verify=pki.ca_file, client_cert=cert)
    response = await invoke(client, body=b'{"x": 1}')
    assert response["Body"] == b'{"x": 1}'
    assert len(journal) == 1
    labels = {"endpoint": "echo", "variant": "AllTraffic", "operation": "InvokeEndpoint",
              "caller": SPIFFE_SCORER, "status": "200", "error": ""}  # fmt: skip
    assert registry.get_sample_value(P + "requests_total", labels) == 1


async def test_without_a_uri_san_the_first_dns_san_is_the_caller(
    mtls_gateway, pki, journal, registry
):
    """A certificate naming only DNS names is the caller of its first one."""
    cert = pki.client_cert("batch", dns="batch.team-b.svc")
    client = runtime_client(mtls_gateway.url, verify=pki.ca_file, client_cert=cert)
    await invoke(client)
    assert await error_of(client, "team-a-x") == (403, "AccessDeniedException")
    assert len(journal) == 1
    assert caller_labels(registry) == {"batch"}


async def test_no_client_certificate_is_refused_at_the_handshake(mtls_gateway, pki, journal):
    """Without a certificate boto3 cannot even connect; nothing reaches the emulator."""
    client = runtime_client(mtls_gateway.url, verify=pki.ca_file)
    with pytest.raises(HANDSHAKE_REFUSED):
        await invoke(client)
    assert journal == []


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    mtls_gateway, pki, journal, tmp_path
):
    """A SPIFFE ID signed by a CA the gateway does not trust proves nothing."""
    import trustme

    other = client_cert(trustme.CA(), tmp_path, "impostor", uri=SPIFFE_SCORER, dns=None)
    client = runtime_client(mtls_gateway.url, verify=pki.ca_file, client_cert=other)
    with pytest.raises(HANDSHAKE_REFUSED):
        await invoke(client)
    assert journal == []


async def test_a_certificate_naming_nobody_is_unrecognized(mtls_gateway, pki, journal):
    """A trusted certificate with no URI or DNS SAN: 403 UnrecognizedClientException."""
    client = runtime_client(
        mtls_gateway.url, verify=pki.ca_file, client_cert=pki.client_cert("anonymous")
    )
    assert await error_of(client) == (403, "UnrecognizedClientException")
    assert journal == []


async def test_with_tokens_too_a_certificate_is_optional(
    start_gateway, pki, journal, tmp_path, registry, issuer
):
    """Certificates and tokens together: the handshake asks for a certificate without
    requiring one; a caller with neither gets MissingAuthenticationTokenException."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    policy = POLICY + '\n[[callers]]\nname = "team-a"\nidentities = ["system:*:team-a:*"]\n'
    policy += 'endpoints = ["echo"]\n'
    gateway = await start_gateway(
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        tls_client_ca_file=pki.ca_file,
        token_audience=AUDIENCE,
        token_issuer=ISSUER,
        jwks_file=str(jwks),
        policy_file=write_policy(tmp_path, policy),
    )
    url = f"https://127.0.0.1:{gateway.port}"
    cert = pki.client_cert("scorer", uri=SPIFFE_SCORER)
    await invoke(runtime_client(url, verify=pki.ca_file, client_cert=cert))
    await invoke(runtime_client(url, verify=pki.ca_file, token=issuer.token()))
    assert await error_of(runtime_client(url, verify=pki.ca_file)) == (
        403,
        "MissingAuthenticationTokenException",
    )
    assert len(journal) == 2
    assert caller_labels(registry) == {SPIFFE_SCORER, "team-a"}


async def fetch_on(reader, writer, path: str = "/healthz") -> bytes:
    """One keep-alive GET on an open connection; the status line."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        status = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        await reader.readexactly(len(b'{"status": "ok"}'))
    return status


async def test_rotated_files_serve_new_connections_and_keep_open_ones(
    mtls_gateway, pki, tmp_path, registry
):
    """The certificate and CA are replaced in place (a new CA, as after a re-issue): new
    handshakes get the new certificate and trust the new CA; a connection opened before
    keeps working on its old session."""
    cert = pki.client_cert("scorer", uri=SPIFFE_SCORER)
    old_context = ssl.create_default_context(cafile=pki.ca_file)
    old_context.load_cert_chain(*cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", mtls_gateway.port, ssl=old_context)
    assert await fetch_on(reader, writer) == b"HTTP/1.1 200 OK\r\n"

    (tmp_path / "rotated").mkdir()
    rotated = Pki(tmp_path / "rotated")
    for source, target in ((rotated.cert_file, pki.cert_file), (rotated.key_file, pki.key_file),
                           (rotated.ca_file, pki.ca_file)):  # fmt: skip
        shutil.copyfile(source, target)
    loaded = registry.get_sample_value(P + "reload_timestamp_seconds", {"source": "tls"})
    await poll(
        lambda: (
            registry.get_sample_value(P + "reload_timestamp_seconds", {"source": "tls"}) != loaded
        ),
        deadline_s=10,
    )
    new_cert = rotated.client_cert("scorer", uri=SPIFFE_SCORER)
    response = await invoke(
        runtime_client(mtls_gateway.url, verify=rotated.ca_file, client_cert=new_cert)
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(HANDSHAKE_REFUSED):  # the old CA's certificates no longer pass
        await invoke(runtime_client(mtls_gateway.url, verify=rotated.ca_file, client_cert=cert))
    assert await fetch_on(reader, writer) == b"HTTP/1.1 200 OK\r\n"
    writer.close()


async def test_a_broken_certificate_file_keeps_the_old_one(mtls_gateway, pki, registry):
    """A key file rewritten with garbage: the reload fails (metric 1), handshakes go on with
    the previous certificate."""
    pki.write("tls.key", b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    await poll(
        lambda: registry.get_sample_value(P + "reload_failed", {"source": "tls"}) == 1,
        deadline_s=10,
    )
    cert = pki.client_cert("scorer", uri=SPIFFE_SCORER)
    client = runtime_client(mtls_gateway.url, verify=pki.ca_file, client_cert=cert)
    assert (await invoke(client))["ResponseMetadata"]["HTTPStatusCode"] == 200
