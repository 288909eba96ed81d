"""The emulator's SigV4 verifier against the official AWS SigV4 test suite, plus its refusals.

The suite lives in the repository (``tests/data/sigv4-testsuite``, with its LICENSE and NOTICE); its
README gives the signing parameters used here. Every case directory found is tested; none is
hand-picked, and a missing suite fails the run instead of skipping it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.emulator.sigv4 import (
    INCOMPLETE_SIGNATURE,
    INVALID_SIGNATURE,
    MISSING_TOKEN,
    UNRECOGNIZED_CLIENT,
    SignatureError,
    canonical_request,
    compute_signature,
    parse_authorization,
    signing_key,
    string_to_sign,
    verify,
)
from tests.sigv4_vectors import suite_dir

SUITE = suite_dir()
# The README: "34 cases, 174 files". A walk that finds fewer has lost some, e.g. nested ones.
EXPECTED_CASE_COUNT = 34

# Signing parameters from the suite's README.
ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
SERVICE = "service"
AMZ_DATE = "20150830T123600Z"
SIGNED_AT = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SIBLINGS = (".creq", ".sts", ".authz", ".sreq")


@dataclass(frozen=True)
class RawRequest:
    """An HTTP request as written in a suite file."""

    method: str
    raw_path: str
    raw_query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), untrimmed."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def without(self, *names: str) -> RawRequest:
        """This request minus every header named in ``names`` (any case)."""
        lowered = {name.lower() for name in names}
        kept = tuple((k, v) for k, v in self.headers if k.lower() not in lowered)
        return replace(self, headers=kept)


def parse_request(text: str) -> RawRequest:
    """Parse a suite ``.req``/``.sreq``: request line, ``Name:value`` headers, blank line, body.

    The request line is split at its first and last space, because ``get-space`` has a literal
    space in its path. An indented line continues the previous header's value (obs-fold); it is
    unfolded as RFC 9112 section 5.2 says, by replacing the line break with one space.
    """
    head, _, body = text.partition("\n\n")
    request_line, *header_lines = head.split("\n")
    method, _, rest = request_line.partition(" ")
    target, _, version = rest.rpartition(" ")
    assert version == "HTTP/1.1", request_line
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        if not line:
            continue
        if line[0] in " \t":
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line}")
        else:
            name, colon, value = line.partition(":")
            assert colon, line
            headers.append((name, value))
    raw_path, _, raw_query = target.partition("?")
    return RawRequest(method, raw_path, raw_query, tuple(headers), body.encode())


@dataclass(frozen=True)
class Case:
    """One suite case: the files sharing a stem in one directory."""

    stem: Path

    @property
    def name(self) -> str:
        return str(self.stem.relative_to(SUITE).parent)

    def read(self, extension: str) -> str:
        return self.stem.with_suffix(extension).read_text(encoding="utf-8")

    @property
    def request(self) -> RawRequest:
        return parse_request(self.read(".req"))

    @property
    def signed_request(self) -> RawRequest:
        """The ``.req`` as sent: plus its session token, if any, and ``Authorization: <.authz>``.

        The token is added after the ``.req`` headers, where the ``.sreq`` has it; it is signed
        in the cases whose ``.creq`` lists it and added after signing in ``post-sts-header-after``
        (see the suite's ``post-sts-token/readme.txt``).
        """
        request = self.request
        headers = list(request.headers)
        token = parse_request(self.read(".sreq")).header("X-Amz-Security-Token")
        if token is not None and request.header("X-Amz-Security-Token") is None:
            headers.append(("X-Amz-Security-Token", token))
        headers.append(("Authorization", self.read(".authz")))
        return replace(request, headers=tuple(headers))


def discover_cases(root: Path) -> list[Case]:
    """Every ``*.req`` under ``root``, at any depth."""
    if not root.is_dir():
        return []
    return [Case(path.with_suffix("")) for path in sorted(root.rglob("*.req"))]


CASES = discover_cases(SUITE)


def cases() -> list[object]:
    """The parameters: every case; without a suite, one that fails (a skip would hide it)."""
    if not CASES:
        return [pytest.param(Case(SUITE / "suite-missing"), id="suite-missing")]
    return [pytest.param(case, id=case.name) for case in CASES]


def verify_suite_request(request: RawRequest, *, session_token: str | None = None) -> object:
    """Run the verifier with the suite's parameters, expecting the token the request carries."""
    token = request.header("X-Amz-Security-Token")
    expected_token = session_token if session_token is not None else token
    return verify(
        request.method,
        request.raw_path,
        request.raw_query,
        request.headers,
        request.body,
        secrets={ACCESS_KEY: SECRET},
        region=REGION,
        service=SERVICE,
        now=SIGNED_AT,
        session_tokens={ACCESS_KEY: expected_token.strip()} if expected_token else {},
    )


def test_the_suite_is_present_and_complete() -> None:
    """The suite is found, holds every case, and each case has all of its sibling files."""
    assert SUITE.is_dir(), f"SigV4 test suite not found at {SUITE}"
    assert len(CASES) == EXPECTED_CASE_COUNT, [case.name for case in CASES]
    for case in CASES:
        for extension in SIBLINGS:
            assert case.stem.with_suffix(extension).is_file(), f"{case.name} lacks {extension}"


@pytest.mark.parametrize("case", cases())
def test_the_request_we_sign_is_the_suites_signed_request(case: Case) -> None:
    """Apart from Authorization, the request built from ``.req`` is the ``.sreq``.

    Authorization is left out of the comparison because the suite's own
    ``get-vanilla-with-session-token.sreq`` carries a stale signature; its ``.authz`` is the
    one that matches its ``.sts`` (and the verifier test below checks that).
    """
    expected = parse_request(case.read(".sreq")).without("Authorization")
    assert case.signed_request.without("Authorization") == expected


@pytest.mark.parametrize("case", cases())
def test_canonical_request_matches_the_suite(case: Case) -> None:
    """The canonical request built from the signed request equals the ``.creq``."""
    request = case.signed_request
    authorization = parse_authorization(case.read(".authz"))
    canonical = canonical_request(
        request.method,
        request.raw_path,
        request.raw_query,
        request.headers,
        authorization.signed_headers,
        hashlib.sha256(request.body).hexdigest(),
    )
    assert canonical == case.read(".creq")


@pytest.mark.parametrize("case", cases())
def test_string_to_sign_matches_the_suite(case: Case) -> None:
    """The string to sign over the suite's canonical request equals the ``.sts``."""
    authorization = parse_authorization(case.read(".authz"))
    assert string_to_sign(AMZ_DATE, authorization.scope, case.read(".creq")) == case.read(".sts")


@pytest.mark.parametrize("case", cases())
def test_verifier_accepts_the_suite_signature(case: Case) -> None:
    """The request signed with the ``.authz`` value passes verification."""
    verified = verify_suite_request(case.signed_request)
    assert verified.access_key == ACCESS_KEY  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", cases())
def test_verifier_rejects_a_one_byte_change_to_the_body(case: Case) -> None:
    """Changing one byte of the body (or adding one to an empty body) fails verification."""
    request = case.signed_request
    body = bytes([request.body[0] ^ 1]) + request.body[1:] if request.body else b"x"
    with pytest.raises(SignatureError) as raised:
        verify_suite_request(replace(request, body=body))
    assert raised.value.code == INVALID_SIGNATURE


@pytest.mark.parametrize("case", cases())
def test_verifier_rejects_a_one_byte_change_to_any_signed_header(case: Case) -> None:
    """Changing one byte of any signed header's value fails verification."""
    request = case.signed_request
    signed = parse_authorization(case.read(".authz")).signed_headers
    token = request.header("X-Amz-Security-Token")
    for name in signed:
        tampered = replace(request, headers=_change_one_byte(request.headers, name))
        with pytest.raises(SignatureError):
            # The verifier still expects the original token, so a tampered token is refused too.
            verify_suite_request(tampered, session_token=token)


def _change_one_byte(
    headers: tuple[tuple[str, str], ...], name: str
) -> tuple[tuple[str, str], ...]:
    """Replace the first non-blank character of the first ``name`` header with another one."""
    index = next(i for i, (key, _) in enumerate(headers) if key.lower() == name)
    key, value = headers[index]
    at = len(value) - len(value.lstrip(" \t"))
    replacement = "x" if value[at] != "x" else "y"
    changed = (key, value[:at] + replacement + value[at + 1 :])
    return (*headers[:index], changed, *headers[index + 1 :])


# ---------------------------------------------------------------------------------------------
# Refusals, on a small request signed here with the suite's key.
# ---------------------------------------------------------------------------------------------

HOST = ("Host", "example.amazonaws.com")
DATE = ("X-Amz-Date", AMZ_DATE)


def sign(
    headers: list[tuple[str, str]],
    *,
    signed: str = "host;x-amz-date",
    scope: str = f"20150830/{REGION}/{SERVICE}/aws4_request",
    body: bytes = b"",
    secret: str = SECRET,
) -> list[tuple[str, str]]:
    """``headers`` plus an Authorization header for ``POST /`` with this body."""
    names = tuple(signed.split(";"))
    canonical = canonical_request("POST", "/", "", headers, names, hashlib.sha256(body).hexdigest())
    date, region, service, _ = scope.split("/")
    key = signing_key(secret, date, region, service)
    signature = compute_signature(key, string_to_sign(AMZ_DATE, scope, canonical))
    value = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return [*headers, ("Authorization", value)]


def verify_post(
    headers: list[tuple[str, str]],
    *,
    body: bytes = b"",
    now: datetime = SIGNED_AT,
    tokens: dict[str, str] | None = None,
) -> object:
    """Verify ``POST /`` with the suite's key, region and service."""
    return verify(
        "POST",
        "/",
        "",
        headers,
        body,
        secrets={ACCESS_KEY: SECRET},
        region=REGION,
        service=SERVICE,
        now=now,
        session_tokens=tokens,
    )


def refusal(headers: list[tuple[str, str]], **kwargs: object) -> SignatureError:
    """The SignatureError verifying these headers raises."""
    with pytest.raises(SignatureError) as raised:
        verify_post(headers, **kwargs)  # type: ignore[arg-type]
    return raised.value


def test_a_request_signed_here_is_accepted() -> None:
    """The helper below signs correctly, so each refusal is caused by the one thing it changes."""
    verify_post(sign([HOST, DATE]))


def test_no_authorization_header_is_a_missing_token() -> None:
    """A request without Authorization is refused as MissingAuthenticationTokenException, 403."""
    error = refusal([HOST, DATE])
    assert (error.code, error.status) == (MISSING_TOKEN, 403)


@pytest.mark.parametrize(
    "value",
    [
        "AWS4-HMAC-SHA512 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=x-amz-date;host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=Host;x-amz-date, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 63,
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64 + ", Extra=1",
    ],
    ids=[
        "other-algorithm",
        "no-signature",
        "short-credential",
        "unsorted-signed-headers",
        "uppercase-signed-header",
        "short-signature",
        "unknown-element",
    ],
)
def test_a_malformed_authorization_header_is_an_incomplete_signature(value: str) -> None:
    """An Authorization header that breaks the format is IncompleteSignatureException, 400."""
    error = refusal([HOST, DATE, ("Authorization", value)])
    assert (error.code, error.status) == (INCOMPLETE_SIGNATURE, 400)


def test_host_must_be_signed() -> None:
    """A signature that does not cover Host is refused, whatever else it covers."""
    error = refusal(sign([HOST, DATE], signed="x-amz-date"))
    assert error.code == INCOMPLETE_SIGNATURE
    assert "'host'" in error.message


def test_an_unknown_access_key_is_an_unrecognized_client() -> None:
    """A key id the verifier has no secret for is UnrecognizedClientException, 403."""
    headers = [(k, v.replace(ACCESS_KEY, "AKIDUNKNOWN")) for k, v in sign([HOST, DATE])]
    error = refusal(headers)
    assert (error.code, error.status) == (UNRECOGNIZED_CLIENT, 403)


def test_a_wrong_secret_is_an_invalid_signature() -> None:
    """A signature made with another secret is InvalidSignatureException, 403."""
    error = refusal(sign([HOST, DATE], secret="not-the-secret"))
    assert (error.code, error.status) == (INVALID_SIGNATURE, 403)


@pytest.mark.parametrize(
    ("scope", "wording"),
    [
        (f"20150830/eu-west-1/{SERVICE}/aws4_request", "valid region"),
        (f"20150830/{REGION}/sagemaker/aws4_request", "correct service"),
        (f"20150831/{REGION}/{SERVICE}/aws4_request", "Date in Credential scope"),
    ],
    ids=["region", "service", "date"],
)
def test_a_scope_for_another_region_service_or_day_is_refused(scope: str, wording: str) -> None:
    """A credential scope naming another region, service or day is InvalidSignatureException."""
    error = refusal(sign([HOST, DATE], scope=scope))
    assert error.code == INVALID_SIGNATURE
    assert wording in error.message


@pytest.mark.parametrize("offset_s", [-301, 301], ids=["expired", "not-yet-current"])
def test_a_signing_time_outside_the_skew_is_refused(offset_s: int) -> None:
    """A signing time more than five minutes from now is refused in AWS's words."""
    error = refusal(sign([HOST, DATE]), now=SIGNED_AT - timedelta(seconds=offset_s))
    assert error.code == INVALID_SIGNATURE
    assert error.message.startswith("Signature expired" if offset_s < 0 else "Signature not yet")


def test_a_signing_time_at_the_edge_of_the_skew_is_accepted() -> None:
    """Exactly five minutes of skew is still allowed."""
    verify_post(sign([HOST, DATE]), now=SIGNED_AT + timedelta(seconds=300))


def test_x_amz_content_sha256_must_match_the_body() -> None:
    """A declared payload hash that is not the body's hash is refused before the signature."""
    declared = ("X-Amz-Content-SHA256", hashlib.sha256(b"other").hexdigest())
    error = refusal(sign([HOST, DATE, declared], body=b"body"), body=b"body")
    assert error.code == INVALID_SIGNATURE
    assert "x-amz-content-sha256" in error.message


def test_x_amz_content_sha256_equal_to_the_body_hash_is_accepted() -> None:
    """A declared payload hash that matches the body is fine."""
    declared = ("X-Amz-Content-SHA256", hashlib.sha256(b"body").hexdigest())
    verify_post(sign([HOST, DATE, declared], body=b"body"), body=b"body")


@pytest.mark.parametrize(
    ("sent", "expected"),
    [(None, "token-1"), ("token-2", "token-1"), ("token-1", None)],
    ids=["missing", "wrong", "unexpected"],
)
def test_a_session_token_must_be_exactly_the_expected_one(
    sent: str | None, expected: str | None
) -> None:
    """Temporary keys need their token; long-term keys must not send one."""
    headers = [HOST, DATE] + ([("X-Amz-Security-Token", sent)] if sent else [])
    tokens = {ACCESS_KEY: expected} if expected else {}
    error = refusal(sign(headers), tokens=tokens)
    assert error.code == UNRECOGNIZED_CLIENT


def test_a_signed_header_missing_from_the_request_is_refused() -> None:
    """SignedHeaders naming a header the request lacks cannot verify."""
    headers = sign([HOST, DATE, ("My-Header", "v")], signed="host;my-header;x-amz-date")
    error = refusal([h for h in headers if h[0] != "My-Header"])
    assert error.code == INVALID_SIGNATURE
