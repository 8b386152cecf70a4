"""The built image, booted and exercised: ``make image-check`` (not ``make test``).

`make image-check` builds the Dockerfile with buildah (.ci/build-image; on these machines on
a stand-in base, see the README's "Container image") and runs this module with ``-m image``.
Every process here runs in the image under runc (tests/image_runtime.py) as a kubelet would
run the pod: read-only root filesystem, a tmpfs at /tmp as the only writable path, the
image's numeric non-root user (or the pod's), no capabilities, and the image's shells masked
(nothing may need a shell script). Processes share the host's network, so the worker in the
image reaches the moto server and the webhook receiver on 127.0.0.1.

What it proves: every command the image offers starts, and ``fanout demo`` (a lab command)
says in one line that it is not there; the worker pod the operator renders consumes a queue
and delivers every event exactly once, then drains on SIGTERM; the operator answers its
liveness probe and talks to a Kubernetes API; the app layer holds the production
distribution and its dependencies only (no lab, test doubles, demo-only or build tools), no
compiler, no build leftovers and not the host's CA bundle. It prints the app layer's size
and its largest packages.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import tomllib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fanout_lab import harness
from fanout_lab.simulators import aws, webhook
from fanout_operator import rendering
from tests import external_tools, image_runtime, operator_harness

pytestmark = pytest.mark.image

ROOT = image_runtime.ROOT
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
IMAGE = os.environ.get("FANOUT_IMAGE", f"localhost/fanout-consumer:{VERSION}")
ENTRY_POINTS = ("fanout-worker", "fanout-operator", "fanout-ingest", "fanout")
# How to exercise each command `fanout --help` lists in the image (a new one must be added here).
FANOUT_COMMANDS = {
    "validate": ("validate", "/examples/crm-sync.yaml"),
    "dlq": ("dlq", "summary", "--config", "/work/consumer.yaml"),
}
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "make", "ld")
BUILD_LEFTOVERS = ("/wheels", "/src", "/root/.cache/pip")
STAND_IN_LABEL = "dev.fanout.stand-in-base"
WATCH_FANOUTCONSUMERS = "/apis/fanout.dev/v1alpha1/fanoutconsumers?watch=true"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> image_runtime.Image:
    found = image_runtime.inspect(IMAGE)
    if found is None:
        external_tools.unavailable(f"image {IMAGE} is not built (make image-check builds it)")
    return found


@pytest.fixture(scope="module")
def base(image: image_runtime.Image) -> image_runtime.Image:
    name = image.labels["org.opencontainers.image.base.name"]
    found = image_runtime.inspect(name)
    assert found is not None, f"the base {name} is not in the storage the image was built with"
    return found


@pytest.fixture(scope="module")
def rootfs(image: image_runtime.Image) -> Iterator[pathlib.Path]:
    with image_runtime.root_filesystem(image) as path:
        yield path


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> image_runtime.Runtime:
    return image_runtime.Runtime(tmp_path_factory.mktemp("runc"))


@pytest.fixture
def run(runtime: image_runtime.Runtime, rootfs: pathlib.Path, image: image_runtime.Image) -> Any:
    """``run(*argv, binds=...)``: one process in the image, to completion."""

    def _run(
        *argv: str, binds: tuple[image_runtime.Bind, ...] = (), env: dict[str, str] | None = None
    ) -> Any:
        return runtime.run(rootfs, image, image_runtime.Process(argv=argv, env=env or {}, binds=binds))

    return _run


def _no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]


# --- the image's configuration --------------------------------------------------------------


def test_image_runs_as_a_numeric_non_root_user_with_no_wrapper(image: image_runtime.Image) -> None:
    uid, gid = image.uid_gid  # numeric, or this raises: runAsNonRoot can verify only a number
    assert uid > 0 and gid > 0, image.user
    assert image.entrypoint == (), "Kubernetes sets the command; a wrapper would hide it"
    assert image.cmd and image.cmd[0] in ENTRY_POINTS, image.cmd
    assert image.labels["org.opencontainers.image.version"] == VERSION


# --- every command starts -------------------------------------------------------------------


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_starts_in_the_image(run: Any, entry_point: str) -> None:
    result = run(entry_point, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"usage: {entry_point}"), result.stdout[:500]
    _no_traceback(result)


def test_the_default_command_starts(run: Any, image: image_runtime.Image) -> None:
    result = run(*image.cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    _no_traceback(result)


async def test_every_fanout_command_the_image_lists_works(
    moto_server: aws.MotoServer, sqs: Any, run: Any, tmp_path: pathlib.Path
) -> None:
    listed = run("fanout", "--help")
    match = re.search(r"\{([\w,-]+)\}", listed.stdout)
    assert match, listed.stdout
    commands = set(match.group(1).split(","))
    assert "demo" not in commands, "the image lists a lab command"
    assert commands <= set(FANOUT_COMMANDS), f"exercise {commands - set(FANOUT_COMMANDS)} here"
    # A consumer whose dead-letter queue is on the host's moto, for the commands that read AWS.
    name = f"image-{uuid.uuid4().hex[:6]}"
    source = await harness.make_queue(sqs, name)
    dead = await harness.make_queue(sqs, f"{name}-dlq")
    document = harness.manifest(queue_url=source, sink_url="http://127.0.0.1:9/", dead_letter_url=dead)
    (tmp_path / "consumer.yaml").write_text(json.dumps(document), encoding="utf-8")
    # The image's user reads it, as it would read a mounted ConfigMap.
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "consumer.yaml", 0o644)
    binds = (
        image_runtime.Bind(ROOT / "examples", "/examples"),
        image_runtime.Bind(tmp_path, "/work"),
    )
    for name in sorted(commands):
        result = run("fanout", *FANOUT_COMMANDS[name], binds=binds, env=moto_server.environment())
        assert result.returncode == 0, f"fanout {name}: {result.stderr[-3000:]}"
        _no_traceback(result)


def test_fanout_demo_says_in_one_line_that_it_is_not_in_the_image(run: Any) -> None:
    result = run("fanout", "demo")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("fanout demo: not part of this installation"), line


def test_the_shells_are_masked_so_no_entry_point_can_lean_on_one(run: Any, rootfs: pathlib.Path) -> None:
    assert image_runtime.shells(rootfs), "the base has a shell: the mask is what this test checks"
    for shell in ("/bin/sh", *image_runtime.shells(rootfs)):
        result = run(shell, "-c", "exit 0")
        assert result.returncode != 0, f"{shell} ran in the image"


def test_only_tmp_is_writable(run: Any) -> None:
    probe = (
        "import json, os, site, workers, fanout_operator\n"
        "places = ['/', '/etc', '/usr', '/var', '/var/tmp', '/run', '/tmp', os.getcwd(),\n"
        "          os.path.dirname(workers.__file__), os.path.dirname(fanout_operator.__file__)]\n"
        "writable = []\n"
        "for place in places:\n"
        "    try:\n"
        "        with open(os.path.join(place, '.probe'), 'w'):\n"
        "            writable.append(place)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(json.dumps(sorted(set(writable))))\n"
    )
    result = run("python3", "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == ["/tmp"]


# --- the worker and the operator, running in the image ------------------------------------


def _free_port() -> int:
    return aws.free_port()


async def test_worker_pod_in_the_image_delivers_a_host_queue_to_a_host_webhook(
    moto_server: aws.MotoServer,
    sqs: Any,
    runtime: image_runtime.Runtime,
    rootfs: pathlib.Path,
    image: image_runtime.Image,
    tmp_path: pathlib.Path,
) -> None:
    source = await harness.make_queue(sqs, f"image-{uuid.uuid4().hex[:6]}")
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(queue_url=source, sink_url=sim.url)
        # The AWS settings reach the pod as a user sets them: through the spec's workload.env.
        document["spec"]["workload"] = {
            "env": [{"name": key, "value": value} for key, value in moto_server.environment().items()]
        }
        owner = rendering.Owner(name="crm-sync", namespace="fanout-image", uid=str(uuid.uuid4()))
        children = rendering.render(
            owner, harness.consumer(document).spec, rendering.Defaults(image=IMAGE), 1
        )
        port = _free_port()
        process = image_runtime.pod_process(
            children.deployment["spec"]["template"]["spec"],
            config_maps={children.config_map["metadata"]["name"]: children.config_map["data"]},
            directory=tmp_path,
            pod=("crm-sync-worker-0", owner.namespace),
            # Host network: the rendered port may be taken on this machine; the probes move.
            ports={rendering.HTTP_PORT: port},
        )
        assert process.read_only_root and process.tmpfs == ("/tmp",), process

        with runtime.start(rootfs, image, process) as worker:
            traffic = await harness.feed(
                sqs, source, conversations=6, length=5, duplicate_ratio=0.1, poison_ratio=0
            )

            async def delivered() -> bool:
                assert worker.poll() is None, f"the worker exited: {worker.stderr[-3000:]}"
                accepted = set(harness.accepted_correlation_ids(sim.accepted))
                return traffic.correlation_ids <= accepted and await harness.queue_counts(sqs, source) == (
                    0,
                    0,
                )

            assert await harness.wait_until(delivered, timeout=90), worker.stderr[-3000:]
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"http://127.0.0.1:{port}/readyz")
                metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert ready.status_code == 200, ready.text
            assert "fanout_" in metrics.text
            code = await asyncio.to_thread(worker.terminate, 60)
            assert code == 0, worker.stderr[-3000:]
            assert "Traceback" not in worker.stderr, worker.stderr[-3000:]
        # Exactly once (duplicates included); the order guarantee is the worker's own test
        # (tests/test_worker_e2e.py): here the point is the image under the pod's constraints.
        harness.check_exactly_once(sim, traffic)


async def test_operator_in_the_image_answers_its_liveness_probe(
    runtime: image_runtime.Runtime,
    rootfs: pathlib.Path,
    image: image_runtime.Image,
    tmp_path: pathlib.Path,
) -> None:
    liveness, metrics = _free_port(), _free_port()
    with operator_harness.KmockCluster() as cluster:
        kube = tmp_path / "kube"
        kube.mkdir(mode=0o755)
        cluster.kubeconfig(kube).chmod(0o644)  # as a Secret volume's default mode: readable to the pod
        process = image_runtime.Process(
            argv=(
                "fanout-operator",
                # As the chart starts it (its default scope, peering); kmock 0.8 cannot list
                # namespaces, which --namespace reads.
                "--all-namespaces",
                f"--liveness=http://127.0.0.1:{liveness}/healthz",
                f"--metrics-port={metrics}",
                "--metrics-address=127.0.0.1",
            ),
            env={"KUBECONFIG": "/etc/kube/kubeconfig", "POD_ID": "fanout-operator-0"},
            binds=(image_runtime.Bind(kube, "/etc/kube"),),
        )
        with runtime.start(rootfs, image, process) as operator:
            async with httpx.AsyncClient() as client:

                async def alive() -> bool:
                    assert operator.poll() is None, f"the operator exited: {operator.stderr[-3000:]}"
                    try:
                        return (await client.get(f"http://127.0.0.1:{liveness}/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                assert await harness.wait_until(alive, timeout=60), operator.stderr[-3000:]
                scraped = await client.get(f"http://127.0.0.1:{metrics}/metrics")
            assert scraped.status_code == 200, scraped.text

            def watching() -> bool:
                return any(
                    agent.startswith("kopf/") and path.startswith(WATCH_FANOUTCONSUMERS)
                    for agent, _, path in operator_harness.ApiServerEmulator.calls
                )

            assert await harness.wait_until(watching, timeout=30), (
                f"the operator never watched FanoutConsumers: {operator.stderr[-3000:]}"
            )
            code = await asyncio.to_thread(operator.terminate, 60)
            assert code == 0, operator.stderr[-3000:]
            assert "Traceback" not in operator.stderr, operator.stderr[-3000:]


# --- what the app layer holds ---------------------------------------------------------------

CONTENTS_PROBE = """
import importlib.metadata, json, os, shutil, sys
sizes = {}
for dist in importlib.metadata.distributions():
    total = 0
    for entry in dist.files or ():
        try:
            total += os.path.getsize(dist.locate_file(entry))
        except OSError:
            pass
    sizes[dist.metadata["Name"]] = [dist.version, total]
