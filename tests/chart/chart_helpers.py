"""Rendering the chart with the real helm binary and finding objects in the result."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "qwen-triton"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_k8s_tools.sh"
# `make k8s` renders k8s/ with these; the staleness test must use the same.
K8S_RELEASE = "qwen-triton"
K8S_NAMESPACE = "qwen"
# Kinds whose schemas are not Kubernetes' own (CRDs); kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "ScaledObject"}


@dataclass(frozen=True)
class Tools:
    bin_dir: Path

    @property
    def helm(self) -> str:
        return str(self.bin_dir / "helm")

    @property
    def checkov(self) -> str:
        return str(self.bin_dir / "checkov")


def install_tools() -> Tools:
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{INSTALL_SCRIPT.name} failed:\n{result.stderr[-3000:]}")
    return Tools(Path(result.stdout.strip().splitlines()[-1]))


def helm_template(
    tools: Tools,
    values: dict | None = None,
    *,
    release: str = K8S_RELEASE,
    namespace: str = K8S_NAMESPACE,
    skip_tests: bool = False,
) -> subprocess.CompletedProcess:
    """Runs `helm template`; values go through a file so nested structures keep their types."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump(values or {}, values_file)
        values_file.flush()
        command = [tools.helm, "template", release, str(CHART), "--namespace", namespace, "-f", values_file.name]
        if skip_tests:
            command.append("--skip-tests")
        return subprocess.run(command, capture_output=True, text=True, timeout=60)


def render(tools: Tools, values: dict | None = None, **kwargs) -> list[dict]:
    result = helm_template(tools, values, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed for {values}:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(tools: Tools, values: dict) -> str:
    """The error helm prints for values that must be rejected."""
    result = helm_template(tools, values)
    assert result.returncode != 0, f"helm template accepted values it must reject: {values}"
    return result.stderr


def find(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, (
        f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in matches]}"
    )
    return matches[0]


def api_service(objects: list[dict]) -> dict:
    """The Service clients and the ingress reach (named like the release's objects, no suffix)."""
    return next(o for o in objects if o["kind"] == "Service" and not o["metadata"]["name"].endswith("-metrics"))


def metrics_service(objects: list[dict]) -> dict:
    return find(objects, "Service", "-metrics")


def kinds(objects: list[dict]) -> set[str]:
    return {o["kind"] for o in objects}


def server_container(objects: list[dict]) -> dict:
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "tritonserver")


def entrypoint_args(objects: list[dict]) -> tuple[list[str], list[str]]:
    """The container's args split at `--`: (entrypoint's own, tritonserver's)."""
    args = server_container(objects)["args"]
    cut = args.index("--")
    return args[:cut], args[cut + 1 :]


def engine_params(objects: list[dict]) -> dict[str, str]:
    own, _ = entrypoint_args(objects)
    pairs = [a.removeprefix("--param=").split("=", 1) for a in own if a.startswith("--param=")]
    return dict(pairs)


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {args}"
    return values[0]


def merge(*layers: dict) -> dict:
    """Deep-merges values dicts, later layers winning (like several -f files)."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out
