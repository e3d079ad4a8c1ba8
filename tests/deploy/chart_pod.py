"""Running the image the way the chart's pod runs it, with podman: the rendered container's command,
args, env, user, read-only root, writable emptyDir mounts, dropped capabilities, no privilege
escalation, the checkpoint mounted read-only where the chart mounts it, the chart's probe paths."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from chart_helpers import find

# crun, podman's default runtime, fails on this kind of machine's cgroups; runc works.
PODMAN = ["podman", "--runtime", "runc"]
# Container ports of the chart's server container (HEALTH: the entrypoint's probe endpoint).
HTTP, GRPC, METRICS, HEALTH = 8000, 8001, 8002, 8003


def podman_unusable_reason() -> str | None:
    """Why podman cannot run containers here, or None. The only reason the container test may skip."""
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/install_k8s_tools.sh installs it as root with apt-get)"
    probe = subprocess.run([*PODMAN, "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"podman cannot run here: {probe.stderr.strip()[-300:]}"
    return None


@dataclass
class PodSpec:
    """The parts of the rendered Deployment that decide how its server container runs."""

    command: list[str]
    args: list[str]
    env: dict[str, str]
    run_as: tuple[int, int]
    security: dict
    writable_mounts: list[str]  # emptyDir mount paths
    shm_size: str
    checkpoint_mount: str
    probes: dict[str, tuple[int, str]]  # startup / readiness / liveness -> (container port, HTTP path)
    pre_stop: list[str]
    grace_seconds: int

    @classmethod
    def from_objects(cls, objects: list[dict]) -> PodSpec:
        pod = find(objects, "Deployment")["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "tritonserver")
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        empty_dirs = [m["mountPath"] for n, m in mounts.items() if "emptyDir" in volumes[n] and n != "shm"]
        port_numbers = {p["name"]: p["containerPort"] for p in container["ports"]}

        def probe(kind: str) -> tuple[int, str]:
            target = container[f"{kind}Probe"]["httpGet"]
            return port_numbers.get(target["port"], target["port"]), target["path"]

        return cls(
            command=container["command"],
            args=container["args"],
            env={e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
            run_as=(pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]),
            security=container["securityContext"],
            writable_mounts=empty_dirs,
            shm_size=volumes["shm"]["emptyDir"]["sizeLimit"],
            checkpoint_mount=mounts["checkpoint"]["mountPath"],
            probes={kind: probe(kind) for kind in ("startup", "readiness", "liveness")},
            pre_stop=container["lifecycle"]["preStop"]["exec"]["command"],
            grace_seconds=pod["terminationGracePeriodSeconds"],
        )


def kubernetes_quantity_to_podman(size: str) -> str:
    """8Gi -> 8g, 512Mi -> 512m (podman's units are binary)."""
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", size).groups()
    return number + {"Ki": "k", "Mi": "m", "Gi": "g", "Ti": "t", None: ""}[unit]


def run_command(image: str, spec: PodSpec, checkpoint: Path, name: str, ports: dict[int, int]) -> list[str]:
    """`podman run` with the pod's settings; ports maps container port -> loopback port on this machine."""
    assert spec.security["readOnlyRootFilesystem"] and not spec.security["allowPrivilegeEscalation"]
    assert spec.security["capabilities"]["drop"] == ["ALL"]
    _soft, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    command = [
        *PODMAN,
        "run",
        "--detach",
        f"--name={name}",
        f"--user={spec.run_as[0]}:{spec.run_as[1]}",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--shm-size={kubernetes_quantity_to_podman(spec.shm_size)}",
        # runc may only lower limits here: open files at the caller's hard limit, processes at a value
        # below what this kind of machine allows (podman's own default is refused).
        f"--ulimit=nofile={nofile}:{nofile}",
        "--ulimit=nproc=32768:32768",
        f"--volume={checkpoint}:{spec.checkpoint_mount}:ro",
        f"--entrypoint={spec.command[0]}",
    ]
    # emptyDirs are writable by the pod's fsGroup; tmpfs with the sticky world-writable mode is the same here.
    command += [f"--mount=type=tmpfs,destination={path},tmpfs-mode=1777" for path in spec.writable_mounts]
    command += [f"--env={key}={value}" for key, value in spec.env.items()]
    command += [f"--publish=127.0.0.1:{host}:{container}" for container, host in ports.items()]
    return [*command, image, *spec.command[1:], *spec.args]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def container_running(name: str) -> bool:
    state = subprocess.run([*PODMAN, "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True)
    return state.stdout.strip() == "true"


def container_logs(name: str) -> str:
    return subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True).stdout[-6000:]


def wait_for_status(url: str, name: str, timeout: float) -> float:
    """Seconds until `url` answers 200; fails early with the log if the container dies."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if http_status(url) == 200:
            return time.monotonic() - start
        if not container_running(name):
            raise AssertionError(f"the container exited before {url} answered 200:\n{container_logs(name)}")
        time.sleep(0.5)
    raise AssertionError(f"{url} not 200 after {timeout:.0f} s:\n{container_logs(name)}")
