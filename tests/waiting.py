"""Waiting in tests: poll a condition until it holds, with a deadline, never a bare sleep; and a
clock that moves only when a test moves it."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def poll(
    condition: Callable[[], bool | Awaitable[bool]],
    deadline_s: float = 10.0,
    interval_s: float = 0.02,
) -> None:
    """Wait until ``condition()`` (plain or async) is true; TimeoutError after ``deadline_s``.

    Used where the thing waited on has no event to await (another process, a socket's state).
    """
    async with asyncio.timeout(deadline_s):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval_s)


def poll_blocking(
    condition: Callable[[], bool], what: str, deadline_s: float = 10.0, interval_s: float = 0.1
) -> None:
    """The same for synchronous code (a module-scoped fixture waiting on another process, such
    as Prometheus finishing a scrape): nothing there can be awaited, so it checks on a timer."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(interval_s)


async def loop_turns(count: int) -> None:
    """Let the event loop go round ``count`` times: no time passes, but what was scheduled
    runs (a handler handed a request, a read callback). Not a wait for a condition."""
    loop = asyncio.get_running_loop()
    for _ in range(count):
        turned = loop.create_future()
        loop.call_soon(turned.set_result, None)
        await turned


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """The connection's clock: time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on, firing every timer that falls due (and any they set that do too)."""
        self.now += seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= self.now]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            timer.callback()
