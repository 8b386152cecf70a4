"""Driving helm from the chart tests: lint, template, and the rendered documents.

Used by tests/test_helm_*.py. helm runs as a subprocess with its config, cache and data
directories in a temporary HOME and KUBECONFIG pointing nowhere, so a test never reads a
developer's repositories or touches a cluster. `make unit` fetches helm (.ci/get-helm);
:func:`helm_binary` fails in CI when it is missing and skips elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from tests import external_tools

CHART = external_tools.ROOT / "helm" / "fanout-consumer"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
RELEASE = "fanout"
NAMESPACE = "fanout-system"

_HOME = tempfile.mkdtemp(prefix="helm-home-")


def helm_binary() -> str:
    return external_tools.find_tool("helm", how_to_get="make .tools/bin/helm  (runs .ci/get-helm)")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HOME": _HOME,
        "HELM_CACHE_HOME": f"{_HOME}/cache",
        "HELM_CONFIG_HOME": f"{_HOME}/config",
        "HELM_DATA_HOME": f"{_HOME}/data",
        "KUBECONFIG": f"{_HOME}/no-kubeconfig",
    }


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def helm(*args: str) -> Result:
    completed = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120, env=_env(), check=False
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def value_args(values_files: Iterable[pathlib.Path] = (), sets: Sequence[str] = ()) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def template_result(
    *,
    values_files: Iterable[pathlib.Path] = (),
    sets: Sequence[str] = (),
    release: str = RELEASE,
    extra: Sequence[str] = (),
) -> Result:
    return helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        NAMESPACE,
        *value_args(values_files, sets),
        *extra,
    )


def render(
    *,
    values_files: Iterable[pathlib.Path] = (),
    sets: Sequence[str] = (),
    release: str = RELEASE,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The documents `helm template` renders; fails the test with helm's message on error."""
    result = template_result(
        values_files=values_files,
        sets=sets,
        release=release,
        extra=["--include-crds"] if include_crds else [],
    )
    assert result.returncode == 0, result.output
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def by_kind(documents: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


def one(documents: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
