"""Waiting in tests: poll a condition until it holds, with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
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
