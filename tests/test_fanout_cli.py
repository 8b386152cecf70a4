"""``fanout``, the user-facing tool: ``validate`` built in, plug-in commands found through the
``fanout.commands`` entry-point group (the lab's ``demo``), and one line, never a traceback,
for a plug-in that is registered but cannot be loaded.

An installation without the lab at all (the image) is checked in tests/test_distributions.py.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from fanout_cli import commands, main
from fanout_lab import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_validate_accepts_a_manifest_and_names_its_consumer(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "examples" / "crm-sync.yaml"
    assert main.main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid FanoutConsumer 'crm-sync'\n"


def test_validate_exits_2_with_one_line_per_problem_naming_the_field(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = harness.manifest(queue_url="http://127.0.0.1:1/1/q", sink_url="http://127.0.0.1:1/")
    del document["spec"]["queue"]["url"]
    document["spec"]["queue"]["maxMessages"] = 11
    path = harness.write_manifest(tmp_path / "bad.yaml", document)
    assert main.main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"fanout validate: invalid config {path}:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "spec.queue.maxMessages",
        "spec.queue.url",
    ]


def test_help_lists_the_built_in_and_the_labs_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "validate" in out
    assert "demo" in out  # the lab is installed here, and registers it


def test_the_labs_demo_is_reached_through_its_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    found = commands.discover(main.BUILT_IN)
    assert "demo" in found.commands and "demo" not in found.unusable
    # The demo's own argument check answers: the plug-in is wired, nothing heavier needed.
    assert main.main(["demo", "--bogus"]) == 2
    assert capsys.readouterr().err == "fanout demo: unrecognised arguments: --bogus\n"


def _register(site: pathlib.Path, name: str, value: str) -> None:
    """A distribution on ``site`` that registers the command ``name`` -> ``value``."""
    info = site / "fanout_broken_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fanout-broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{commands.GROUP}]\n{name} = {value}\n")


def _fanout(*args: str, path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fanout_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(path)},
        check=False,
    )


def test_a_plugin_that_cannot_be_loaded_says_so_in_one_line(tmp_path: pathlib.Path) -> None:
    _register(tmp_path, "broken", "fanout_no_such_module:COMMAND")
    result = _fanout("broken", "--flag", path=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "fanout broken: cannot be loaded (ModuleNotFoundError: No module named 'fanout_no_such_module')"
    ]
    listed = _fanout("--help", path=tmp_path)
    assert listed.returncode == 0
    assert "broken" not in listed.stdout and "validate" in listed.stdout


def test_a_plugin_cannot_take_a_built_in_name(tmp_path: pathlib.Path) -> None:
    _register(tmp_path, "validate", "fanout_no_such_module:COMMAND")
    result = _fanout("validate", str(ROOT / "examples" / "crm-sync.yaml"), path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid FanoutConsumer 'crm-sync'" in result.stdout
