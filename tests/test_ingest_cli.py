"""``fanout-ingest --config FILE``: a manifest that cannot be used exits 2 naming the field,
in one line per problem, never a traceback; SIGTERM drains and exits 0."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

from fanout_lab.simulators import aws


def _run(tmp_path: pathlib.Path, spec: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "ingest.yaml"
    path.write_text(json.dumps({"apiVersion": "fanout.dev/v1alpha1", "kind": "FanoutIngest", "spec": spec}))
    return subprocess.run(
        [sys.executable, "-m", "fanout_ingest", "--config", str(path), "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AWS_REGION": "us-east-1"},
    )


def test_bad_config_exits_2_naming_the_field(tmp_path: pathlib.Path) -> None:
    result = _run(
        tmp_path, {"topic": {"arn": "not-an-arn"}, "sources": [{"name": "g", "secrets": [{"env": "X"}]}]}
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"fanout-ingest: invalid config {tmp_path / 'ingest.yaml'}:"
    assert "spec.topic.arn" in result.stderr and "Traceback" not in result.stderr


def test_no_readable_secret_exits_2_naming_it(tmp_path: pathlib.Path) -> None:
    spec = {
        "topic": {"arn": "arn:aws:sns:us-east-1:123456789012:t"},
        "sources": [
            {"name": "g", "secrets": [{"file": str(tmp_path / "missing")}, {"env": "FANOUT_TEST_UNSET"}]}
        ],
    }
    result = _run(tmp_path, spec)
    assert result.returncode == 2
    assert "spec.sources[0].secrets[0]" in result.stderr and "spec.sources[0].secrets[1]" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_drains_and_exits_0(tmp_path: pathlib.Path, moto_server: aws.MotoServer) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    path = tmp_path / "ingest.yaml"
    spec = {
        "topic": {"arn": "arn:aws:sns:us-east-1:123456789012:t"},
        "sources": [{"name": "g", "secrets": [{"file": str(secret)}]}],
    }
    path.write_text(json.dumps({"apiVersion": "fanout.dev/v1alpha1", "kind": "FanoutIngest", "spec": spec}))
    port = aws.free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fanout_ingest",
            "--config",
            str(path),
            "--http-port",
            str(port),
            "--drain-seconds",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
        process.wait()
    assert process.stderr is not None
    lines = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    assert [line["msg"] for line in lines if line["msg"].startswith("gateway")] == [
        "gateway started",
        "gateway stopped",
    ]
