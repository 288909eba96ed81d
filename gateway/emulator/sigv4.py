"""A SigV4 verifier written from the AWS specification, for the emulator.

It deliberately shares no code with the gateway's own signer (``gateway.signing``): if both used one
canonicalisation routine, a bug in it would sign and verify the same wrong bytes and hide itself.
It is checked against the official AWS SigV4 test suite (``tests/test_emulator_sigv4.py``).

The rules implemented are the non-S3 ones:

- canonical URI: the raw path with ``.``/``..`` segments removed and empty segments collapsed, each
  segment percent-encoded once (only ``A-Z a-z 0-9 - _ . ~`` stay literal, so a ``%`` already on the
  wire becomes ``%25``, exactly as botocore and the other SDKs sign it);
- canonical query: every ``name=value`` pair percent-decoded and re-encoded with the same rule,
  sorted by encoded name then value, repeated names kept;
- canonical headers: only the signed ones, names lowercased, each value trimmed with inner runs of
  spaces and tabs collapsed to one space, repeated headers joined with ``,`` in the order received;
- payload hash: hex SHA-256 of the body; a request that sends ``x-amz-content-sha256`` must send
  exactly that value (``UNSIGNED-PAYLOAD`` is an S3 feature and is refused).

Failures raise :class:`SignatureError` carrying the AWS error type and a message in the service's
wording; :data:`STATUS_BY_ERROR` gives the HTTP status AWS answers each with.

| ErrorType                           | status | when                                           |
|-------------------------------------|--------|------------------------------------------------|
| MissingAuthenticationTokenException | 403    | no ``Authorization`` header                    |
| IncompleteSignatureException        | 400    | malformed ``Authorization`` or ``X-Amz-Date``; |
|                                     |        | ``host`` or ``x-amz-date`` not signed          |
| UnrecognizedClientException         | 403    | unknown access key; session token missing,     |
|                                     |        | unexpected or wrong                            |
| InvalidSignatureException           | 403    | signature mismatch; scope of another day,      |
|                                     |        | region or service; time outside the skew;      |
|                                     |        | ``x-amz-content-sha256`` is not the body's     |

Only ``X-Amz-Date`` is accepted as the signing time (every AWS SDK sends it); the legacy ``Date``
header alternative is refused as an incomplete signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_to_bytes

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"

MISSING_TOKEN = "MissingAuthenticationTokenException"
INCOMPLETE_SIGNATURE = "IncompleteSignatureException"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"
INVALID_SIGNATURE = "InvalidSignatureException"

STATUS_BY_ERROR: Mapping[str, int] = {
    MISSING_TOKEN: 403,
    INCOMPLETE_SIGNATURE: 400,
    UNRECOGNIZED_CLIENT: 403,
    INVALID_SIGNATURE: 403,
}

_MISMATCH_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
_INVALID_TOKEN_MESSAGE = "The security token included in the request is invalid."

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_SCOPE_DATE = re.compile(r"\d{8}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_INNER_WHITESPACE = re.compile(r"[ \t]+")
_OWS = " \t"

Headers = Sequence[tuple[str, str]]


class SignatureError(Exception):
    """A request failed verification; ``code`` is its AWS ErrorType."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status AWS answers this failure with."""
        return STATUS_BY_ERROR[self.code]


@dataclass(frozen=True)
class Authorization:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        """The credential scope, ``date/region/service/aws4_request``."""
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


@dataclass(frozen=True)
class VerifiedRequest:
    """What a successful verification established about the caller."""

    access_key: str
    signed_at: datetime
    signed_headers: tuple[str, ...]
    session_token: str | None


# ---------------------------------------------------------------------------------------------
# Canonical request
# ---------------------------------------------------------------------------------------------


def uri_encode(value: str) -> str:
    """Percent-encode every UTF-8 byte of ``value`` except the unreserved characters."""
    # surrogateescape: bytes that were not UTF-8 on the wire are encoded back to themselves.
    raw = value.encode("utf-8", "surrogateescape")
    return _encode_bytes(raw)


def _encode_bytes(raw: bytes) -> str:
    return "".join(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in raw)


def normalize_path(raw_path: str) -> str:
    """Remove dot segments (RFC 3986 section 5.2.4) and empty segments from an absolute path."""
    segments: list[str] = []
    parts = raw_path.split("/")
    for part in parts:
        if part == "..":
            if segments:
                segments.pop()
        elif part not in ("", "."):
            segments.append(part)
    path = "/" + "/".join(segments)
    # A path that ends on a directory (``/a/``, ``/a/.``, ``/a/b/..``) keeps its trailing slash.
    ends_on_directory = parts[-1] in ("", ".", "..")
    if segments and ends_on_directory:
        path += "/"
    return path


