"""The sinks' HTTP transport tests again, on uvloop (``conftest.py`` here): the same test
functions, imported, so pytest collects and runs them a second time on the worker's loop."""

from __future__ import annotations

from tests.test_sinks_http11 import *  # noqa: F403
from tests.test_sinks_transport import *  # noqa: F403
