"""Running the built image as a kubelet would, without a container engine, for tests/test_image.py.

`make image-check` builds the image with buildah into the storage under .tools
(.ci/build-image); .ci/get-buildah also puts Debian's ``runc`` there, the OCI runtime many
Kubernetes nodes use. Here buildah makes a working container from the image and mounts its
root filesystem, and each process the tests start is a runc container on that root, from an
OCI runtime spec written by :func:`oci_spec` out of what a pod spec says: the command, the
environment, the user, a read-only root with a tmpfs at /tmp, read-only bind mounts for
config volumes, no capabilities, no new privileges. Its processes share the host's network
(as ``hostNetwork: true`` would), so they reach the moto server and the HTTP receivers the
tests run on 127.0.0.1. The shells of the image are masked (``/dev/null`` mounted over them),
so a process that needed a shell script would fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import signal
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from tests import external_tools

ROOT = external_tools.ROOT
SHELLS = ("sh", "dash", "bash")
BIN_DIRECTORIES = ("bin", "usr/bin", "sbin", "usr/sbin", "usr/local/bin")


def buildah() -> str:
    return external_tools.find_tool("buildah", how_to_get="make image-check (runs .ci/get-buildah)")


def runc() -> str:
    return external_tools.find_tool("runc", how_to_get="make image-check (runs .ci/get-buildah)")


def _buildah(*args: str) -> str:
    result = subprocess.run([buildah(), *args], capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclasses.dataclass(frozen=True)
class Image:
    """What an image says about itself: its OCI config and its layers."""

    name: str
    user: str
    env: tuple[str, ...]
    working_dir: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    labels: Mapping[str, str]
    layers: tuple[tuple[str, int], ...]
    """(digest, size in bytes of the uncompressed layer), base first."""

    @property
    def uid_gid(self) -> tuple[int, int]:
        """The numeric USER (an image without one runs as root); a name raises ValueError."""
        uid, _, gid = (self.user or "0").partition(":")
        return int(uid), int(gid or uid)


def inspect(name: str) -> Image | None:
    """The image ``name`` in buildah's storage, or None when it is not there."""
    try:
        found = json.loads(_buildah("inspect", "--type", "image", name))
    except RuntimeError:
        return None
    config = found["OCIv1"].get("config", {})
    manifest = json.loads(found["Manifest"])
    return Image(
        name=name,
        user=config.get("User", ""),
        env=tuple(config.get("Env") or ()),
        working_dir=config.get("WorkingDir") or "/",
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        labels=dict(config.get("Labels") or {}),
        layers=tuple((layer["digest"], int(layer["size"])) for layer in manifest["layers"]),
    )


@contextlib.contextmanager
def root_filesystem(image: Image) -> Iterator[pathlib.Path]:
    """A working container's root filesystem made from ``image`` (a copy: vfs storage)."""
    name = f"fanout-image-check-{uuid.uuid4().hex[:8]}"
    _buildah("from", "--pull-never", "--name", name, image.name)
    try:
        yield pathlib.Path(_buildah("mount", name).strip())
    finally:
        subprocess.run([buildah(), "rm", name], capture_output=True, timeout=120, check=False)


@dataclasses.dataclass(frozen=True)
class Bind:
    """A host directory mounted read-only into the container (a ConfigMap volume, say)."""

    source: pathlib.Path
    destination: str


@dataclasses.dataclass(frozen=True)
class Process:
    """One container's process, in a pod spec's terms."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    user: tuple[int, int] | None = None
    """(uid, gid); None: the image's USER."""
    read_only_root: bool = True
    tmpfs: tuple[str, ...] = ("/tmp",)
    binds: tuple[Bind, ...] = ()


def pod_process(
    pod_spec: Mapping[str, Any],
    *,
    config_maps: Mapping[str, Mapping[str, str]],
    directory: pathlib.Path,
    pod: tuple[str, str],
    ports: Mapping[int, int],
) -> Process:
    """The process a kubelet would start for the pod's one container, in :class:`Process` terms.

    ``config_maps`` holds the data of the ConfigMaps the pod mounts (written under
    ``directory`` and bind-mounted read-only), ``pod`` is (name, namespace) for the downward
    API, and ``ports`` moves the container's ports (the process shares the host's network).
    What this does not know how to run (another volume type, a writable mount, a field it
    cannot fill) is an error, not a silent difference.
    """
    (container,) = pod_spec["containers"]
    security = {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}
    assert security.get("capabilities", {}).get("drop") == ["ALL"], "runc runs it with no capabilities"
    assert security.get("allowPrivilegeEscalation") is False, "runc runs it with noNewPrivileges"
    argv = [*container["command"], *container.get("args", [])]
    for index in range(1, len(argv)):
        if argv[index - 1].endswith("-port") and int(argv[index]) in ports:
            argv[index] = str(ports[int(argv[index])])
    fields = {"metadata.name": pod[0], "metadata.namespace": pod[1]}
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    tmpfs: list[str] = []
    binds: list[Bind] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            tmpfs.append(mount["mountPath"])
        elif "configMap" in volume:
            source = directory / mount["name"]
            source.mkdir(mode=0o755, parents=True)
            for key, value in config_maps[volume["configMap"]["name"]].items():
                (source / key).write_text(value)
                (source / key).chmod(volume["configMap"].get("defaultMode", 0o644))
            binds.append(Bind(source, mount["mountPath"]))
        else:
            raise ValueError(f"volume {mount['name']}: only emptyDir and configMap are run here")
    user = None
    if "runAsUser" in security:
        user = (int(security["runAsUser"]), int(security.get("runAsGroup", security["runAsUser"])))
    return Process(
        argv=tuple(argv),
        env=env,
        user=user,
        read_only_root=bool(security.get("readOnlyRootFilesystem")),
        tmpfs=tuple(tmpfs),
        binds=tuple(binds),
    )


