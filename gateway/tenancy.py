"""Callers (DESIGN section 8): who is calling, what they may invoke and how much, and reloads.

Built only when TLS, authentication or a policy is configured; without them the request path
does not call into this module at all.

    identify   bearer token (gateway.auth), else client certificate (gateway.tls), else
               anonymous; with authentication configured, anonymous is 403
               MissingAuthenticationTokenException and an invalid proof 403
               UnrecognizedClientException
    admit      the caller's policy entry (gateway.policy): endpoint and operation allowed, else
               403 AccessDeniedException; under its rate and cap, else 429 ThrottlingException
    reload     SIGHUP: the policy, the JWKS file (or a fetch of the URL) and the TLS files; each
               file that does not load keeps what was loaded before and logs one error line

``sagemaker_gateway_reload_timestamp_seconds{source}`` says when each source (policy, jwks,
tls) last loaded, ``sagemaker_gateway_reload_failed{source}`` whether its last attempt failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry, Gauge

from gateway.auth import Jwks, TokenKeysError, TokenVerifier
from gateway.config import Config, ConfigError
from gateway.errors import MissingToken, UnrecognizedClient
from gateway.http.server import Request
from gateway.metrics import PREFIX
from gateway.policy import ALLOW_ALL, Caller, Clock, Guard, Policy, PolicyError, load_policy
from gateway.tls import ServerTls, TlsError, certificate_caller

Logger = structlog.typing.FilteringBoundLogger
T = TypeVar("T")


class Reloads:
    """The reload metrics, and the one line logged for each file that fails to load."""

    def __init__(self, registry: CollectorRegistry, log: Logger) -> None:
        self.log = log
        self.loaded_at = Gauge(
            PREFIX + "reload_timestamp_seconds",
            "When each source (policy, jwks, tls) was last loaded successfully, in Unix time",
            ("source",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.failed = Gauge(
            PREFIX + "reload_failed",
            "1 when the last load of the source failed and what was loaded before stays in use",
            ("source",),
            registry=registry,
            multiprocess_mode="livemax",
        )

    def reload_tls(self, tls: ServerTls) -> None:
        """Load the TLS files again for new connections; a failure keeps the current ones."""
        try:
            tls.reload()
        except TlsError as exc:
            self.report("tls", str(exc))
        else:
            self.report("tls", None)

    async def watch_tls(self, tls: ServerTls, interval_s: float) -> None:
        """Reload the TLS files whenever one changes (looked at every ``interval_s``)."""
        while True:
            await asyncio.sleep(interval_s)
            if tls.changed():
                self.reload_tls(tls)

    def report(self, source: str, error: str | None) -> None:
        """Record a load of ``source``: ``error`` None when it succeeded, else why it failed."""
        if error is None:
            self.loaded_at.labels(source).set(time.time())
            self.failed.labels(source).set(0)
        else:
            self.failed.labels(source).set(1)
            self.log.error("reload_failed", source=source, error=error)


class Tenancy:
    """Authentication and the policy, for the proxy to ask before it forwards anything."""

    def __init__(self, config: Config, reloads: Reloads, clock: Clock) -> None:
        self.authentication = config.authentication
        self.certificates = bool(config.tls_client_ca_file)
        self.policy_file = config.policy_file
        self.reloads = reloads
        self.jwks: Jwks | None = None
        self.tokens: TokenVerifier | None = None
        if config.token_audience:
            self.jwks = Jwks(
                file=config.jwks_file,
                url=config.jwks_url,
                ca_file=config.jwks_ca_file,
                refresh_interval_s=config.jwks_refresh_interval_s,
                max_age_s=config.jwks_max_age_s,
                fetch_timeout_s=config.jwks_fetch_timeout_s,
                clock=clock,
                report=reloads.report,
            )
            if config.jwks_file:
                _at_start(self.jwks.load_file)
                reloads.report("jwks", None)
            self.tokens = TokenVerifier(
                self.jwks, audience=config.token_audience, issuer=config.token_issuer
            )
        if self.policy_file:
            policy = _at_start(self._load_policy)
            reloads.report("policy", None)
        elif self.authentication:
            raise ConfigError(
                "policy_file: authentication is configured but no policy says who may call what"
                " (give policy_file or a [policy] table)"
            )
        else:
            policy = Policy((), ALLOW_ALL)
        self.guard = Guard(policy, clock)
        self._refreshing: asyncio.Task[None] | None = None

    def _load_policy(self) -> Policy:
        return load_policy(self.policy_file, authentication=self.authentication)

    async def start(self) -> None:
        """Begin fetching the JWKS URL (the first request waits for that first fetch)."""
        if self.jwks is not None and self.jwks.url:
            self._refreshing = asyncio.get_running_loop().create_task(self.jwks.keep_fresh())

    async def stop(self) -> None:
        """Stop fetching."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
        if self.jwks is not None:
            await self.jwks.close()

    def ready(self) -> bool:
        """Whether tokens can be verified now (keys loaded and not too old), if any are taken."""
        return self.jwks is None or self.jwks.current() is not None

    async def identify(self, request: Request) -> Caller:
        """Who sent ``request``: MissingToken or UnrecognizedClient when authentication is
        configured and it proves nobody."""
        identity = None
        if self.tokens is not None:
            token = _bearer_token(request.headers)
            if token is not None:
                identity = await self.tokens.caller(token)
        if identity is None and self.certificates and request.peer:
            identity = certificate_caller(request.peer)
            if identity is None:
                raise UnrecognizedClient(
                    "The client certificate names no URI or DNS subject alternative name"
                )
        if identity is None and self.authentication:
            raise MissingToken(
                "Missing Authentication Token: send Authorization: Bearer <service-account "
                "token>" + (" or a client certificate" if self.certificates else "")
            )
        return self.guard.caller(identity)

    def admit(self, caller: Caller, endpoint: str, operation: str) -> Callable[[], None] | None:
        """Let ``caller`` invoke ``operation`` on ``endpoint`` (returning what to call when the
        request ends), or raise CallerForbidden / CallerThrottled."""
        return self.guard.admit(caller, endpoint, operation)

    def reload(self) -> None:
        """SIGHUP: load the policy and the JWKS file again (fetch the JWKS URL soon)."""
        if self.policy_file:
            try:
                self.guard.replace(self._load_policy())
            except PolicyError as exc:
                self.reloads.report("policy", str(exc))
            else:
                self.reloads.report("policy", None)
        if self.jwks is not None and self.jwks.file:
            try:
                self.jwks.load_file()
            except TokenKeysError as exc:
                self.reloads.report("jwks", str(exc))
            else:
                self.reloads.report("jwks", None)
        elif self.jwks is not None:
            self.jwks.refresh_soon()


