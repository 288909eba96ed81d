"""PerSecond: a string formatted once per second; TaskTimeout: a request's deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.http.clock import REARM_MIN_S, Deadline, PerSecond, TaskTimeout
from tests.waiting import FakeClock, loop_turns


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


# --- TaskTimeout: asyncio.timeout's contract for one task, on a clock the test moves


async def _blocked(clock: FakeClock, when: float | None, until: asyncio.Event) -> TaskTimeout:
    """Enter a TaskTimeout for the running task and wait on ``until`` inside it."""
    task = asyncio.current_task()
    assert task is not None
    async with TaskTimeout(clock, task, when) as deadline:
        await until.wait()
    return deadline


async def test_a_deadline_that_passes_raises_timeout_error_out_of_the_block():
    clock, never = FakeClock(), asyncio.Event()
    task = asyncio.create_task(_blocked(clock, clock.now + 5, never))
    await loop_turns(3)
    clock.advance(4.9)
    await loop_turns(3)
    assert not task.done()
    clock.advance(0.1)
    with pytest.raises(TimeoutError):
        await task
    assert task.cancelling() == 0  # our own cancellation was taken back


async def test_a_block_that_ends_in_time_cancels_its_timer():
    clock, done = FakeClock(), asyncio.Event()
    task = asyncio.create_task(_blocked(clock, clock.now + 5, done))
    await loop_turns(3)
    done.set()
    deadline = await task
    assert not deadline.expired()
    assert all(timer.cancelled for timer in clock.timers)
    clock.advance(10)  # nothing fires after the block
    assert not task.cancelled()


async def test_a_cancel_from_outside_stays_a_cancel():
    """The caller's leaving is not a timeout, also when the deadline passes with it."""
    clock, never = FakeClock(), asyncio.Event()
    plain = asyncio.create_task(_blocked(clock, clock.now + 5, never))
    await loop_turns(3)
    plain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await plain
    both = asyncio.create_task(_blocked(clock, clock.now + 5, never))
    await loop_turns(3)
    both.cancel()
    clock.advance(5)  # the deadline passes too, before the task runs again
    with pytest.raises(asyncio.CancelledError):
        await both


async def _held(clock: FakeClock, when: float, held: list[TaskTimeout]) -> None:
    """Enter a TaskTimeout, hand it to the test through ``held``, and wait inside it."""
    task = asyncio.current_task()
    assert task is not None
    async with TaskTimeout(clock, task, when) as deadline:
        held.append(deadline)
        await asyncio.Event().wait()


async def test_a_deadline_moved_later_rearms_when_the_old_timer_fires():
    """As a stream does on every part: no timer is cancelled or added when it moves later."""
    clock, held = FakeClock(), []
    task = asyncio.create_task(_held(clock, clock.now + 5, held))
    await loop_turns(3)
    held[0].reschedule(clock.now + 8)
    assert len(clock.timers) == 1
    clock.advance(5)  # the first timer fires early and re-arms for the new time
    await loop_turns(3)
    assert not task.done() and not held[0].expired()
    clock.advance(3)
    with pytest.raises(TimeoutError):
        await task
    assert held[0].expired() and held[0].when() == 1008.0


async def test_a_deadline_moved_earlier_fires_then():
    clock, held = FakeClock(), []
    task = asyncio.create_task(_held(clock, clock.now + 60, held))
    await loop_turns(3)
    held[0].reschedule(clock.now + 1)
    clock.advance(1)
    with pytest.raises(TimeoutError):
        await task


async def test_no_deadline_never_fires_and_rescheduling_outside_the_block_is_refused():
    clock, done = FakeClock(), asyncio.Event()
    task = asyncio.create_task(_blocked(clock, None, done))
    await loop_turns(3)
    assert clock.timers == []
    done.set()
    deadline = await task
    with pytest.raises(RuntimeError):
        deadline.reschedule(clock.now + 1)


async def test_a_timer_that_fires_a_little_early_is_set_again_at_least_a_millisecond_on():
    """uvloop's timers move in whole milliseconds and may fire up to half of one early: set
    again for the microseconds left, the timer would be due at once, round after round."""
    clock, held = FakeClock(), []
    task = asyncio.create_task(_held(clock, clock.now + 5, held))
    await loop_turns(3)
    (timer,) = clock.timers
    clock.timers.remove(timer)
    clock.now += 5 - 0.0004  # the loop runs the timer 0.4 ms before its time
    timer.callback()
    (again,) = clock.timers
    assert again.when >= clock.now + REARM_MIN_S and not held[0].expired()
    clock.advance(REARM_MIN_S)
    with pytest.raises(TimeoutError):
        await task


def test_a_connection_deadline_fired_early_is_set_again_a_millisecond_on():
    clock, fired = FakeClock(), []
    deadline = Deadline(clock)
    deadline.set(10, lambda: fired.append(clock.now))
    (timer,) = clock.timers
    clock.timers.remove(timer)
    clock.now += 10 - 0.0004
    timer.callback()
    (again,) = clock.timers
    assert again.when >= clock.now + REARM_MIN_S and fired == []
    clock.advance(REARM_MIN_S)
    assert len(fired) == 1


async def test_a_task_timeout_is_entered_once():
    clock, done = FakeClock(), asyncio.Event()
    done.set()
    deadline = await _blocked(clock, clock.now + 5, done)
    with pytest.raises(RuntimeError):
        async with deadline:
            pass
