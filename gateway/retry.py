"""When the gateway may send a request again, and how long it waits first.

Only two failures are retried: a connection that could not be opened (no byte of the request
left the gateway) and throttling (the service refused the request without running it). Never a
ModelError, a timeout, or a request whose body may have reached the model: callers' SDKs retry
too (botocore's defaults replay read timeouts), so a 60-second inference could be paid for
several times over.

Retries are also capped as a whole by :class:`RetryBudget`, so that during an outage they add
a small fraction to the load instead of multiplying it.
"""

from __future__ import annotations

import random
import time

from gateway.http.client import ConnectFailed, TLSFailed

#: Backoff before retry n (1-based) is uniform in [0, min(cap, base * 2**n)] ("full jitter").
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
THROTTLING_ERRORS = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})


def is_connect_failure(exc: BaseException) -> bool:
    """The connection was never established, so nothing was sent (TLS failures will not heal)."""
    return isinstance(exc, ConnectFailed) and not isinstance(exc, TLSFailed)


def is_throttled(status: int, error_type: str) -> bool:
    """The service refused the request for rate, before running the model."""
    return status == 429 or (status == 400 and error_type in THROTTLING_ERRORS)


def backoff_s(retry_number: int) -> float:
    """How long to wait before retry ``retry_number`` (1 for the first retry)."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retry_number))


class RetryBudget:
    """A token bucket: each request earns ``ratio`` of a retry, each retry spends one.

    A floor of ``min_per_s`` retries a second keeps a quiet gateway able to retry at all;
    ``burst`` bounds how many can be saved up.
    """

    def __init__(self, ratio: float = 0.1, min_per_s: float = 2.0, burst: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.burst = burst
        self._tokens = burst
        self._refilled_at = time.monotonic()

    def record_request(self) -> None:
        """A first attempt was made: it earns a fraction of a retry."""
        self._tokens = min(self.burst, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when none is left."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) * self.min_per_s)
        self._refilled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
