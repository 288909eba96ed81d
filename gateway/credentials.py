"""The credentials the gateway signs with, kept fresh without blocking the event loop.

botocore resolves them (env, profile, web identity / IRSA, container and instance metadata) and
refreshes temporary ones ahead of expiry, but it does so synchronously, inside whatever call
asks for them, sometimes with a network round trip. So the hot path never asks botocore: it
reads a frozen snapshot, and a background task re-reads botocore in a worker thread on a timer.
When nothing can be resolved the snapshot is None and the gateway fails closed (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import botocore.session
import structlog

from gateway.signing import SigningCredentials

Resolver = Callable[[], SigningCredentials | None]
_log = structlog.get_logger("gateway.credentials")


def botocore_resolver() -> Resolver:
    """A resolver over botocore's default credential chain (one session, reused)."""
    session = botocore.session.get_session()
    holder: dict[str, Any] = {}

    def resolve() -> SigningCredentials | None:
        credentials = holder.get("credentials")
        if credentials is None:
            credentials = session.get_credentials()
            if credentials is None:
                return None
            holder["credentials"] = credentials
        # For refreshable credentials this refreshes when botocore judges them close to expiry.
        frozen = credentials.get_frozen_credentials()
        # botocore keeps the expiry of temporary credentials only on this private attribute;
        # without it, expired keys would be signed with until the next refresh succeeded.
        expiry = getattr(credentials, "_expiry_time", None)
        return SigningCredentials(
            frozen.access_key,
            frozen.secret_key,
            frozen.token,
            expires_at=expiry.timestamp() if expiry is not None else None,
        )

    return resolve


class CredentialSource:
    """The current signing credentials, read without blocking and refreshed in the background."""

    def __init__(self, resolve: Resolver, *, check_interval_s: float = 60.0) -> None:
        self._resolve = resolve
        self._check_interval_s = check_interval_s
        self._current: SigningCredentials | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()

    @classmethod
    def static(cls, credentials: SigningCredentials) -> CredentialSource:
        """A source that always has ``credentials`` (the demo and tests)."""
        source = cls(lambda: credentials)
        source._current = credentials
        source._first_attempt.set()
        return source

    def current(self) -> SigningCredentials | None:
        """The credentials to sign with now; None when none could be had or they expired."""
        credentials = self._current
        expires_at = credentials.expires_at if credentials is not None else None
        if expires_at is not None and expires_at <= time.time():
            return None
        return credentials

    async def refresh(self) -> None:
        """Ask the resolver once, in a worker thread; keep the old snapshot if it fails."""
        try:
            credentials = await asyncio.to_thread(self._resolve)
        except Exception as exc:  # botocore raises many kinds; any of them means "none now"
            _log.warning("credentials_unavailable", error=type(exc).__name__)
            return
        finally:
            self._first_attempt.set()
        if credentials is None:
            _log.warning("credentials_unavailable", error="NoCredentials")
        self._current = credentials

    async def wait_first_attempt(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, for the first resolution to finish (right after start,
        a request need not fail only because the lookup began a moment before it)."""
        if not self._first_attempt.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._first_attempt.wait()

    async def start(self) -> None:
        """Start resolving in the background (the listener must not wait for it), until stop()."""
        self._task = asyncio.create_task(self._refresh_forever(), name="credential-refresh")

    async def stop(self) -> None:
        """Stop the background refresh."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._next_delay_s())

    def _next_delay_s(self) -> float:
        """Look again on the regular interval; sooner when nothing is usable or expiry is near."""
        credentials = self.current()
        if credentials is None:
            return min(self._check_interval_s, 1.0)
        if credentials.expires_at is not None:
            remaining = credentials.expires_at - time.time()
            return max(0.5, min(self._check_interval_s, remaining / 2))
        return self._check_interval_s
