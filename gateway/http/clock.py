"""Time for the HTTP layer: one re-armable deadline per connection, and text formatted once a
second (the Date header, and the gateway's X-Amz-Date and log timestamps).

The deadline reads the time and sets timers through a :class:`Clock`, which is the event loop
in production and a hand-moved clock in the protocol tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


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
        if self._clock.time() < self._at:  # moved later since the timer was set
            self._timer, self._timer_at = self._clock.call_at(self._at, self._fired), self._at
            return
        self._callback = None
        callback()


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
