"""PerSecond: a string formatted once per second."""

from __future__ import annotations

import time

from gateway.http.clock import PerSecond


def test_the_text_is_rendered_once_per_second():
    """Asking again within a second reuses the text; a new second renders anew."""
    rendered: list[int] = []
    clock = PerSecond(lambda second: rendered.append(second) or f"t{second}")
    assert [clock.at(100), clock.at(100), clock.at(101), clock.at(101)] == [
        "t100", "t100", "t101", "t101",
    ]  # fmt: skip
    assert rendered == [100, 101]


def test_now_is_the_current_second():
    """now() renders the current Unix second."""
    clock = PerSecond(str)
    before = int(time.time())
    assert before <= int(clock.now()) <= int(time.time())
