#!/usr/bin/env python3
"""Start a real tritonserver (the binary the nvidia-pytriton wheel ships) on this project's model repository.

What it does, in order:
  1. finds the wheel's `tritonserver` and builds a backend directory (.tools/triton_backends/python/) holding
     the Python backend library, its utils module and the stub built for the running Python version;
  2. copies the model repository to a run directory, applying `--model`, `--param key=value` and the
     instance kind (CPU/GPU) to the copied config.pbtxt files, so the sources stay untouched;
  3. starts tritonserver, waits for /v2/health/ready (which, for the `qwen` model, means loaded and warmed),
     prints how to query it, and supervises it (see `supervise`): a failed engine takes the server down,
     SIGTERM drains the admitted requests before tritonserver is stopped, SIGINT stops it at once.

`make serve` and the test fixture (tests/conftest.py) both run it; the image's entrypoint
(deploy/entrypoint.py) runs the same supervision through `supervise`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
# Triton API groups that answer only requests carrying the admin header (HTTP and gRPC alike). Health,
# metadata, inference, model configs and the repository index stay open: probes and clients use them, and
# with --model-control-mode=none the repository API cannot load or unload anything. Shared-memory
# registration would let any client read or overwrite /dev/shm objects the server can open (the Python
# stubs' IPC regions included); logging and tracing change server behaviour; statistics leak the load.
DEFAULT_RESTRICTED_APIS = ("shared-memory", "logging", "trace", "statistics")
TRITON_API_GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
DEFAULT_ADMIN_HEADER = "triton-admin-key"


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
        if _tensor_parallel_size(config) > 1:
            # One instance whose engine spreads its ranks over the GPUs itself (cuda:0..N-1).
            kind = model_config_pb2.ModelInstanceGroup.KIND_MODEL
            del config.instance_group[1:]
            config.instance_group[0].count = 1
        for group in config.instance_group:
            group.kind = kind
            if kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and not group.gpus:
                group.gpus.append(0)
            if kind == model_config_pb2.ModelInstanceGroup.KIND_MODEL:
                del group.gpus[:]
    return used


def _tensor_parallel_size(config) -> int:
    value = (
        config.parameters["tensor_parallel_size"].string_value if "tensor_parallel_size" in config.parameters else ""
    )
    return int(value) if value.strip().isdigit() else 1


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


# ---------------------------------------------------------------- the admin surface


def parse_api_groups(text: str) -> tuple[str, ...]:
    """A comma-separated list of Triton API groups ("" = none), checked against the groups 2.51 knows."""
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = sorted(set(groups) - set(TRITON_API_GROUPS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown Triton API group(s) {', '.join(unknown)}; known: {', '.join(TRITON_API_GROUPS)}"
        )
    return groups


def read_admin_key(key_file: Path | None) -> str:
    """The admin header's value: the file's content (a mounted Secret), else a random key nobody knows.

    Without a file the restricted APIs are closed to everyone, which is the safe default. The value is
    never printed; tritonserver 2.51 takes it only on its command line (see restricted_api_flags).
    """
    if key_file is None:
        return secrets.token_urlsafe(32)
    key = key_file.read_text().strip()
    if not key:
        sys.exit(f"serve.py: the admin key file {key_file} is empty; put the header value in it")
    if any(c in key for c in ",:= \t"):
        sys.exit(
            f"serve.py: the admin key in {key_file} must not contain ',', ':', '=' or spaces (Triton's flag syntax)"
        )
    return key


def restricted_api_flags(apis: tuple[str, ...], header: str, key: str) -> list[str]:
    """Triton 2.51's `--http-restricted-api` and `--grpc-restricted-protocol`: `<apis>:<header>=<value>`.

    2.51 reads the value only from argv, so it is visible in /proc/<pid>/cmdline to processes of the same
    user in the same PID namespace; those can read the key file too. Never log these flags (see redact).
    """
    if not apis:
        return []
    rule = f"{','.join(apis)}:{header}={key}"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]


def redact(command: list[str]) -> list[str]:
    """The command with the admin header's value masked, for logs."""
    masked = ("--http-restricted-api=", "--grpc-restricted-protocol=")
    return [flag.rsplit("=", 1)[0] + "=***" if flag.startswith(masked) else flag for flag in command]


