"""Waiting in tests: poll a condition until it holds, with a deadline, never a bare sleep."""

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