print(json.dumps({
    "distributions": sizes,
    "compilers": [tool for tool in json.loads(sys.argv[1]) if shutil.which(tool)],
    "leftovers": [path for path in json.loads(sys.argv[2]) if os.path.exists(path)],
}))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_canonical(re.split(r"[\s\[;<>=!~(]", line, maxsplit=1)[0]) for line in requirements}


def _kept_out() -> set[str]:
    """Distributions that have no place in the runtime image: the lab and what only it needs
    (test doubles, the demo's), the dev tools, and the build system."""
    lab = tomllib.loads((ROOT / "lab" / "pyproject.toml").read_text(encoding="utf-8"))
    names = {_canonical(lab["project"]["name"])} | _requirement_names(lab["project"]["dependencies"])
    names |= _requirement_names(PYPROJECT["project"]["optional-dependencies"]["dev"])
    names |= _requirement_names(PYPROJECT["build-system"]["requires"])
    return names - {_canonical(PYPROJECT["project"]["name"])}


def _contents(runtime: image_runtime.Runtime, rootfs: pathlib.Path, image: image_runtime.Image) -> Any:
    result = runtime.run(
        rootfs,
        image,
        image_runtime.Process(
            argv=("python3", "-c", CONTENTS_PROBE, json.dumps(COMPILERS), json.dumps(BUILD_LEFTOVERS))
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def test_app_layer_holds_production_code_only(
    runtime: image_runtime.Runtime,
    rootfs: pathlib.Path,
    image: image_runtime.Image,
    base: image_runtime.Image,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert image.layers[: len(base.layers)] == base.layers, "the image is not built on its labelled base"
    app_layers = image.layers[len(base.layers) :]
    final = _contents(runtime, rootfs, image)
    with image_runtime.root_filesystem(base) as base_rootfs:
        before = _contents(runtime, base_rootfs, base)
        base_bundle = (base_rootfs / "etc/ssl/certs/ca-certificates.crt").read_bytes()
    added = {
        name: (version, size)
        for name, (version, size) in final["distributions"].items()
        if before["distributions"].get(name, [None])[0] != version
    }

    with capsys.disabled():
        stand_in = base.labels.get(STAND_IN_LABEL)
        print(
            f"\nimage {image.name}: {_megabytes(sum(size for _, size in image.layers))}; "
            f"base {_megabytes(sum(size for _, size in base.layers))}"
            + (f" (stand-in: {stand_in})" if stand_in else "")
            + f"; app layer {_megabytes(sum(size for _, size in app_layers))} ({len(added)} distributions)"
        )
        for name, (version, size) in sorted(added.items(), key=lambda item: -item[1][1])[:10]:
            print(f"  {_megabytes(size):>9}  {name} {version}")

    assert _canonical(PYPROJECT["project"]["name"]) in {_canonical(name) for name in added}
    kept_out = sorted({_canonical(name) for name in added} & _kept_out())
    assert not kept_out, f"lab, dev or build distributions in the app layer: {kept_out}"
    assert final["compilers"] == [], "a compiler in the runtime image"
    assert final["leftovers"] == [], "the build stage left files in the runtime image"
    # The host's CA bundle was mounted for the build stage's pip only: the image keeps the base's.
    assert (rootfs / "etc/ssl/certs/ca-certificates.crt").read_bytes() == base_bundle