def bind_flags(host: str) -> list[str]:
    """HTTP, gRPC and metrics listen on one address: loopback unless the user asks for more."""
    return [f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}"]


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    """The admin-surface flags that scripts/serve.py and deploy/entrypoint.py share."""
    parser.add_argument(
        "--restricted-apis",
        type=parse_api_groups,
        default=DEFAULT_RESTRICTED_APIS,
        help="comma-separated Triton API groups that need the admin header (default: %(default)s; '' = none)",
    )
    parser.add_argument("--restricted-header", default=DEFAULT_ADMIN_HEADER, help="the admin header's name")
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        help="file holding the admin header's value (a mounted Secret); default: a random key, APIs closed",
    )
    parser.add_argument(
        "--allow-shared-memory",
        action="store_true",
        help="let any client use the shared-memory API (off by default: it exposes the server's /dev/shm)",
    )


def admin_flags(args) -> list[str]:
    apis = tuple(a for a in args.restricted_apis if not (args.allow_shared_memory and a == "shared-memory"))
    if not args.allow_shared_memory and "shared-memory" not in apis:
        apis += ("shared-memory",)
    return restricted_api_flags(apis, args.restricted_header, read_admin_key(args.admin_key_file))


# ---------------------------------------------------------------- running the server


def server_command(root: Path, backend_dir: Path, repository: Path, args) -> list[str]:
    return [
        str(root / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir}",
        "--model-control-mode=none",
        *bind_flags(args.host),
        f"--http-port={args.http_port}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-port={args.metrics_port}",
        # Triton's GPU metrics poll NVML; off on machines without GPUs to keep the log clean.
        f"--allow-gpu-metrics={'true' if args.instance_kind == 'gpu' else 'false'}",
        f"--log-verbose={args.log_verbose}",
        # Engines drain in-flight requests at shutdown; give them time.
        "--exit-timeout-secs=30",
        *admin_flags(args),
    ]


def raise_stack_limit() -> None:
    """Runs in the child before exec (see SERVER_STACK_BYTES)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = SERVER_STACK_BYTES if hard == resource.RLIM_INFINITY else min(SERVER_STACK_BYTES, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def probe_host(host: str) -> str:
    """Where this script reaches the server it started: the bound address, or loopback for a wildcard."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


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


# ---------------------------------------------------------------- supervision: engine health and drain
#
# Triton 2.51 cannot tell a dead engine from a live one (a killed stub leaves /v2/health/ready at 200 and
# in-flight streams hanging), and on SIGTERM it stops delivering responses to streams in flight (measured:
# 0 of 10 streams complete). So this script does not exec tritonserver: it runs it as a child and
# supervises it through the control directory that each `qwen` instance's watchdog writes
# (python_backend/qwen_triton/serving/health.py). `make serve` and the image's entrypoint
# (deploy/entrypoint.py, PID 1 of the chart's pod) both go through `supervise` below:
#   - an engine reported failed, a stub pid gone or a heartbeat file gone stale: kill tritonserver at once
#     (clients in flight get a connection error instead of a hang) and exit with ENGINE_FAILED_EXIT_CODE,
#     so that the pod (or whoever started this) restarts it;
#   - SIGTERM once ready: drain first. Create the drain file (the engines refuse new requests with 503 /
#     UNAVAILABLE and finish the admitted ones, queued ones included), wait until every instance reports
#     none in flight or the drain timeout passes, and only then pass SIGTERM on to tritonserver, which then
#     has nothing left to cut. A second SIGTERM, or SIGINT, passes on at once; so does SIGTERM before ready;
#   - with a health port (the chart's probes): GET /ready answers 200 only while tritonserver is ready, no
#     drain was asked and no engine failed, so readiness drops at the SIGTERM and at an engine failure;
#     GET /live answers 200 while tritonserver's own /v2/health/live does.

CONTROL_DIR_ENV = "QWEN_TRITON_CONTROL_DIR"  # read by qwen_triton.serving.health
DRAIN_FILE = "drain"
SUPERVISE_SECONDS = 0.25
HEARTBEAT_STALE_S = 10.0  # the watchdog rewrites its file every 0.25 s
ENGINE_FAILED_EXIT_CODE = 3


