"""Who is calling: Kubernetes service-account bearer tokens, verified locally against a JWKS.

A token is a JWT that the cluster signed with one of the keys of its JWKS (``jwks_file``, or
``jwks_url`` such as the API server's ``/openid/v1/jwks`` or EKS's OIDC issuer's ``/keys``).
PyJWT checks it: the signature, with the key its ``kid`` names and only that key's asymmetric
algorithm (RS256 or ES256: never ``none``, never HMAC, whatever the header says); ``aud``
against ``token_audience``; ``iss`` against ``token_issuer``; ``exp`` and ``nbf`` with
LEEWAY_S of clock skew. The caller is the ``sub`` claim (``system:serviceaccount:NS:NAME``).

A token verified once is remembered with its ``sub`` and ``exp`` beside the key set that
verified it (a pod sends the same token for many requests; a new key set forgets them all), so
the signature is checked once per token, not once per request.

Keys fetched from a URL are refreshed every ``jwks_refresh_interval``, each fetch bounded by a
deadline. While refreshes fail, the last keys fetched are used for ``jwks_max_age`` after they
were fetched; after that tokens cannot be verified and callers get 503, never a pass. A token
whose ``kid`` is unknown triggers one early fetch (at most one every UNKNOWN_KEY_REFETCH_S).

The token itself is never logged, nor put in an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt

from gateway.errors import ServiceUnavailable, UnrecognizedClient
from gateway.http.body import BodyBroken, BodyTooLarge
from gateway.http.client import UpstreamError, UpstreamPool

ALGORITHMS = ("RS256", "ES256")
#: Clock skew allowed on exp and nbf, in seconds.
LEEWAY_S = 30.0
JWKS_FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1 << 20
#: Tokens remembered per key set (a pod's token is about a kilobyte).
MAX_VERIFIED_TOKENS = 4096
UNKNOWN_KEY_REFETCH_S = 30.0
#: After a failed fetch, the next one comes this soon (or at the refresh interval if sooner).
FETCH_RETRY_S = 10.0

Clock = Callable[[], float]
#: Reports a load of keys: the source ("jwks") and None, or the one-line reason it failed.
Report = Callable[[str, str | None], None]


class TokenKeysError(ValueError):
    """A JWKS that cannot be read, fetched or used; the message is one line."""


class KeySet:
    """The keys of one JWKS document, by kid, and the tokens they have verified."""

    __slots__ = ("by_kid", "expires_at", "verified")

    def __init__(self, by_kid: dict[str, jwt.PyJWK], expires_at: float | None) -> None:
        self.by_kid = by_kid
        #: Clock time after which these keys are no longer used (None: a file, until replaced).
        self.expires_at = expires_at
        #: token -> (sub, exp) for tokens these keys verified.
        self.verified: dict[str, tuple[str, float]] = {}


def parse_jwks(document: bytes) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by kid (RS256 and ES256 only); TokenKeysError when
    it is not a JWKS or has no such key."""
    try:
        data = json.loads(document)
        entries = data["keys"]
        if not isinstance(entries, list):
            raise TypeError("keys is not a list")
    except (ValueError, TypeError, KeyError) as exc:
        raise TokenKeysError(f"not a JWKS document ({type(exc).__name__}: {exc})") from None
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a kind of key this gateway does not take
        if key.algorithm_name in ALGORITHMS:
            keys[kid] = key
    if not keys:
        raise TokenKeysError(f"no RS256 or ES256 signing key with a kid among {len(entries)}")
    return keys


