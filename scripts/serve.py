#!/usr/bin/env python3
"""Start a real tritonserver (the binary the nvidia-pytriton wheel ships) on this project's model repository.

What it does, in order:
  1. finds the wheel's `tritonserver` and builds a backend directory (.tools/triton_backends/python/) holding
     the Python backend library, its utils module and the stub built for the running Python version;
  2. copies the model repository to a run directory, applying `--model`, `--param key=value` and the
     instance kind (CPU/GPU) to the copied config.pbtxt files, so the sources stay untouched;
  3. starts tritonserver, waits for /v2/health/ready (which, for the `qwen` model, means loaded and warmed),
     prints how to query it, and forwards SIGINT/SIGTERM to it for a clean stop.

`make serve` and the test fixture (tests/conftest.py) both run it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "models/smollm2-135m-instruct"
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
# Triton 2.51's HTTP frontend copies a request body spread over many buffers onto the thread's stack, so
# a body over ~4 MB overflows the default 8 MB stack and kills the server (upstream issue #5840, fixed after
# 2.51). Threads take their stack size from RLIMIT_STACK: 512 MB of address space (touched only as used)
# lets bodies up to ~500 MB reach the model, which then refuses oversized prompts with a clear error.
SERVER_STACK_BYTES = 512 * 2**20
# Parameters that name a checkpoint; `--model` sets them in every model of the repository.
CHECKPOINT_PARAM = "model"


# ---------------------------------------------------------------- locating the wheel's server


def site_packages() -> Path:
    """The site-packages of the Python running this script (the project's virtualenv)."""
    return Path(sysconfig.get_paths()["purelib"])


def pytriton_root() -> Path:
    root = site_packages() / "pytriton" / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        sys.exit(
            f"serve.py: no tritonserver under {root}; install it with `pip install -r requirements/serve.txt` "
            "(the nvidia-pytriton wheel ships the binary)"
        )
    return root


def stub_path(root: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        sys.exit(f"serve.py: the wheel has no Python backend stub for Python {version} (looked in {stub.parent})")
    return stub


def prepare_backend_dir(root: Path, dest: Path) -> Path:
    """Assemble <dest>/python: tritonserver expects the library, utils and stub side by side."""
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = [root / "backends" / "python" / name for name in BACKEND_FILES] + [stub_path(root)]
    for src in sources:
        target = python_dir / src.name
        # Copy (not symlink): the backend resolves the stub next to its own real path.
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            shutil.copy2(src, target)
    return dest


def server_env(root: Path) -> dict[str, str]:
    """Environment for tritonserver and the Python stubs it spawns.

    The stub embeds the system libpython of the same minor version in an isolated interpreter that ignores
    PYTHONPATH, so each model.py adds the directories named in QWEN_TRITON_SITE_DIRS (the virtualenv here;
    unset in images that install the package system-wide) with site.addsitedir, which also reads the `.pth`
    files of editable installs.
    """
    env = dict(os.environ)
    # An activated virtualenv puts its bin/ first on PATH; the stub then takes that Python's standard
    # library (here pyenv's 3.11.7) into the system libpython (3.11.2) and fails on `_ssl`. The stub must
    # find the system's own: drop the venv from PATH and the variables that point at it.
    venv = os.environ.get("VIRTUAL_ENV") or (sys.prefix if sys.prefix != sys.base_prefix else "")
    if venv:
        env["PATH"] = os.pathsep.join(
            p
            for p in env.get("PATH", "").split(os.pathsep)
            if p and not Path(p).resolve().is_relative_to(Path(venv).resolve())
        )
    for name in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    libs = site_packages() / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
    # Directories already named come first: a deployment can put packages ahead of the virtualenv's.
    env["QWEN_TRITON_SITE_DIRS"] = os.pathsep.join(
        filter(None, [os.environ.get("QWEN_TRITON_SITE_DIRS"), str(site_packages())])
    )
    env.setdefault("OMP_NUM_THREADS", str(max(1, os.cpu_count() or 1)))
    return env


# ---------------------------------------------------------------- the run copy of the model repository


def parse_param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    return key.strip(), value.strip()


def resolve_checkpoint(model: str) -> str:
    """A local directory becomes an absolute path (the server runs elsewhere); anything else is a hub id."""
    path = Path(model)
    if not path.is_absolute():
        path = REPO_ROOT / path if (REPO_ROOT / path).exists() else Path.cwd() / path
    if path.exists():
        return str(path.resolve())
    if model.startswith((".", "/")) or model.count("/") != 1:
        sys.exit(f"serve.py: --model {model!r} is neither a local directory nor a hub id like Qwen/Qwen2.5-7B-Instruct")
    return model


def load_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def save_config(config, path: Path) -> None:
    from google.protobuf import text_format

    path.write_text(text_format.MessageToString(config))


def apply_overrides(config, overrides: dict[str, str], instance_kind: str | None) -> set[str]:
    """Set the parameters this model declares; return the keys it used."""
    used = set()
    for key, value in overrides.items():
        if key in config.parameters:
            config.parameters[key].string_value = value
            used.add(key)
    if instance_kind and config.backend == "python":
        from tritonclient.grpc import model_config_pb2

        kind = model_config_pb2.ModelInstanceGroup.Kind.Value(f"KIND_{instance_kind.upper()}")
        for group in config.instance_group:
            group.kind = kind
            if kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and not group.gpus:
                group.gpus.append(0)
    return used


def prepare_model_repository(source: Path, dest: Path, overrides: dict[str, str], instance_kind: str | None) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    used: set[str] = set()
    for config_path in sorted(dest.glob("*/config.pbtxt")):
        config = load_config(config_path)
        used |= apply_overrides(config, overrides, instance_kind)
        save_config(config, config_path)
    unknown = sorted(set(overrides) - used)
    if unknown:
        known = sorted({k for p in dest.glob("*/config.pbtxt") for k in load_config(p).parameters})
        sys.exit(f"serve.py: --param {', '.join(unknown)}: no model declares it; known parameters: {', '.join(known)}")
    return dest


def detect_instance_kind() -> str:
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


# ---------------------------------------------------------------- running the server


def server_command(root: Path, backend_dir: Path, repository: Path, args) -> list[str]:
    return [
        str(root / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        "--model-control-mode=none",
        f"--http-port={args.http_port}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-port={args.metrics_port}",
        # Triton's GPU metrics poll NVML; off on machines without GPUs to keep the log clean.
        f"--allow-gpu-metrics={'true' if args.instance_kind == 'gpu' else 'false'}",
        f"--log-verbose={args.log_verbose}",
        # Engines drain in-flight requests at shutdown; give them time.
        "--exit-timeout-secs=30",
    ]


def raise_stack_limit() -> None:
    """Runs in the child before exec (see SERVER_STACK_BYTES)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = SERVER_STACK_BYTES if hard == resource.RLIM_INFINITY else min(SERVER_STACK_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def is_ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_ready(process: subprocess.Popen, http_port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(
                f"serve.py: tritonserver exited with code {process.returncode} before becoming ready (see its log above)"
            )
        if is_ready(http_port):
            return
        time.sleep(0.5)
    process.terminate()
    sys.exit(f"serve.py: tritonserver not ready after {timeout:.0f} s (raise --ready-timeout for big checkpoints)")


def usage_banner(args) -> str:
    http = f"http://localhost:{args.http_port}"
    return f"""
tritonserver is ready (pid file / log above). Query it:
  curl -s {http}/v2/models/qwen/generate -d '{{"text_input": "What is the capital of France?", "max_tokens": 32}}'
  curl -sN {http}/v2/models/qwen/generate_stream -d '{{"messages": "[{{\\"role\\":\\"user\\",\\"content\\":\\"Hi\\"}}]", "stream": true}}'
  qwen-client chat --url localhost:{args.grpc_port} "What is the capital of France?"
  curl -s localhost:{args.metrics_port}/metrics | grep ^qwen_
Stop it with Ctrl-C.
"""


def forward_signals(process: subprocess.Popen) -> None:
    def forward(signum, _frame):
        if process.poll() is None:
            process.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or hub id (default: %(default)s)")
    parser.add_argument(
        "--param",
        action="append",
        type=parse_param,
        default=[],
        metavar="KEY=VALUE",
        help="override a config.pbtxt parameter, e.g. --param max_model_len=4096 (repeatable)",
    )
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument(
        "--run-dir", type=Path, help="where to write the run copy of the repository (default: a temp dir)"
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--instance-kind",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="instance_group kind of Python models (auto: gpu when nvidia-smi exists)",
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    parser.add_argument("--detach", action="store_true", help="return once ready, leaving the server running")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--print-env", action="store_true", help="print the environment to run tritonserver and exit")
    args = parser.parse_args(argv)
    if args.instance_kind == "auto":
        args.instance_kind = detect_instance_kind()
    return args


def print_env(root: Path, backend_dir: Path) -> None:
    env = server_env(root)
    print(f"export LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}")
    print(f"export QWEN_TRITON_SITE_DIRS={env['QWEN_TRITON_SITE_DIRS']}")
    print(f"export TRITONSERVER={root / 'bin' / 'tritonserver'}")
    print(f"export TRITON_BACKEND_DIR={backend_dir}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = pytriton_root()
    backend_dir = prepare_backend_dir(root, REPO_ROOT / ".tools" / "triton_backends")
    if args.print_env:
        print_env(root, backend_dir)
        return 0

    overrides = {CHECKPOINT_PARAM: resolve_checkpoint(args.model), **dict(args.param)}
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="qwen-triton-run-"))
    repository = prepare_model_repository(
        args.model_repository, run_dir / "model_repository", overrides, args.instance_kind
    )
    command = server_command(root, backend_dir, repository, args)
    print("serve.py: " + " ".join(command), flush=True)
    process = subprocess.Popen(command, env=server_env(root), preexec_fn=raise_stack_limit)
    forward_signals(process)
    wait_ready(process, args.http_port, args.ready_timeout)
    print(usage_banner(args), flush=True)
    print(f"serve.py: READY pid={process.pid}", flush=True)
    if args.detach:
        return 0
    code = process.wait()
    if args.run_dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
