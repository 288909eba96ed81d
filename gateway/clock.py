"""Strings formatted from the current second, computed once a second rather than per request."""

from __future__ import annotations

import time
from collections.abc import Callable


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
