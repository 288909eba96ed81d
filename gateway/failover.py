"""Failover: an endpoint's ordered targets, a circuit breaker per target, and the chain walk.

A request moves from one target to the next only when nothing can have run there, the one
condition under which sending it elsewhere is safe (README, Failover):

- the connection could not be opened (after the usual connect retries): ``connect``;
- 503 ServiceUnavailable: ``unavailable``;
- 429 ModelNotReadyException: ``not_ready``;
- throttling, once the retries and the retry budget are spent: ``throttled``;
- the target's circuit is open: ``circuit_open`` (skipped without a connection attempt).

Never after a ModelError, any other 4xx, a timeout, a connection that broke after the request
was written, or once the answer has begun: those may have run a model, and a caller's SDK
retries too. Moving on after a tried target spends the retry budget; skipping an open circuit
does not (nothing is sent to it).

Endpoints without fallbacks never reach this module: :meth:`Failover.chain` is not even asked
when no fallbacks are configured.
"""

from __future__ import annotations

import enum
import fnmatch
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.errors import ServiceUnavailable
from gateway.http.client import UpstreamError, UpstreamPool, UpstreamResponse
from gateway.metrics import Metrics
from gateway.retry import RetryBudget, is_connect_failure, is_throttled
from gateway.signing import Signer

#: A monotonic clock in seconds; tests inject one they move by hand.
Clock = Callable[[], float]

CONNECT = "connect"
UNAVAILABLE = "unavailable"
NOT_READY = "not_ready"
THROTTLED = "throttled"
CIRCUIT_OPEN = "circuit_open"
#: The ``reason`` label of ``fallbacks_total``.
FALLBACK_REASONS = (CONNECT, UNAVAILABLE, NOT_READY, THROTTLED, CIRCUIT_OPEN)


class CircuitState(enum.Enum):
    """A breaker's phase; the value is the ``state`` label of ``circuit_transitions_total``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failures_to_open`` consecutive failures; skipped for ``cooldown_s``; then
    lets one request through (half-open), whose success closes it and whose failure opens it
    again for another cool-down."""

    def __init__(
        self,
        failures_to_open: int,
        cooldown_s: float,
        clock: Clock,
        on_change: Callable[[CircuitState], None],
    ) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.state = CircuitState.CLOSED
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened_at = 0.0

    def allow(self) -> bool:
        """Whether a request may go to the target now (taking the probe when one is due)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and self._clock() >= self._opened_at + self.cooldown_s:
            self._enter(CircuitState.HALF_OPEN)
            return True
        return False  # open and cooling down, or a probe already under way

    def succeeded(self) -> None:
        """The target answered (whatever the answer): it can take requests."""
        self._failures = 0
        if self.state is not CircuitState.CLOSED:
            self._enter(CircuitState.CLOSED)

    def failed(self) -> None:
        """The target could not take the request (one of the failover reasons)."""
        self._failures += 1
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED and self._failures >= self.failures_to_open
        ):
            self._opened_at = self._clock()
            self._enter(CircuitState.OPEN)

    def abandoned(self) -> None:
        """The attempt ended without telling either way (a timeout, the caller left): a probe
        gives its turn back, so the next request probes."""
        if self.state is CircuitState.HALF_OPEN:
            self._enter(CircuitState.OPEN)

    def _enter(self, state: CircuitState) -> None:
        self.state = state
        self._on_change(state)


@dataclass(frozen=True, slots=True)
class Upstream:
    """One Region's runtime: its signer, the Host it signs, and the pool to it."""

    signer: Signer
    host: str
    pool: UpstreamPool


@dataclass(frozen=True, slots=True)
class Route:
    """One target of a chain: where an attempt goes and the breaker that guards it."""

    #: ``endpoint`` in the gateway's Region, ``REGION/endpoint`` in another: the metric label.
    label: str
    endpoint: str
    upstream: Upstream
    breaker: CircuitBreaker


#: Sends one request (with the usual retries) to a route's ``path``.
SendOne = Callable[[Upstream, str], Awaitable[UpstreamResponse]]


def failover_reason(status: int, error_type: str) -> str | None:
    """Why an answer lets the request move on (nothing ran), or None when it must be kept."""
    if status == 503:
        return UNAVAILABLE
    if status == 429 and error_type == "ModelNotReadyException":
        return NOT_READY
    if is_throttled(status, error_type):
        return THROTTLED
    return None


