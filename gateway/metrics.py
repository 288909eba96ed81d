"""The Prometheus metrics of DESIGN section 6, on a registry the app is given.

Only endpoint names that passed validation become label values, at most max_endpoint_labels
of them; variants come from the upstream's answer, or from a validated TargetVariant the answer
did not confirm, at most MAX_UNCONFIRMED_VARIANTS of those per endpoint. A caller sending
made-up names therefore mints a bounded number of series. Requests refused before forwarding
are counted by reason alone.

Response streams (InvokeEndpointWithResponseStream answered 200) have families of their own,
per endpoint and variant (and inference component when that label is on), under the same
budgets. A stream's ``outcome`` is one of STREAM_OUTCOMES; ``error_code`` is the
ModelStreamError's ErrorCode when it is one the API documents (MODEL_STREAM_ERROR_CODES), else
OTHER_ERROR_CODE, and empty for every other outcome: SageMaker's own strings never become
label values unchecked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__

PREFIX = "sagemaker_gateway_"
#: The endpoint label of names past max_endpoint_labels; "_" keeps it apart from real names.
OTHER_ENDPOINTS = "_other"
#: TargetVariant names an answer did not confirm that become variant labels, per endpoint
#: (an endpoint has at most ten production variants); later ones count as "_other".
MAX_UNCONFIRMED_VARIANTS = 10
OTHER_VARIANTS = "_other"

#: From half a millisecond (the gateway's own overhead) to past the model's 60-second limit:
#: 58 and 62 bracket it, so answers that hit the limit stand apart from slow ones that did not.
DURATION_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 58.0, 62.0, 75.0, 120.0,
)  # fmt: skip
#: Time to a stream's first part: from 10 ms (a model answering from cache) to the 60 s after
#: which SageMaker gives up on the model.
FIRST_PART_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip
#: Time between two parts of a stream: from 1 ms (parts relayed together) to a 10 s stall.
PART_GAP_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: 100 bytes to the 6 MB the service accepts.
SIZE_BUCKETS_BYTES = (
    100, 1_000, 10_000, 100_000, 500_000, 1_000_000, 2_500_000, 5_242_880, 6_291_456,
)  # fmt: skip


#: How a response stream ended (the ``outcome`` label of ``streams_total``):
#: completed: the upstream ended it after whole messages and no exception;
#: model_stream_error: a ModelStreamError message (``error_code`` says which);
#: internal_stream_failure: an InternalStreamFailure message;
#: malformed: bytes botocore cannot parse as an event stream, or an exception or error message
#: the API does not define (the bytes are still relayed as they came);
#: caller_left: the caller disconnected (the upstream request is cancelled);
#: idle_timeout: the gateway cut it, the next part not having come within stream_idle_timeout
#: (the first within upstream_timeout);
#: upstream_cut: the connection to SageMaker closed or reset before the stream ended, or the
#: stream ended inside a message.
COMPLETED = "completed"
MODEL_STREAM_ERROR = "model_stream_error"
INTERNAL_STREAM_FAILURE = "internal_stream_failure"
MALFORMED = "malformed"
CALLER_LEFT = "caller_left"
IDLE_TIMEOUT = "idle_timeout"
UPSTREAM_CUT = "upstream_cut"
STREAM_OUTCOMES = (COMPLETED, MODEL_STREAM_ERROR, INTERNAL_STREAM_FAILURE, MALFORMED,
                   CALLER_LEFT, IDLE_TIMEOUT, UPSTREAM_CUT)  # fmt: skip
#: The ErrorCodes botocore's service model documents for ModelStreamError.
MODEL_STREAM_ERROR_CODES = frozenset({"ModelInvocationTimeExceeded", "StreamBroken"})
#: The ``error_code`` label of any other (or a missing) ErrorCode.
OTHER_ERROR_CODE = "_other"


@dataclass(frozen=True, slots=True)
class _Series:
    """The children every request of one (endpoint, variant, operation[, component]) uses."""

    request_duration: Any
    request_size: Any
    response_size: Any


@dataclass(frozen=True, slots=True)
class StreamSeries:
    """The children one stream's (endpoint, variant[, component]) uses while it is relayed."""

    first_part: Any
    part_gap: Any
    parts: Any
    payload_bytes: Any