def shells(rootfs: pathlib.Path) -> list[str]:
    """The image's shell binaries (regular files, not the links to them), as container paths."""
    found = []
    for directory in BIN_DIRECTORIES:
        if (rootfs / directory).is_symlink():
            continue  # /bin -> usr/bin on a merged-/usr system: the files are found there
        for name in SHELLS:
            path = rootfs / directory / name
            if path.is_file() and not path.is_symlink():
                found.append(f"/{directory}/{name}")
    return found


def oci_spec(rootfs: pathlib.Path, image: Image, process: Process) -> dict[str, Any]:
    """The OCI runtime spec (config.json) that runs ``process`` on ``rootfs``."""
    uid, gid = process.user or image.uid_gid
    env = dict(entry.partition("=")[::2] for entry in image.env)
    env.update(process.env)
    tmpfs = [
        {
            "destination": path,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=64m"],
        }
        for path in process.tmpfs
    ]
    binds = [
        {
            "destination": bind.destination,
            "type": "bind",
            "source": str(bind.source),
            "options": ["rbind", "ro", "nosuid", "nodev"],
        }
        for bind in process.binds
    ]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(process.argv),
            "env": [f"{key}={value}" for key, value in env.items()],
            "cwd": image.working_dir,
            "capabilities": {kind: [] for kind in ("bounding", "effective", "inheritable", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": process.read_only_root},
        "hostname": "fanout",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            *tmpfs,
            *binds,
        ],
        "linux": {
            # No network namespace: the host's, so 127.0.0.1 is the test's loopback.
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": [
                "/proc/kcore",
                "/proc/keys",
                "/proc/timer_list",
                "/sys/firmware",
                *shells(rootfs),
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


class Container:
    """A running runc container; its output goes to files (a long run cannot fill a pipe)."""

    def __init__(self, runtime: Runtime, rootfs: pathlib.Path, image: Image, process: Process) -> None:
        self.id = f"fanout-{uuid.uuid4().hex[:10]}"
        self._runtime = runtime
        self.bundle = runtime.directory / self.id
        self.bundle.mkdir(parents=True)
        (self.bundle / "config.json").write_text(json.dumps(oci_spec(rootfs, image, process)))
        self._stdout = (self.bundle / "stdout").open("w+b")
        self._stderr = (self.bundle / "stderr").open("w+b")
        self._popen = subprocess.Popen(
            [runc(), "--root", str(runtime.state), "run", "--bundle", str(self.bundle), self.id],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
        )

    @property
    def stdout(self) -> str:
        return (self.bundle / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.bundle / "stderr").read_text(errors="replace")

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float) -> int:
        return self._popen.wait(timeout)

    def terminate(self, timeout: float) -> int:
        """SIGTERM (runc passes it to the container's PID 1), then the exit status."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
        return self._popen.wait(timeout)

    def close(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(30)
        subprocess.run(
            [runc(), "--root", str(self._runtime.state), "delete", "--force", self.id],
            capture_output=True,
            timeout=60,
            check=False,
        )
        self._stdout.close()
        self._stderr.close()


@dataclasses.dataclass
class Runtime:
    """runc with its state and bundles under ``directory``."""

    directory: pathlib.Path

    @property
    def state(self) -> pathlib.Path:
        return self.directory / "runc-state"

    @contextlib.contextmanager
    def start(self, rootfs: pathlib.Path, image: Image, process: Process) -> Iterator[Container]:
        container = Container(self, rootfs, image, process)
        try:
            yield container
        finally:
            container.close()

    def run(
        self, rootfs: pathlib.Path, image: Image, process: Process, *, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        with self.start(rootfs, image, process) as container:
            code = container.wait(timeout)
            return subprocess.CompletedProcess(list(process.argv), code, container.stdout, container.stderr)
