"""with_cancellation: a gone client cancels its handler (whose clean-up runs), the server's own cancellation
propagates, and a handler's error reaches the error handlers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.common.errors import ApiError, ErrorType
from services.common.handling import CLIENT_GONE, with_cancellation


def _request(disconnect: asyncio.Event) -> SimpleNamespace:
    async def receive():
        await disconnect.wait()
        return {"type": "http.disconnect"}

    return SimpleNamespace(receive=receive)


def test_a_gone_client_cancels_the_handler_after_its_clean_up():
    cleaned_up = []

    @with_cancellation
    async def handler(request):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # clean-up that itself awaits (as dropping queued texts may)
            cleaned_up.append(True)
            raise

    async def scenario():
        gone = asyncio.Event()
        task = asyncio.ensure_future(handler(request=_request(gone)))
        await asyncio.sleep(0.01)
        gone.set()
        return await task

    assert asyncio.run(scenario()) is CLIENT_GONE and cleaned_up == [True]


def test_the_servers_cancellation_propagates_and_cancels_the_handler():
    handler_cancelled = []

    @with_cancellation
    async def handler(request):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            handler_cancelled.append(True)
            raise

    async def scenario():
        task = asyncio.ensure_future(handler(request=_request(asyncio.Event())))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert handler_cancelled == [True]


def test_a_handlers_answer_and_errors_pass_through():
    @with_cancellation
    async def answers(request):
        return "vectors"

    @with_cancellation
    async def fails(request):
        raise ApiError(ErrorType.EMPTY, "input is empty")

    assert asyncio.run(answers(request=_request(asyncio.Event()))) == "vectors"
    with pytest.raises(ApiError):
        asyncio.run(fails(request=_request(asyncio.Event())))
