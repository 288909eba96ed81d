"""AWS Signature Version 4 for requests the gateway forwards.

Written here rather than calling botocore's ``SigV4Auth`` because the gateway signs every
request on its hot path: botocore re-derives the signing key (four HMACs) and rebuilds an
``AWSRequest`` each time, ~54 us a request, while the key only changes once a day per secret.
This signer caches the day's key and works on plain header lists (a few us a request).
It is checked against the official SigV4 test vectors and against botocore's own output.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import posixpath
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from gateway.http.clock import PerSecond

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()
_UNRESERVED = "-_.~"  # with letters and digits, the characters SigV4 never percent-encodes


@dataclass(frozen=True, slots=True)
class SigningCredentials:
    """The key pair (and session token, for temporary credentials) a request is signed with."""

    access_key: str
    secret_key: str
    token: str | None = None
    #: When temporary credentials stop working (Unix time); None for long-lived keys.
    expires_at: float | None = None

    def __repr__(self) -> str:  # never let a secret reach a log line or a traceback
        return f"SigningCredentials(access_key={self.access_key[:4]}…)"


@functools.lru_cache(maxsize=1024)  # the gateway signs the same few endpoint paths over and over
def canonical_uri(raw_path: str) -> str:
    """The path as SigV4 (non-S3 rules) signs it: dot segments resolved, encoded once."""
    path = raw_path or "/"
    normalized = posixpath.normpath(path)
    # normpath keeps a leading "//" and drops a trailing "/", both of which SigV4 keeps/fixes.
    if normalized.startswith("//"):
        normalized = "/" + normalized.lstrip("/")
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    return quote(normalized, safe="/" + _UNRESERVED)


def canonical_query(raw_query: str) -> str:
    """Query parameters decoded, re-encoded strictly and sorted; repeated keys are all kept."""
    if not raw_query:
        return ""
    pairs = []
    for item in raw_query.split("&"):
        key, _, value = item.partition("=")
        pairs.append(
            (quote(unquote(key), safe=_UNRESERVED), quote(unquote(value), safe=_UNRESERVED))
        )
    pairs.sort()
    return "&".join(f"{key}={value}" for key, value in pairs)


def canonical_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """The canonical header block and the signed-headers list for ``headers``."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(" ".join(value.split()))
    names = sorted(merged)
    block = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    return block, ";".join(names)


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    payload_sha256: str,
) -> tuple[str, str]:
    """The canonical request and its signed-headers list."""
    block, signed = canonical_headers(headers)
    text = "\n".join(
        (method, canonical_uri(raw_path), canonical_query(raw_query), block, signed, payload_sha256)
    )
    return text, signed


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """The string the signature is an HMAC of."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def amz_date(now: datetime) -> str:
    """``now`` in the X-Amz-Date format."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class Signer:
    """Signs requests for one region and service, caching the day's signing key.

    The cache holds one key: credentials rotate rarely and the date changes once a day, so a
    single entry is always hit on the hot path and never grows.
    """

    def __init__(self, region: str, service: str) -> None:
        self.region = region
        self.service = service
        self._cached: tuple[str, str, bytes] | None = None  # (secret, date, key)
        self._amz_date = PerSecond(_format_amz_date)

    def current_amz_date(self) -> str:
        """X-Amz-Date for now, formatted once per second rather than once per request."""
        return self._amz_date.now()

    def signing_key(self, secret_key: str, date: str) -> bytes:
        """The derived key for ``date`` (YYYYMMDD), from the cache when it is today's."""
        cached = self._cached
        if cached is not None and cached[0] == secret_key and cached[1] == date:
            return cached[2]
        key = _hmac(f"AWS4{secret_key}".encode(), date)
        for part in (self.region, self.service, "aws4_request"):
            key = _hmac(key, part)
        self._cached = (secret_key, date, key)
        return key

    def authorization(
        self,
        credentials: SigningCredentials,
        when: str,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Sequence[tuple[str, str]],
        payload_sha256: str,
    ) -> str:
        """The Authorization header value for a request whose headers are all to be signed."""
        date = when[:8]
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        canonical, signed = canonical_request(method, raw_path, raw_query, headers, payload_sha256)
        to_sign = string_to_sign(when, scope, canonical)
        key = self.signing_key(credentials.secret_key, date)
        signature = _hmac(key, to_sign).hex()
        return (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )

    def sign(
        self,
        credentials: SigningCredentials,
        now: datetime | None,
        method: str,
        host: str,
        raw_path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> list[tuple[str, str]]:
        """The complete header list to send: ``headers`` plus Host, date, token and signature.

        Every header in the result except Authorization is signed; nothing may be added to
        the request after this. ``now`` None means the current time.
        """
        when = amz_date(now) if now is not None else self.current_amz_date()
        signed_headers = [*headers, ("Host", host), ("X-Amz-Date", when)]
        if credentials.token:
            signed_headers.append(("X-Amz-Security-Token", credentials.token))
        payload_sha256 = hashlib.sha256(body).hexdigest() if body else EMPTY_PAYLOAD_SHA256
        auth = self.authorization(
            credentials, when, method, raw_path, "", signed_headers, payload_sha256
        )
        signed_headers.append(("Authorization", auth))
        return signed_headers


def _format_amz_date(second: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))


def _hmac(key: bytes, message: str) -> bytes:
    # hmac.digest is OpenSSL's one-shot HMAC: no Python HMAC object per signature.
    return hmac.digest(key, message.encode(), "sha256")