def canonical_uri(raw_path: str) -> str:
    """The canonical URI: the normalized path with each segment encoded once."""
    return "/".join(uri_encode(segment) for segment in normalize_path(raw_path).split("/"))


def canonical_query(raw_query: str) -> str:
    """The canonical query string: decoded, re-encoded, sorted by name then value."""
    pairs: list[tuple[str, str]] = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        pairs.append((_reencode(name), _reencode(value)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _reencode(component: str) -> str:
    # Decoding first means an already-encoded ``%E1%88%B4`` and a raw ``ሴ`` canonicalise alike.
    return _encode_bytes(unquote_to_bytes(component.encode("utf-8", "surrogateescape")))


def canonical_header_value(value: str) -> str:
    """Trim a header value and collapse inner runs of spaces and tabs to one space."""
    return _INNER_WHITESPACE.sub(" ", value.strip(_OWS))


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of header ``name`` (any case), in the order received, OWS-trimmed."""
    wanted = name.lower()
    return [value.strip(_OWS) for key, value in headers if key.lower() == wanted]


def canonical_headers(headers: Headers, signed_headers: Sequence[str]) -> str:
    """The canonical headers block: one ``name:value\\n`` line per signed header."""
    lines = []
    for name in signed_headers:
        values = header_values(headers, name)
        if not values:
            raise SignatureError(
                INVALID_SIGNATURE, f"Signed header '{name}' is not present in the request."
            )
        lines.append(f"{name}:{','.join(canonical_header_value(value) for value in values)}\n")
    return "".join(lines)


def payload_hash(body: bytes) -> str:
    """Hex SHA-256 of the request body."""
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    signed_headers: Sequence[str],
    body_hash: str,
) -> str:
    """The SigV4 canonical request for these request parts."""
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            canonical_headers(headers, signed_headers),
            ";".join(signed_headers),
            body_hash,
        ]
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """The SigV4 string to sign for a canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return "\n".join([ALGORITHM, amz_date, scope, digest])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """Derive the SigV4 signing key for one day, region and service."""
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def compute_signature(key: bytes, to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign."""
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------
# Authorization header
# ---------------------------------------------------------------------------------------------


def parse_authorization(value: str) -> Authorization:
    """Parse an ``AWS4-HMAC-SHA256`` Authorization header strictly."""
    algorithm, _, rest = value.strip(_OWS).partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(INCOMPLETE_SIGNATURE, f"Unsupported AWS 'algorithm': '{algorithm}'.")
    params = _parse_auth_params(rest)
    credential = params["Credential"].split("/")
    if len(credential) != 5 or not credential[0]:
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            "Credential must have exactly 5 slash-delimited elements, e.g. "
            "keyid/date/region/service/term, got '" + params["Credential"] + "'.",
        )
    access_key, date, region, service, terminator = credential
    if not _SCOPE_DATE.fullmatch(date):
        raise SignatureError(INCOMPLETE_SIGNATURE, f"Credential date '{date}' is not YYYYMMDD.")
    if terminator != TERMINATOR:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{terminator}'.",
        )
    signature = params["Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise SignatureError(
            INCOMPLETE_SIGNATURE, "Signature must be 64 lowercase hexadecimal characters."
        )
    return Authorization(
        access_key=access_key,
        date=date,
        region=region,
        service=service,
        signed_headers=_parse_signed_headers(params["SignedHeaders"]),
        signature=signature,
    )


def _parse_auth_params(text: str) -> dict[str, str]:
    expected = ("Credential", "SignedHeaders", "Signature")
    params: dict[str, str] = {}
    for item in text.split(","):
        key, equals, value = item.strip(_OWS).partition("=")
        if not equals or key not in expected or key in params:
            raise SignatureError(
                INCOMPLETE_SIGNATURE, f"Authorization header has an invalid element '{item}'."
            )
        params[key] = value
    missing = [key for key in expected if key not in params]
    if missing:
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            " ".join(f"Authorization header requires '{key}' parameter." for key in missing),
        )
    return params


def _parse_signed_headers(text: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not all(_HEADER_NAME.fullmatch(name) for name in names):
        raise SignatureError(
            INCOMPLETE_SIGNATURE, f"SignedHeaders must be lowercase header names, got '{text}'."
        )
    # The spec orders them; a client that does not is computing a different canonical request.
    if list(names) != sorted(set(names)):
        raise SignatureError(
            INCOMPLETE_SIGNATURE, f"SignedHeaders must be sorted and unique, got '{text}'."
        )
    return names


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Headers,
    body: bytes,
    *,
    secrets: Mapping[str, str],
    region: str,
    service: str,
    now: datetime,
    session_tokens: Mapping[str, str] | None = None,
    max_skew_s: float = 300.0,
) -> VerifiedRequest:
    """Verify a SigV4-signed request; return who signed it or raise :class:`SignatureError`.

    ``secrets`` maps access key ids to secret keys; ``session_tokens`` maps the access keys that
    are temporary credentials to the ``X-Amz-Security-Token`` they must present (signed or not).
    ``now`` is an aware datetime; the signing time may differ from it by at most ``max_skew_s``.
    """
    authorization = parse_authorization(_single_header(headers, "authorization"))
    amz_date = _required_amz_date(headers)
    for required in ("host", "x-amz-date"):
        if required not in authorization.signed_headers:
            raise SignatureError(
                INCOMPLETE_SIGNATURE,
                f"'{required}' must be a 'SignedHeader' in the AWS Authorization.",
            )
    secret = secrets.get(authorization.access_key)
    if secret is None:
        raise SignatureError(UNRECOGNIZED_CLIENT, _INVALID_TOKEN_MESSAGE)
    session_token = _check_session_token(
        headers, (session_tokens or {}).get(authorization.access_key)
    )
    signed_at = _check_scope_and_time(authorization, amz_date, region, service, now, max_skew_s)
    body_hash = _checked_payload_hash(headers, body)
    canonical = canonical_request(
        method, raw_path, raw_query, headers, authorization.signed_headers, body_hash
    )
    key = signing_key(secret, authorization.date, region, service)
    expected = compute_signature(key, string_to_sign(amz_date, authorization.scope, canonical))
    if not hmac.compare_digest(expected, authorization.signature):
        raise SignatureError(INVALID_SIGNATURE, _MISMATCH_MESSAGE)
    return VerifiedRequest(
        access_key=authorization.access_key,
        signed_at=signed_at,
        signed_headers=authorization.signed_headers,
        session_token=session_token,
    )


def _single_header(headers: Headers, name: str) -> str:
    values = header_values(headers, name)
    if not values:
        raise SignatureError(MISSING_TOKEN, "Missing Authentication Token")
    if len(values) > 1:
        raise SignatureError(INCOMPLETE_SIGNATURE, f"Only one '{name}' header is allowed.")
    return values[0]


def _required_amz_date(headers: Headers) -> str:
    values = header_values(headers, "x-amz-date")
    if len(values) != 1:
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    if not _AMZ_DATE.fullmatch(values[0]):
        raise SignatureError(
            INCOMPLETE_SIGNATURE,
            f"Date must be in ISO-8601 'basic format'. Got '{values[0]}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601",
        )
    return values[0]


def _check_session_token(headers: Headers, expected: str | None) -> str | None:
    sent = header_values(headers, "x-amz-security-token")
    if expected is None and not sent:
        return None
    # Long-term keys must not carry a token, temporary ones must carry exactly theirs.
    if expected is None or len(sent) != 1 or not hmac.compare_digest(sent[0], expected):
        raise SignatureError(UNRECOGNIZED_CLIENT, _INVALID_TOKEN_MESSAGE)
    return expected


def _check_scope_and_time(
    authorization: Authorization,
    amz_date: str,
    region: str,
    service: str,
    now: datetime,
    max_skew_s: float,
) -> datetime:
    if authorization.date != amz_date[:8]:
        raise SignatureError(
            INVALID_SIGNATURE,
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{authorization.date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    if authorization.region != region:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Credential should be scoped to a valid region, not '{authorization.region}'. ",
        )
    if authorization.service != service:
        raise SignatureError(
            INVALID_SIGNATURE, f"Credential should be scoped to correct service: '{service}'. "
        )
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError as error:  # e.g. month 13: the regex only checks the shape
        raise SignatureError(
            INCOMPLETE_SIGNATURE, f"Date '{amz_date}' is not a valid date."
        ) from error
    check_clock_skew(signed_at, now, max_skew_s)
    return signed_at


def check_clock_skew(signed_at: datetime, now: datetime, max_skew_s: float) -> None:
    """Refuse a signing time more than ``max_skew_s`` away from ``now``, in AWS's words."""
    skew = timedelta(seconds=max_skew_s)
    window = _describe_window(max_skew_s)
    if signed_at < now - skew:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Signature expired: {_amz(signed_at)} is now earlier than {_amz(now - skew)} "
            f"({_amz(now)} - {window}.)",
        )
    if signed_at > now + skew:
        raise SignatureError(
            INVALID_SIGNATURE,
            f"Signature not yet current: {_amz(signed_at)} is still later than "
            f"{_amz(now + skew)} ({_amz(now)} + {window}.)",
        )


def _describe_window(seconds: float) -> str:
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _amz(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_AMZ_DATE_FORMAT)


def _checked_payload_hash(headers: Headers, body: bytes) -> str:
    computed = payload_hash(body)
    declared = header_values(headers, "x-amz-content-sha256")
    if declared and (len(declared) != 1 or not hmac.compare_digest(declared[0], computed)):
        raise SignatureError(
            INVALID_SIGNATURE,
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    return computed
