"""The gateway's SigV4 signer against the official test vectors and against botocore."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.signing import Signer, SigningCredentials, canonical_request, string_to_sign
from tests import sigv4_vectors as sv

VECTORS = sv.load_vectors()


def test_every_vector_in_the_suite_is_found():
    """The suite holds 34 cases; a broken walk must not silently test fewer."""
    assert len(VECTORS) == 34


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_canonical_request_matches_vector(vector: sv.Vector):
    """The canonical request built from the raw request is byte-for-byte the suite's."""
    payload = hashlib.sha256(vector.body).hexdigest()
    canonical, _ = canonical_request(
        vector.method, vector.raw_path, vector.raw_query, _signed_headers(vector), payload
    )
    assert canonical == vector.creq


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_string_to_sign_and_authorization_match_vector(vector: sv.Vector):
    """The string to sign and the Authorization header are the suite's."""
    signer = Signer(sv.REGION, sv.SERVICE)
    creds = SigningCredentials(sv.ACCESS_KEY, sv.SECRET_KEY, vector.token)
    payload = hashlib.sha256(vector.body).hexdigest()
    signed = _signed_headers(vector)
    canonical, _ = canonical_request(
        vector.method, vector.raw_path, vector.raw_query, signed, payload
    )
    scope = f"{sv.AMZ_DATE[:8]}/{sv.REGION}/{sv.SERVICE}/aws4_request"
    assert string_to_sign(sv.AMZ_DATE, scope, canonical) == vector.sts
    auth = signer.authorization(
        creds, sv.AMZ_DATE, vector.method, vector.raw_path, vector.raw_query, signed, payload
    )
    assert auth == vector.authz


def _signed_headers(vector: sv.Vector) -> list[tuple[str, str]]:
    """The headers the vector signs: those on its SignedHeaders line, plus the session token
    where the suite signs one that its .req does not show (see the suite's README)."""
    names = set(vector.creq.split("\n")[-2].split(";"))
    headers = [(n, v) for n, v in vector.headers if n.lower() in names]
    if vector.token and "x-amz-security-token" not in {n.lower() for n, _ in headers}:
        headers.append(("X-Amz-Security-Token", vector.token))
    return headers


@pytest.mark.parametrize(
    ("token", "body", "headers"),
    [
        (None, b"", [("Content-Type", "application/json")]),
        ("session-token/with+chars==", b'{"x": 1}', [("Content-Type", "text/csv")]),
        (
            None,
            b"a" * 100_000,
            [("Content-Type", "text/csv"), ("X-Amzn-SageMaker-Custom-Attributes", "c000b4f9")],
        ),
    ],
)
def test_signature_matches_botocore_for_a_runtime_request(token, body, headers):
    """For an InvokeEndpoint request, our signature equals botocore's SigV4Auth's."""
    host = "runtime.sagemaker.eu-west-1.amazonaws.com"
    path = "/endpoints/my-endpoint/invocations"
    request = AWSRequest(method="POST", url=f"https://{host}{path}", data=body)
    for name, value in headers:
        request.headers[name] = value
    auth = SigV4Auth(Credentials("AKIDTEST", "secret/key+value", token), "sagemaker", "eu-west-1")
    auth.add_auth(request)  # botocore reads the clock itself: sign ours at the time it chose
    when = datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

    ours = Signer("eu-west-1", "sagemaker").sign(
        SigningCredentials("AKIDTEST", "secret/key+value", token),
        when,
        "POST",
        host,
        path,
        headers,
        body,
    )
    assert dict(ours)["Authorization"] == request.headers["Authorization"]


def test_signing_key_is_cached_per_day_and_secret():
    """The derived key is reused within a day and rederived for a new day or a new secret."""
    signer = Signer("us-east-1", "sagemaker")
    first = signer.signing_key("s1", "20261126")
    assert signer.signing_key("s1", "20261126") is first
    assert signer.signing_key("s1", "20261127") != first
    assert signer.signing_key("s2", "20261127") != signer.signing_key("s1", "20261127")


def test_credentials_repr_hides_the_secret():
    """A SigningCredentials never prints its secret or token."""
    text = repr(SigningCredentials("AKIDTEST", "very-secret", "tok"))
    assert "very-secret" not in text and "tok" not in text
