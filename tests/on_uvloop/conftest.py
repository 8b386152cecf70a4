"""The tests in this folder run on uvloop, the worker's event loop (the rest run on asyncio's).

The sinks' HTTP client is asyncio Protocols: the worker runs it on uvloop, whose transports
close, report errors and type themselves differently from asyncio's own loop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's hook; conftest hooks apply to the tests below their folder only."""
    return {"uvloop": uvloop.new_event_loop}
