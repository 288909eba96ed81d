"""Time for the HTTP layer: one re-armable deadline per connection, a cheaper
``asyncio.timeout`` for each request's exchange, and text formatted once a second (the Date
header, and the gateway's X-Amz-Date and log timestamps).

The deadline reads the time and sets timers through a :class:`Clock`, which is the event loop
in production and a hand-moved clock in the protocol tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

#: A timer that fires before its time is set again at least this far ahead. uvloop's clock and
#: timers move in whole milliseconds, so a timer can fire up to half a millisecond early; set
#: again for what remains, it would be due at once, round after round, until the clock ticks.
REARM_MIN_S = 0.001


class Clock(Protocol):
    """What a deadline needs of the event loop."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Cancellable: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Deadline:
    """A connection's current deadline, one at a time: ``set`` replaces the one before.

    One timer serves every deadline a connection has in turn (head, idle, linger). Moving the
    deadline later, as every request does, only records the new time; when the timer fires
    early it re-arms for the recorded one. So a request costs no timer cancellation.
    """

    __slots__ = ("_at", "_callback", "_clock", "_timer", "_timer_at")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._timer: Cancellable | None = None
        self._timer_at = 0.0
        self._at = 0.0
        self._callback: Callable[[], None] | None = None

    def set(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``delay_s`` unless the deadline is set again or cleared first."""
        at = self._clock.time() + delay_s
        self._at, self._callback = at, callback
        if self._timer is None or self._timer_at > at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self._clock.call_at(at, self._fired), at

    def clear(self) -> None:
        """No deadline (the timer, if armed, fires once more and finds nothing to do)."""
        self._callback = None

    def cancel(self) -> None:
        """No deadline and no timer: the connection is gone."""
        self._callback = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fired(self) -> None:
        self._timer = None
        callback = self._callback
        if callback is None:
            return
        now = self._clock.time()
        if now < self._at:  # moved later since the timer was set (or fired a little early)
            at = max(self._at, now + REARM_MIN_S)
            self._timer, self._timer_at = self._clock.call_at(at, self._fired), at
            return
        self._callback = None
        callback()


class TaskTimeout:
    """``asyncio.timeout`` for one task on the hot path: the same contract (the block's
    cancellation becomes TimeoutError; ``when``, ``reschedule``, ``expired``), at a fraction
    of its cost.

    Written here because every request enters one, and in 3.11 ``asyncio.timeout`` costs three
    ``getpid()`` system calls (each ``get_running_loop()`` checks the process) and a dozen
    enum lookups; the task and the clock (its loop) are given instead. A deadline moved later,
    as a response stream does on every part, only records the new time, as in
    :class:`Deadline`: the armed timer re-arms when it fires early.
    """

    __slots__ = ("_active", "_cancelling", "_clock", "_entered", "_expired", "_task", "_timer",
                 "_timer_at", "_when")  # fmt: skip

    def __init__(self, clock: Clock, task: asyncio.Task[object], when: float | None) -> None:
        self._clock = clock
        self._task = task
        self._when = when
        self._timer: Cancellable | None = None
        self._timer_at = 0.0
        self._expired = False
        self._cancelling = 0
        self._active = self._entered = False

    def when(self) -> float | None:
        """The deadline, in the clock's time (None: none)."""
        return self._when

    def expired(self) -> bool:
        """Whether the deadline passed and cancelled the task."""
        return self._expired

    def reschedule(self, when: float | None) -> None:
        """Move the deadline to ``when`` (None: no deadline); only inside the block. Once it
        has expired the task is cancelled already, and a new time changes nothing."""
        if not self._active:
            raise RuntimeError("a TaskTimeout is rescheduled only inside its block")
        self._when = when
        if (
            when is not None
            and not self._expired
            and (self._timer is None or self._timer_at > when)
        ):
            self._arm(when)

    async def __aenter__(self) -> TaskTimeout:
        if self._entered:
            raise RuntimeError("a TaskTimeout is entered once")
        self._active = self._entered = True
        self._cancelling = self._task.cancelling()
        if self._when is not None:
            self._arm(self._when)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # As asyncio's: only a cancellation of our own, with none requested besides, becomes
        # a TimeoutError (a caller's cancel that came with it stays a cancel).
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._clock.call_at(at, self._fired), at

    def _fired(self) -> None:
        self._timer = None
        when = self._when
        if when is None or self._expired:
            return
        now = self._clock.time()
        if now < when:  # moved later since the timer was set (or fired a little early)
            self._arm(max(when, now + REARM_MIN_S))
            return
        self._expired = True
        self._task.cancel()


class PerSecond:
    """``render(unix_second)`` for the current second, cached until the second changes.

    The gateway formats the time on every request in three places (X-Amz-Date, the Date
    header, the access line's timestamp); formatting dominates their cost, and the text only
    changes once a second.
    """

    __slots__ = ("_render", "_second", "_text")

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._second = -1
        self._text = ""

    def at(self, second: int) -> str:
        """The text for Unix second ``second`` (normally now; see :meth:`now`)."""
        if second != self._second:
            self._second, self._text = second, self._render(second)
        return self._text

    def now(self) -> str:
        """The text for the current second."""
        return self.at(int(time.time()))