def _bearer_token(headers: list[tuple[str, str]]) -> str | None:
    """The token of ``Authorization: Bearer``; None without one (another scheme, such as a
    SigV4 signature a client sends anyway, is not a token). Two bearer tokens prove nothing."""
    found = None
    for name, value in headers:  # (the server has stripped the whitespace around values)
        if len(name) != 13 or name.lower() != "authorization" or value[:7].lower() != "bearer ":
            continue
        if found is not None:
            raise UnrecognizedClient("The request carries more than one bearer token")
        found = value[7:].lstrip(" ")
    return found


def server_tls(config: Config) -> ServerTls | None:
    """The signing listener's TLS, when configured; ConfigError when its files do not load."""
    if not config.tls_cert_file:
        return None
    return _at_start(
        lambda: ServerTls(
            config.tls_cert_file,
            config.tls_key_file,
            config.tls_client_ca_file,
            # Token callers have no certificate: then the handshake only asks for one.
            require_cert=not config.token_audience,
        )
    )


def check_caller_files(config: Config) -> None:
    """Load the TLS, policy and JWKS files as start-up will (ConfigError if one does not)."""
    server_tls(config)
    if config.authentication or config.policy_file:
        reloads = Reloads(CollectorRegistry(), structlog.get_logger("gateway"))
        Tenancy(config, reloads, time.monotonic)


def _at_start(load: Callable[[], T]) -> T:
    """``load()``, its file's error turned into the ConfigError that ends start-up (exit 2)."""
    try:
        return load()
    except (PolicyError, TokenKeysError, TlsError) as exc:
        raise ConfigError(str(exc)) from None
