"""Request body time limits: one timer for every read in progress (``api/asgi.BodyDeadlines``)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from llmrelay.api.asgi import BodyDeadlines, Message, Request
from llmrelay.core.errors import RequestTimeout


def _request(deadlines: BodyDeadlines, arrives_after: float | None) -> Request:
    async def receive() -> Message:
        if arrives_after is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(arrives_after)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "headers": [], "method": "POST", "path": "/"}
    return Request(scope, receive, {}, deadlines)


async def test_each_read_ends_at_its_own_deadline_on_one_timer() -> None:
    deadlines = BodyDeadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def timed(limit: float, arrives_after: float | None) -> tuple[str, float]:
        try:
            body = await _request(deadlines, arrives_after).body(1024, limit)
        except RequestTimeout:
            return "408", loop.time() - started
        return body.decode(), loop.time() - started

    # The later deadline first: the timer must be brought forward for the earlier one.
    results = await asyncio.gather(timed(0.3, None), timed(0.1, None), timed(0.5, 0.05))
    assert [r[0] for r in results] == ["408", "408", "{}"]
    assert 0.1 <= results[1][1] < 0.25
    assert 0.3 <= results[0][1] < 0.45
    assert not deadlines._pending
    assert not deadlines._expired


async def test_a_cancellation_that_is_not_the_deadline_stays_a_cancellation() -> None:
    deadlines = BodyDeadlines()
    task = asyncio.ensure_future(_request(deadlines, None).body(1024, 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._pending
    assert not deadlines._expired


def test_an_app_served_on_a_second_loop_still_times_bodies_out() -> None:
    deadlines = BodyDeadlines()

    async def cut_short() -> None:
        # Leaves the timer armed 0.5 s ahead on this loop, which then closes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_request(deadlines, None).body(1024, 0.5), 0.01)

    async def read() -> str:
        try:
            body = await asyncio.wait_for(_request(deadlines, None).body(1024, 0.6), 3.0)
        except RequestTimeout:
            return "408"
        return body.decode()

    asyncio.run(cut_short())
    assert asyncio.run(read()) == "408"