class Jwks:
    """The keys tokens are checked against, from a file or a URL, and their upkeep."""

    def __init__(
        self,
        *,
        file: str = "",
        url: str = "",
        ca_file: str = "",
        refresh_interval_s: float = 300.0,
        max_age_s: float = 86400.0,
        fetch_timeout_s: float = JWKS_FETCH_TIMEOUT_S,
        clock: Clock = time.monotonic,
        report: Report,
    ) -> None:
        self.file, self.url = file, url
        self._ssl = ssl.create_default_context(cafile=ca_file or None) if url else None
        self.refresh_interval_s = refresh_interval_s
        self.max_age_s = max_age_s
        self.fetch_timeout_s = fetch_timeout_s
        self._clock = clock
        self._report = report
        self.keys: KeySet | None = None
        #: When a caller's token last made the gateway fetch out of turn.
        self._last_refetch_at: float | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def current(self) -> KeySet | None:
        """The keys to verify with now; None when there are none or they are too old."""
        keys = self.keys
        if keys is not None and keys.expires_at is not None and self._clock() >= keys.expires_at:
            return None
        return keys

    def load_file(self) -> None:
        """Read ``jwks_file`` (at start and on SIGHUP); TokenKeysError keeps the keys there were."""
        try:
            document = Path(self.file).read_bytes()
        except OSError as exc:
            raise TokenKeysError(f"jwks_file {self.file}: {exc.strerror or exc}") from None
        try:
            self.keys = KeySet(parse_jwks(document), None)
        except TokenKeysError as exc:
            raise TokenKeysError(f"jwks_file {self.file}: {exc}") from None

    async def fetch(self) -> None:
        """Fetch ``jwks_url`` within the deadline; TokenKeysError keeps the keys there were."""
        parts = urlsplit(self.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        pool = UpstreamPool(
            origin,
            max_connections=1,
            connect_timeout_s=self.fetch_timeout_s,
            ssl_context=self._ssl,
        )
        headers = [("Host", parts.netloc), ("Accept", "application/json")]
        try:
            async with asyncio.timeout(self.fetch_timeout_s):
                with await pool.request("GET", target, headers, b"") as answer:
                    document = await answer.body.read(MAX_JWKS_BYTES)
                    if answer.status != 200:
                        raise TokenKeysError(f"jwks_url {self.url}: answered {answer.status}")
        except TimeoutError:
            raise TokenKeysError(
                f"jwks_url {self.url}: no answer within {self.fetch_timeout_s:g} s"
            ) from None
        except (UpstreamError, BodyTooLarge, BodyBroken, OSError) as exc:
            raise TokenKeysError(f"jwks_url {self.url}: {type(exc).__name__}: {exc}") from None
        finally:
            await pool.close()
        try:
            by_kid = parse_jwks(document)
        except TokenKeysError as exc:
            raise TokenKeysError(f"jwks_url {self.url}: {exc}") from None
        self.keys = KeySet(by_kid, self._clock() + self.max_age_s)

    async def refresh(self, *, begun_after_now: bool = False) -> bool:
        """Fetch now, joining a fetch under way (or, ``begun_after_now``, waiting for it and
        then fetching again: what it fetched may predate a key a caller already has); whether
        the fetch succeeded. Reported either way."""
        under_way = self._fetching
        if under_way is not None and not under_way.done() and begun_after_now:
            with contextlib.suppress(TokenKeysError):
                await asyncio.shield(under_way)
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.get_running_loop().create_task(self.fetch())
        try:
            await asyncio.shield(self._fetching)
        except TokenKeysError as exc:
            self._report("jwks", str(exc))
            return False
        self._report("jwks", None)
        return True

    @property
    def fetching(self) -> bool:
        """Whether a fetch is under way."""
        return self._fetching is not None and not self._fetching.done()

    def may_refetch(self) -> bool:
        """Whether a token whose kid is unknown (or that came while no keys were at hand) may
        make the gateway fetch now: at most once every UNKNOWN_KEY_REFETCH_S (URL keys only)."""
        if not self.url:
            return False
        now, last = self._clock(), self._last_refetch_at
        if last is not None and now - last < UNKNOWN_KEY_REFETCH_S:
            return False
        self._last_refetch_at = now
        return True

    async def close(self) -> None:
        """Cancel a fetch under way (at shutdown)."""
        fetching = self._fetching
        if fetching is not None and not fetching.done():
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError, TokenKeysError):
                await fetching

    def refresh_soon(self) -> None:
        """Ask the refresh loop to fetch now (SIGHUP)."""
        self._wake.set()

    async def keep_fresh(self) -> None:
        """Fetch ``jwks_url`` now and then every refresh interval, sooner after a failure,
        until cancelled."""
        while True:
            ok = await self.refresh()
            wait_s = self.refresh_interval_s if ok else min(self.refresh_interval_s, FETCH_RETRY_S)
            self._wake.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass


class TokenVerifier:
    """Verifies bearer tokens for one audience and issuer against a Jwks."""

    def __init__(self, jwks: Jwks, *, audience: str, issuer: str) -> None:
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer

    async def caller(self, token: str) -> str:
        """The ``sub`` of a valid token; UnrecognizedClient for an invalid one (the message
        says why, never what the token was), ServiceUnavailable when no keys are at hand."""
        keys = self.jwks.current()
        if keys is None and (self.jwks.fetching or self.jwks.may_refetch()):
            # Wait for the fetch under way (at start), or make one if none was tried lately;
            # otherwise answer at once rather than make every caller wait for a dead URL.
            await self.jwks.refresh()
            keys = self.jwks.current()
        if keys is None:
            raise ServiceUnavailable(
                "The gateway has no current keys to verify caller tokens with "
                "(jwks_url unreachable for longer than jwks_max_age); nothing was forwarded",
                reason="no_token_keys",
            )
        known = keys.verified.get(token)
        if known is not None and time.time() < known[1] + LEEWAY_S:
            return known[0]
        key = keys.by_kid.get(_kid(token))
        if (
            key is None
            and self.jwks.may_refetch()
            and await self.jwks.refresh(begun_after_now=True)
        ):
            keys = self.jwks.current() or keys
            key = keys.by_kid.get(_kid(token))
        if key is None:
            raise _refused("is signed by a key the gateway does not know (kid)")
        claims = self._decode(token, key)
        subject, expires = claims.get("sub"), claims["exp"]
        if not isinstance(subject, str) or not subject:
            raise _refused("has no sub claim")
        if len(keys.verified) >= MAX_VERIFIED_TOKENS:
            del keys.verified[next(iter(keys.verified))]
        keys.verified[token] = (subject, float(expires))
        return subject

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("has expired") from None
        except jwt.ImmatureSignatureError:
            raise _refused("is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise _refused(f"is not for this gateway's audience ({self.audience})") from None
        except jwt.InvalidIssuerError:
            raise _refused("has another issuer") from None
        except jwt.InvalidAlgorithmError:
            raise _refused(f"is not signed with {key.algorithm_name} (its key's)") from None
        except jwt.InvalidSignatureError:
            raise _refused("does not carry a valid signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refused(f"has no {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise _refused("is not a valid JWT") from None


def _kid(token: str) -> str:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise _refused("is not a valid JWT") from None
    return kid if isinstance(kid, str) else ""


def _refused(why: str) -> UnrecognizedClient:
    return UnrecognizedClient(f"The security token included in the request is invalid: it {why}")