class Failover:
    """The configured fallbacks: chains per endpoint, the breakers, the other Regions' pools."""

    def __init__(
        self,
        config: Config,
        home: Upstream,
        metrics: Metrics,
        retry_budget: RetryBudget,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.home = home
        self.metrics = metrics
        self.retry_budget = retry_budget
        self.clock = clock
        self._region_urls = dict(config.region_urls)
        self._upstreams: dict[str, Upstream] = {config.region: home}
        self._breakers: dict[str, CircuitBreaker] = {}
        #: Per endpoint asked for, its chain (None: no fallbacks), for max_endpoint_labels names.
        self._chains: dict[str, tuple[Route, ...] | None] = {}
        for _, targets in config.fallbacks:  # the gauge shows every configured target at once
            for target in targets:
                self._route(target, tracked=True)

    def chain(self, endpoint: str) -> tuple[Route, ...] | None:
        """The targets for ``endpoint``, itself first; None when it has no fallbacks."""
        try:
            return self._chains[endpoint]
        except KeyError:
            pass
        tracked = len(self._chains) < self.config.max_endpoint_labels
        chain = None
        for pattern, targets in self.config.fallbacks:
            if fnmatch.fnmatchcase(endpoint, pattern):
                primary = self._route(endpoint, tracked=tracked)
                chain = (primary, *(self._route(target, tracked=True) for target in targets))
                break
        if tracked:
            self._chains[endpoint] = chain
        return chain

    async def send(
        self, chain: tuple[Route, ...], endpoint: str, suffix: str, send_one: SendOne
    ) -> tuple[Route, UpstreamResponse]:
        """Walk ``chain`` until a target takes the request; that target and its answer.

        When every target failed, the last answer (or connection failure) is the caller's; when
        every circuit was open, 503 naming the endpoint, at once.
        """
        last_index = len(chain) - 1
        failure: UpstreamError | None = None
        for index, route in enumerate(chain):
            if not route.breaker.allow():
                if index < last_index:
                    self.metrics.fallback(endpoint, route.label, CIRCUIT_OPEN)
                continue
            try:
                up = await send_one(route.upstream, f"/endpoints/{route.endpoint}/{suffix}")
            except UpstreamError as exc:
                if not is_connect_failure(exc):  # the request may have been read: keep it
                    route.breaker.abandoned()
                    raise
                route.breaker.failed()
                if not self._move_on(index < last_index, endpoint, route, CONNECT):
                    raise
                failure = exc
                continue
            except BaseException:  # a timeout or the caller leaving: nothing learnt
                route.breaker.abandoned()
                raise
            reason = failover_reason(up.status, _error_type(up.header("x-amzn-errortype")))
            if reason is None:
                route.breaker.succeeded()
                return route, up
            route.breaker.failed()
            if not self._move_on(index < last_index, endpoint, route, reason):
                return route, up
            up.release()
            failure = None
        if failure is not None:
            raise failure
        raise ServiceUnavailable(
            f"Every target of endpoint {endpoint} has its circuit open "
            f"({', '.join(route.label for route in chain)}); nothing was forwarded",
            reason=CIRCUIT_OPEN,
        )

    async def close(self) -> None:
        """Close the pools to other Regions (the home pool is the app's to close)."""
        for region, upstream in self._upstreams.items():
            if region != self.config.region:
                await upstream.pool.close()

    def _move_on(self, has_next: bool, endpoint: str, route: Route, reason: str) -> bool:
        """Whether to try the next target after ``route`` failed: one is left and the retry
        budget pays for it (counted as a fallback)."""
        if not (has_next and self.retry_budget.try_spend()):
            return False
        self.metrics.fallback(endpoint, route.label, reason)
        return True

    def _route(self, target: str, *, tracked: bool) -> Route:
        region, _, endpoint = target.rpartition("/")
        region = region or self.config.region
        label = endpoint if region == self.config.region else f"{region}/{endpoint}"
        breaker = self._breakers.get(label)
        if breaker is None:
            breaker = self._breaker(label, tracked=tracked)
            if tracked:
                self._breakers[label] = breaker
        return Route(label, endpoint, self._upstream(region), breaker)

    def _breaker(self, label: str, *, tracked: bool) -> CircuitBreaker:
        """A closed breaker; an untracked one (an endpoint past max_endpoint_labels, matched by
        a glob) lives for one request and mints no series."""

        def changed(state: CircuitState) -> None:
            if tracked:
                self.metrics.circuit_changed(label, state.value)

        if tracked:
            self.metrics.circuit_changed(label, CircuitState.CLOSED.value, transition=False)
        return CircuitBreaker(
            self.config.circuit_failures, self.config.circuit_cooldown_s, self.clock, changed
        )

    def _upstream(self, region: str) -> Upstream:
        upstream = self._upstreams.get(region)
        if upstream is None:
            url = self._region_urls.get(region, f"https://runtime.sagemaker.{region}.amazonaws.com")
            pool = UpstreamPool(
                url,
                max_connections=self.config.upstream_pool_size,
                connect_timeout_s=self.config.connect_timeout_s,
            )
            host = Config(upstream_url=url).upstream_host
            upstream = self._upstreams[region] = Upstream(Signer(region, "sagemaker"), host, pool)
        return upstream


def _error_type(header: str | None) -> str:
    """The error code from ``x-amzn-ErrorType``, which may carry ``:<url>`` after it."""
    return (header or "").partition(":")[0].strip()
