"""Fixtures for the ``test_emulator*`` modules: the emulator on a free port, an HTTP client.

A plugin module (``pytest_plugins = ["tests.emulator_fixtures"]``), kept apart from the helpers in
:mod:`tests.emulator_client` so that pytest loads it before anything imports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.emulator import EmulatorSettings, make_emulator_app
from tests.emulator_client import SETTINGS

Start = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def start_emulator(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Start:
    """Start an emulator on a free port; keyword arguments go to ``make_emulator_app``."""

    async def start(settings: EmulatorSettings = SETTINGS, **kwargs: object) -> TestServer:
        return await aiohttp_server(make_emulator_app(settings, **kwargs))  # type: ignore[arg-type]

    return start


@pytest.fixture
async def server(start_emulator: Start) -> TestServer:
    """The emulator with the test settings."""
    return await start_emulator()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed after the test."""
    async with aiohttp.ClientSession() as session:
        yield session
