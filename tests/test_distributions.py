"""Two distributions, kept apart: the production wheel carries no lab and no lab dependency,
and its ``fanout`` tool, installed without the lab, offers no ``demo`` and says so in one line.

The production wheel is built with ``pip wheel --no-deps`` from a copy of the checkout, lab
included, so that it is the root ``pyproject.toml`` that must leave the lab out (a copy, so a
stale ``build/`` in the checkout cannot leak into the wheel). The "installed without the lab"
environment is this venv's site-packages minus the two editable distributions of this
repository, with the wheel installed beside it: Python runs isolated (``-I -S``), so nothing
but the standard library, that wheel and those dependencies is importable, and the entry-point
metadata it sees is what an installation of the production wheel alone would have.
"""

from __future__ import annotations

import email.parser
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The whole checkout, lab included (the wheel must leave it out), less what is not source.
NOT_SOURCES = (".git", ".venv", ".tools", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache")
LAB_DEPENDENCIES = {"moto", "rich", "fanout-lab"}


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--progress-bar", "off"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("production")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    _pip("wheel", "--no-deps", "-w", str(base), str(source))
    (built,) = base.glob("fanout_consumer-*.whl")
    return built


def _metadata(wheel: pathlib.Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_production_wheel_holds_production_packages_only(wheel: pathlib.Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"workers", "fanout_core", "fanout_operator", "fanout_cli", "fanout_ingest"}
    assert not [name for name in names if "simulators" in name or "/demo/" in name or "harness" in name]


def test_production_wheel_declares_no_lab_dependency(wheel: pathlib.Path) -> None:
    requirements = _metadata(wheel).get_all("Requires-Dist") or []
    assert requirements, "the wheel declares no dependencies at all"
    declared = {re.split(r"[\s\[;<>=!~(]", line, maxsplit=1)[0].lower() for line in requirements}
    assert "pydantic" in declared
    assert not declared & LAB_DEPENDENCIES, requirements


@pytest.fixture(scope="module")
def without_lab(wheel: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """sys.path entries of an installation of the production wheel and its dependencies, no lab."""
    base = tmp_path_factory.mktemp("no-lab")
    target, dependencies = base / "target", base / "dependencies"
    _pip("install", "--no-deps", "--target", str(target), str(wheel))
    dependencies.mkdir()
    ours = re.compile(r"^(__editable__[._]+)?fanout_(consumer|lab)[-_]")
    for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not ours.match(entry.name) and entry.suffix != ".pth":
            (dependencies / entry.name).symlink_to(entry)
    return [str(target), str(dependencies)]


def _fanout(path: list[str], *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    probe = (
        "import sys; sys.path[:0] = sys.argv[1:3]; "
        "from importlib.metadata import entry_points; "
        "(script,) = [e for e in entry_points(group='console_scripts') if e.name == 'fanout']; "
        "sys.exit(script.load()(sys.argv[3:]))"
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, *path, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_fanout_without_the_lab_offers_no_demo_and_says_so_in_one_line(
    without_lab: list[str], tmp_path: pathlib.Path
) -> None:
    demo = _fanout(without_lab, "demo", "--seconds", "5", cwd=tmp_path)
    assert demo.returncode == 2
    assert demo.stdout == ""
    (line,) = demo.stderr.splitlines()
    assert line.startswith("fanout demo: not part of this installation"), line
    assert "make demo" in line

    listed = _fanout(without_lab, "--help", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "validate" in listed.stdout
    assert "demo" not in listed.stdout

    # The same installation does run what it offers (so the line above is not a broken install).
    validated = _fanout(without_lab, "validate", str(ROOT / "examples" / "crm-sync.yaml"), cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "valid FanoutConsumer 'crm-sync'" in validated.stdout
    assert without_lab[0] in _fanout_module_file(without_lab, tmp_path)


def _fanout_module_file(path: list[str], cwd: pathlib.Path) -> str:
    probe = "import sys; sys.path[:0] = sys.argv[1:3]; import fanout_cli, workers; print(fanout_cli.__file__)"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, *path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