@dataclass(slots=True)
class StreamFigures:
    """What one response stream did: kept as it is relayed, counted and logged when it ends."""

    parts: int = 0
    #: Bytes of the PayloadParts' payloads (the model's output, without the framing).
    payload_bytes: int = 0
    #: From the request's arrival to its first part relayed; None until a part came.
    first_part_s: float | None = None
    #: The longest time between two consecutive parts; None with fewer than two parts.
    largest_gap_s: float | None = None
    #: One of STREAM_OUTCOMES once the stream has ended; "" while it runs.
    outcome: str = ""
    #: The ModelStreamError's ErrorCode as SageMaker sent it (cut to 100 characters), or "".
    error_code: str = ""


@dataclass(slots=True)
class Outcome:
    """What happened to one forwarded-or-refused request with a valid endpoint name."""

    request_id: str
    operation: str
    endpoint: str
    variant: str = "unknown"
    #: Whether ``variant`` came from the upstream's answer (else from the caller's TargetVariant).
    variant_confirmed: bool = False
    status: int = 0
    error: str = ""
    duration_s: float = 0.0
    upstream_duration_s: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    model_timeout: bool = False
    #: SageMaker's x-amzn-RequestId for a forwarded call: the id its caller got back.
    upstream_request_id: str | None = None
    #: The validated InferenceComponentName, "" when none (a label only when opted in).
    inference_component: str = ""
    #: time.perf_counter() when the request arrived (its head read).
    arrived_at: float = 0.0
    #: With fallbacks: the target that answered ("name" or "REGION/name"); "" without.
    target: str = ""
    #: For a response stream that began (a 200 to InvokeEndpointWithResponseStream).
    stream: StreamFigures | None = None
    #: The caller's label (a policy name, "_anonymous" or "_other"; with a policy only) and
    #: the identity it proved (for the access line; None when anonymous).
    caller: str = ""
    caller_identity: str | None = None