def pid_alive(pid: int) -> bool:
    """A killed stub stays a zombie until tritonserver reaps it, and signal 0 still reaches a zombie: so
    read its state where /proc exists."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(own_child: int) -> list[int]:
    """Wait for every exited process re-parented to this one, except ``own_child`` (tritonserver, whose
    exit status its Popen reads); return their pids. PID 1 of a container inherits every orphan (a stub or
    a compiler worker whose parent died) and nothing else waits for them: unreaped, each stays a zombie in
    the pod's process table. WNOWAIT peeks first, so ``own_child``'s status is never taken."""
    reaped = []
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # no children at all
            return reaped
        if exited is None or exited.si_pid == own_child:  # none exited, or only tritonserver so far
            return reaped
        os.waitpid(exited.si_pid, 0)
        reaped.append(exited.si_pid)


def read_instance_states(control_dir: Path) -> dict[str, dict]:
    """Each instance's last `.alive` report (a file caught mid-rename is skipped until the next round)."""
    states = {}
    for path in control_dir.glob("*.alive"):
        try:
            state = json.loads(path.read_text())
            state["age_s"] = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            continue
        states[path.stem] = state
    return states


def engine_failure(control_dir: Path) -> str | None:
    """Why an engine cannot serve, or None while every instance is healthy."""
    for path in control_dir.glob("*.failed"):
        return f"{path.stem}: {path.read_text(errors='replace').strip()}"
    for name, state in read_instance_states(control_dir).items():
        if not pid_alive(int(state["pid"])):
            return f"{name}: its stub process (pid {state['pid']}) is gone"
        if state["age_s"] > HEARTBEAT_STALE_S:
            return f"{name}: no heartbeat for {state['age_s']:.0f} s (stub frozen)"
    return None


class Supervisor:
    """Owns the tritonserver child: waits for readiness, watches engine health, turns SIGTERM into
    drain-then-stop, and answers the health port's probes."""

    def __init__(self, process: subprocess.Popen, control_dir: Path, drain_timeout: float, server_url: str):
        self.process = process
        self.reaps_orphans = os.getpid() == 1  # a container's init: orphans are ours to wait for
        self.control_dir = control_dir
        self.drain_timeout = drain_timeout
        self.server_url = server_url  # tritonserver's HTTP endpoint, e.g. http://127.0.0.1:8000
        self.ready = False
        self.drain_started: float | None = None
        self.failure: str | None = None
        self.stopping = False  # SIGTERM passed on to tritonserver

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda _signum, _frame: self.request_drain())
        signal.signal(signal.SIGINT, lambda _signum, _frame: self.stop_server())

    def request_drain(self) -> None:
        if self.drain_started is not None or not self.ready:
            self.stop_server()  # asked twice, or nothing admitted yet: stop now
            return
        self.drain_started = time.monotonic()
        (self.control_dir / DRAIN_FILE).touch()
        print(f"serve.py: SIGTERM: draining (new requests refused, up to {self.drain_timeout:.0f} s)", flush=True)

    def stop_server(self) -> None:
        if not self.stopping and self.process.poll() is None:
            self.stopping = True
            self.process.send_signal(signal.SIGTERM)

    def readiness(self) -> tuple[bool, str]:
        """What the health port's /ready answers: (ready, why)."""
        if self.drain_started is not None or self.stopping:
            return False, "draining: the server is shutting down"
        failure = self.failure or engine_failure(self.control_dir)
        if failure is not None:
            return False, f"engine failed: {failure}"
        if self.process.poll() is not None or not http_ok(self.server_url + "/v2/health/ready"):
            return False, "tritonserver is not ready"
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        if self.process.poll() is None and http_ok(self.server_url + "/v2/health/live"):
            return True, "live"
        return False, "tritonserver is not live"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                why = "was stopped" if self.stopping else "exited"
                sys.exit(
                    f"serve.py: tritonserver {why} (code {self.process.returncode}) before becoming ready "
                    "(see its log above)"
                )
            if http_ok(self.server_url + "/v2/health/ready"):
                self.ready = True
                return
            time.sleep(0.5)
        self.stop_server()
        sys.exit(
            f"serve.py: tritonserver not ready after {timeout:.0f} s (raise the ready timeout for big checkpoints)"
        )

    def run(self) -> int:
        while (code := self.process.poll()) is None:
            if self.drain_started is not None and not self.stopping and self._drained():
                waited = time.monotonic() - self.drain_started
                print(f"serve.py: drained after {waited:.1f} s; stopping tritonserver", flush=True)
                self.stop_server()
            failure = None if self.stopping else engine_failure(self.control_dir)
            if failure is not None:
                return self._take_down(failure)
            if self.reaps_orphans:
                reap_orphans(self.process.pid)
            time.sleep(SUPERVISE_SECONDS)
        return code

    def _drained(self) -> bool:
        if time.monotonic() - self.drain_started > self.drain_timeout:
            print("serve.py: the drain timeout passed with requests still in flight", flush=True)
            return True
        states = read_instance_states(self.control_dir).values()
        return all(state.get("draining") and state.get("in_flight") == 0 for state in states)

    def _take_down(self, failure: str) -> int:
        self.failure = failure
        print(f"serve.py: engine failed ({failure}); killing tritonserver so that it is restarted", flush=True)
        for state in read_instance_states(self.control_dir).values():
            if pid_alive(int(state["pid"])):
                os.kill(int(state["pid"]), signal.SIGKILL)
        self.process.kill()
        self.process.wait()
        return ENGINE_FAILED_EXIT_CODE


