"""A message body as it arrives from a peer: one buffer, with flow control, for both sides.

The connection's parser feeds it (:meth:`Body.feed`, :meth:`Body.finish`, :meth:`Body.fail`);
the handler takes it whole up to a limit (:meth:`Body.read`: a request body, which the gateway
signs whole) or piece by piece as it comes (:meth:`Body.read_chunk`: an answer relayed as a
stream). While more than ``high_water`` bytes wait untaken, the connection stops reading from
its socket, so a slow consumer never makes the gateway hold more than that; a whole read raises
the mark to its limit, since the consumer holds the whole body anyway.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Protocol

#: Reading from the socket pauses while this much of a body waits untaken, by default.
HIGH_WATER_BYTES = 256 * 1024
#: Pieces smaller than this are joined to the one before rather than kept one by one.
SMALL_PIECE_BYTES = 4096


class Source(Protocol):
    """The connection a body arrives on."""

    def body_full(self) -> None:
        """More than the high-water mark waits: stop reading from the socket."""

    def body_taken(self) -> None:
        """The consumer took what waited (or wants more): read on, if nothing else forbids."""


class _Detached:
    """The source of a body whose owner is done with it: there is no one to tell any more."""

    def body_full(self) -> None:
        pass

    def body_taken(self) -> None:
        pass


_DETACHED = _Detached()


class BodyError(Exception):
    """The body cannot be had whole."""


class BodyTooLarge(BodyError):
    """More than the reader's limit arrived (what arrived stays in the buffer)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


class BodyTimedOut(BodyError):
    """The whole body did not arrive within the reader's deadline."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the body did not arrive within {timeout_s:g} s")
        self.timeout_s = timeout_s


class BodyBroken(BodyError):
    """The body's framing is broken (a bad chunk size, a trailer): it can never complete."""


class Body:
    """Bytes of one message body, received and not yet taken."""

    __slots__ = ("_chunks", "_error", "_on_wanted", "_size", "_source", "_waiter",
                 "_wake_above", "complete", "high_water", "received")  # fmt: skip

    def __init__(
        self,
        source: Source,
        *,
        high_water: int = HIGH_WATER_BYTES,
        on_wanted: Callable[[], None] | None = None,
    ) -> None:
        self._source = source
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: The waiting reader wakes once more than this is buffered (or at the end).
        self._wake_above = 0
        #: Called once when a reader first waits for bytes (the server's 100 Continue).
        self._on_wanted = on_wanted
        #: Every byte of the body has arrived (it may not all have been taken).
        self.complete = False
        self.high_water = high_water
        #: Body bytes received so far.
        self.received = 0

    # --- the consumer

    async def read(self, limit: int, timeout_s: float | None = None) -> bytes:
        """The whole body, once all of it has arrived.

        Raises BodyTooLarge as soon as more than ``limit`` bytes have arrived, BodyTimedOut
        when the body is not complete within ``timeout_s``, and the error the body failed with
        (broken framing, a lost connection). A body that came whole with its head is returned
        at once: no timer is armed for it.
        """
        if self._awaited(limit):
            self.high_water = self._wake_above = limit
            self._wanted()
            try:
                async with asyncio.timeout(timeout_s):
                    while self._awaited(limit):
                        await self._wait()
            except TimeoutError:
                raise BodyTimedOut(timeout_s or 0.0) from None
        if self._size > limit:
            raise BodyTooLarge(limit)
        if self._error is not None:
            raise self._error
        return self.take()

    async def read_chunk(self) -> bytes:
        """What has arrived since the last call, waiting for some; b"" at the end. The error
        the body failed with is raised once what did arrive has been handed out."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._wake_above = 0
            self._wanted()
            await self._wait()
        return self.take()

    def detach(self) -> None:
        """The owner is done: flow control reaches no connection from here on. An owner that
        is also the body's source calls this, so that the two form no reference cycle, which
        only the garbage collector would free (a pause in some later request)."""
        self._source = _DETACHED

    def take_whole(self) -> bytes | None:
        """The whole body if all of it has arrived (small answers come with their head),
        else None and nothing is taken."""
        return self.take() if self.complete else None

    def take(self) -> bytes:
        """Everything received and not taken yet."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._source.body_taken()
        return data

    # --- the producer (the connection's parser)

    def feed(self, data: bytes) -> None:
        chunks = self._chunks
        last = chunks[-1] if chunks else None
        if len(data) < SMALL_PIECE_BYTES and last is not None and len(last) < SMALL_PIECE_BYTES:
            # Tiny pieces (a chunked body sent a few bytes at a time) are joined up to a few
            # KiB, so that per-object overhead cannot make a body cost many times its size.
            chunks[-1] = last + data
        else:
            chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._size > self._wake_above:
            self._wake()
        if self._size > self.high_water:
            self._source.body_full()

    def finish(self) -> None:
        self.complete = True
        self._on_wanted = None
        self._wake()

    def fail(self, error: Exception) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._wake()

    # --- internals

    def _awaited(self, limit: int) -> bool:
        """More of the body is still to come and may be waited for: not complete, not failed,
        not over ``limit``. A method, not an expression in ``read``'s loop: mypy keeps an
        attribute narrowed by a check (``_error`` is None) across an ``await``, although another
        callback may set it meanwhile, and the compiled module (mypyc) would trust that type."""
        return not self.complete and self._error is None and self._size <= limit

    def _wanted(self) -> None:
        self._source.body_taken()
        on_wanted, self._on_wanted = self._on_wanted, None
        if on_wanted is not None:
            on_wanted()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter  # a consumer that is cancelled stops waiting here
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