class Metrics:
    """The gateway's metric families, created on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        component_label: bool = False,
        multiprocess: bool = False,
        max_endpoint_labels: int = 500,
        caller_label: bool = False,
    ) -> None:
        """``multiprocess``: values live in PROMETHEUS_MULTIPROC_DIR, summed over --workers.

        At most ``max_endpoint_labels`` endpoint names become label values; later ones are
        counted under ``OTHER_ENDPOINTS``. Without an endpoint allowlist any well-formed name
        is forwarded, so this bounds the series a caller can create by inventing names.
        ``caller_label``: requests and durations carry the caller's label (with a policy,
        whose names bound its values).
        """
        self.registry = registry
        self.multiprocess = multiprocess
        self.max_endpoint_labels = max_endpoint_labels
        self._endpoints: set[str] = set()
        self._unconfirmed_variants: dict[str, set[str]] = {}
        # Label children, looked up once per label set instead of once per request (the
        # families themselves bound how many there are).
        self._series: dict[tuple[str, ...], _Series] = {}
        self._counters: dict[tuple[str, ...], Any] = {}
        self._upstream: dict[tuple[str, ...], Any] = {}
        self._in_flight: dict[str, Any] = {}
        self._streams: dict[tuple[str, ...], StreamSeries] = {}
        self._stream_ends: dict[tuple[str, ...], Any] = {}
        # The inference component is an opt-in label: an endpoint may host hundreds of them.
        self.component_label = component_label
        per_variant: tuple[str, ...] = ("endpoint", "variant", "operation")
        if component_label:
            per_variant = (*per_variant, "inference_component")
        self.caller_label = caller_label
        if caller_label:
            per_variant = (*per_variant, "caller")
        self.requests = Counter(
            PREFIX + "requests",
            "Requests with a valid endpoint name, by outcome",
            (*per_variant, "status", "error"),
            registry=registry,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Whole request inside the gateway, from first byte read to last byte written",
            per_variant,
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            PREFIX + "upstream_duration_seconds",
            "Time waiting on SageMaker, from sending the request to the end of its answer",
            per_variant,
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.model_timeouts = Counter(
            PREFIX + "model_timeouts",
            "ModelError answers reporting that the model did not answer within its time limit",
            ("endpoint", "variant"),
            registry=registry,
        )
        self.in_flight = Gauge(
            PREFIX + "in_flight_requests",
            "Requests being handled now",
            ("endpoint",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            PREFIX + "rejected_requests",
            "Requests answered by the gateway without forwarding, by reason",
            ("reason",),
            registry=registry,
        )
        self.request_size = Histogram(
            PREFIX + "request_body_bytes",
            "Request body sizes",
            ("endpoint", "operation"),
            buckets=SIZE_BUCKETS_BYTES,
            registry=registry,
        )
        self.response_size = Histogram(
            PREFIX + "response_body_bytes",
            "Response body sizes",
            ("endpoint", "operation"),
            buckets=SIZE_BUCKETS_BYTES,
            registry=registry,
        )
        per_stream: tuple[str, ...] = ("endpoint", "variant")
        if component_label:
            per_stream = (*per_stream, "inference_component")
        self.stream_first_part = Histogram(
            PREFIX + "stream_first_part_seconds",
            "Response streams: from the request's arrival to its first part relayed to the caller",
            per_stream,
            buckets=FIRST_PART_BUCKETS_S,
            registry=registry,
        )
        self.stream_part_gap = Histogram(
            PREFIX + "stream_part_gap_seconds",
            "Response streams: time between two consecutive parts relayed",
            per_stream,
            buckets=PART_GAP_BUCKETS_S,
            registry=registry,
        )
        self.stream_largest_gap = Histogram(
            PREFIX + "stream_largest_gap_seconds",
            "Response streams of two or more parts: each stream's longest time between parts",
            per_stream,
            buckets=PART_GAP_BUCKETS_S,
            registry=registry,
        )
        self.stream_parts = Counter(
            PREFIX + "stream_parts",
            "Response streams: PayloadParts relayed to callers",
            per_stream,
            registry=registry,
        )
        self.stream_bytes = Counter(
            PREFIX + "stream_bytes",
            "Response streams: payload bytes of the PayloadParts relayed (without the framing)",
            per_stream,
            registry=registry,
        )
        self.streams = Counter(
            PREFIX + "streams",
            "Response streams that ended, by how (error_code: a ModelStreamError's ErrorCode)",
            (*per_stream, "outcome", "error_code"),
            registry=registry,
        )
        self._add_failover_families(registry)
        # A gauge rather than an Info: Info has no multiprocess mode.
        Gauge(
            PREFIX + "build_info",
            "The running gateway's version",
            ("version",),
            registry=registry,
            multiprocess_mode="max",
        ).labels(__version__).set(1)
        if not multiprocess:  # a callback gauge reads one process; it cannot be summed
            Gauge(
                PREFIX + "event_loop_tasks",
                "asyncio tasks alive in the gateway's event loop (a leak shows as steady growth)",
                registry=registry,
            ).set_function(_event_loop_tasks)

    def endpoint_label(self, endpoint: str) -> str:
        """The label value for ``endpoint``: its name, or OTHER_ENDPOINTS past the budget."""
        return _budgeted(self._endpoints, endpoint, self.max_endpoint_labels, OTHER_ENDPOINTS)

    def variant_label(self, endpoint: str, outcome: Outcome) -> str:
        """The label value for ``outcome``'s variant under the endpoint label ``endpoint``."""
        variant = outcome.variant
        if outcome.variant_confirmed or variant == "unknown":
            return variant
        seen = self._unconfirmed_variants.setdefault(endpoint, set())
        return _budgeted(seen, variant, MAX_UNCONFIRMED_VARIANTS, OTHER_VARIANTS)

    def in_flight_for(self, endpoint: str) -> Any:
        """The in-flight gauge of ``endpoint`` (its label child, looked up once)."""
        label = self.endpoint_label(endpoint)
        gauge = self._in_flight.get(label)
        if gauge is None:
            gauge = self._in_flight[label] = self.in_flight.labels(label)
        return gauge

    def stream_series(self, outcome: Outcome) -> StreamSeries:
        """The children a stream of ``outcome``'s endpoint and variant is counted in."""
        labels = self._stream_labels(outcome)
        series = self._streams.get(labels)
        if series is None:
            series = self._streams[labels] = StreamSeries(
                self.stream_first_part.labels(*labels),
                self.stream_part_gap.labels(*labels),
                self.stream_parts.labels(*labels),
                self.stream_bytes.labels(*labels),
            )
        return series

    def _stream_labels(self, outcome: Outcome) -> tuple[str, ...]:
        endpoint = self.endpoint_label(outcome.endpoint)
        labels: tuple[str, ...] = (endpoint, self.variant_label(endpoint, outcome))
        if self.component_label:
            labels = (*labels, outcome.inference_component)
        return labels

    def _record_stream(self, outcome: Outcome, stream: StreamFigures) -> None:
        """Count how a stream ended, and its largest gap (its parts were counted as relayed)."""
        labels = self._stream_labels(outcome)
        end_labels = (*labels, stream.outcome, stream_error_code_label(stream))
        counter = self._stream_ends.get(end_labels)
        if counter is None:
            counter = self._stream_ends[end_labels] = self.streams.labels(*end_labels)
        counter.inc()
        if stream.largest_gap_s is not None:
            self.stream_largest_gap.labels(*labels).observe(stream.largest_gap_s)

    def _add_failover_families(self, registry: CollectorRegistry) -> None:
        """Failover (gateway.failover): its target labels are the configured targets and the
        endpoints they serve, so the config bounds them."""
        self.fallbacks = Counter(
            PREFIX + "fallbacks",
            "Requests moved on from a target (the one left) to the next, by why",
            ("endpoint", "target", "reason"),
            registry=registry,
        )
        self.target_answers = Counter(
            PREFIX + "target_answers",
            "Answers to requests for endpoints with fallbacks, by the target that answered",
            ("endpoint", "target"),
            registry=registry,
        )
        self.circuit_open = Gauge(
            PREFIX + "circuit_open",
            "1 while a failover target's circuit is open or half-open (probing), else 0",
            ("target",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.circuit_transitions = Counter(
            PREFIX + "circuit_transitions",
            "Circuit breaker changes of state, by the state entered",
            ("target", "state"),
            registry=registry,
        )

    def fallback(self, endpoint: str, target: str, reason: str) -> None:
        """Count a request moved on from ``target`` for ``reason``."""
        self.fallbacks.labels(self.endpoint_label(endpoint), target, reason).inc()

    def answered_by(self, endpoint: str, target: str) -> None:
        """Count an answer from ``target`` to a request for ``endpoint`` (one with fallbacks)."""
        self.target_answers.labels(self.endpoint_label(endpoint), target).inc()

    def circuit_changed(self, target: str, state: str, *, transition: bool = True) -> None:
        """A breaker entered ``state`` ("closed", "open", "half_open")."""
        self.circuit_open.labels(target).set(0 if state == "closed" else 1)
        if transition:
            self.circuit_transitions.labels(target, state).inc()

    def reject(self, reason: str) -> None:
        """Count a request refused before forwarding."""
        self.rejected.labels(reason).inc()

    def record(self, outcome: Outcome) -> None:
        """Count one finished request with a valid endpoint name."""
        endpoint = self.endpoint_label(outcome.endpoint)
        variant = self.variant_label(endpoint, outcome)
        labels: tuple[str, ...] = (endpoint, variant, outcome.operation)
        if self.component_label:
            labels = (*labels, outcome.inference_component)
        if self.caller_label:
            labels = (*labels, outcome.caller)
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(
                self.request_duration.labels(*labels),
                self.request_size.labels(endpoint, outcome.operation),
                self.response_size.labels(endpoint, outcome.operation),
            )
        outcome_labels = (*labels, str(outcome.status), outcome.error)
        counter = self._counters.get(outcome_labels)
        if counter is None:
            counter = self._counters[outcome_labels] = self.requests.labels(*outcome_labels)
        counter.inc()
        series.request_duration.observe(outcome.duration_s)
        if outcome.upstream_duration_s is not None:
            # Looked up only for forwarded requests: a child, once made, is exported.
            upstream = self._upstream.get(labels)
            if upstream is None:
                upstream = self._upstream[labels] = self.upstream_duration.labels(*labels)
            upstream.observe(outcome.upstream_duration_s)
        if outcome.model_timeout:
            self.model_timeouts.labels(endpoint, variant).inc()
        series.request_size.observe(outcome.request_bytes)
        series.response_size.observe(outcome.response_bytes)
        # A stream without an outcome was stopped by a failure of the gateway itself (logged
        # as unhandled_error): none of the outcomes would say what happened to it.
        if outcome.stream is not None and outcome.stream.outcome:
            self._record_stream(outcome, outcome.stream)


def stream_error_code_label(stream: StreamFigures) -> str:
    """The ``error_code`` label of a stream that ended: bounded to the documented codes."""
    if stream.outcome != MODEL_STREAM_ERROR:
        return ""
    return stream.error_code if stream.error_code in MODEL_STREAM_ERROR_CODES else OTHER_ERROR_CODE


def _budgeted(seen: set[str], value: str, budget: int, other: str) -> str:
    """``value`` as a label value while at most ``budget`` values are in ``seen``, else
    ``other``: the first ``budget`` values seen keep their own series."""
    if value in seen:
        return value
    if len(seen) < budget:
        seen.add(value)
        return value
    return other


def _event_loop_tasks() -> float:
    """Tasks of the running loop; 0 when read outside one (no loop, no tasks to leak)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0