def serve_health(supervisor: Supervisor, address: str, port: int) -> ThreadingHTTPServer:
    """The probes' endpoint (a daemon thread): GET /ready and GET /live, 200 or 503 with the reason."""

    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            checks = {"/ready": supervisor.readiness, "/live": supervisor.liveness}
            check = checks.get(self.path.split("?", 1)[0])
            ok, why = check() if check else (False, f"unknown path {self.path}; known: /ready, /live")
            body = (why + "\n").encode()
            self.send_response(200 if ok else (503 if check else 404))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:  # probes every few seconds: keep the log for the server
            pass

    server = ThreadingHTTPServer((address, port), Probe)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def supervise(
    command: list[str],
    env: dict[str, str],
    control_dir: Path,
    *,
    server_url: str,
    ready_timeout: float,
    drain_timeout: float,
    health: tuple[str, int] | None = None,
    on_ready=None,
    detach: bool = False,
) -> int:
    """Start tritonserver (`command`) and supervise it until it exits; return the exit code to pass on.

    `health`: (address, port) of the probes' endpoint, or None. `on_ready(process)` runs once ready.
    `detach`: return 0 once ready, leaving tritonserver running unsupervised.
    """
    shutil.rmtree(control_dir, ignore_errors=True)  # a reused run dir: no drain request or report of old
    control_dir.mkdir(parents=True)
    process = subprocess.Popen(command, env={**env, CONTROL_DIR_ENV: str(control_dir)}, preexec_fn=raise_stack_limit)
    supervisor = Supervisor(process, control_dir, drain_timeout, server_url)
    supervisor.install_signal_handlers()
    if health is not None:
        serve_health(supervisor, *health)
    supervisor.wait_ready(ready_timeout)
    if on_ready is not None:
        on_ready(process)
    if detach:
        return 0
    return supervisor.run()


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
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address HTTP, gRPC and metrics bind to (default: loopback only; 0.0.0.0 = every interface)",
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
    add_admin_arguments(parser)
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for readiness")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds to let admitted requests finish before stopping tritonserver (default: %(default)s)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=0,
        help="serve GET /ready and /live (the supervisor's view: not ready while draining or on an engine "
        "failure) on this port (default: off)",
    )
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
    print("serve.py: " + " ".join(redact(command)), flush=True)

    def announce(process: subprocess.Popen) -> None:
        print(usage_banner(args), flush=True)
        print(f"serve.py: READY pid={process.pid}", flush=True)

    code = supervise(
        command,
        server_env(root),
        run_dir / "control",
        server_url=f"http://{probe_host(args.host)}:{args.http_port}",
        ready_timeout=args.ready_timeout,
        drain_timeout=args.drain_timeout,
        health=(args.host, args.health_port) if args.health_port else None,
        on_ready=announce,
        detach=args.detach,
    )
    if args.run_dir is None and not args.detach:
        shutil.rmtree(run_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
