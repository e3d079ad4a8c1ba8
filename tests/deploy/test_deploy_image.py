"""The `cpu` image built from this repository (deploy/build_image.py) and run as the chart's pod runs it:
uid 10001, read-only root with the chart's emptyDir mounts, all capabilities dropped, no privilege
escalation, the demo model mounted read-only at the chart's path, the chart's rendered command and args.
It must pass the chart's probes, answer a generate request and the chart's `helm test` command, keep
the admin APIs closed, and drain in-flight streams on SIGTERM within terminationGracePeriodSeconds:
readiness drops at once, 10 of 10 streams finish, a new request gets the retryable refusal.

The build is cached by a hash of its inputs: a second run reuses the image (seconds). Cold: ~2 minutes
on an idle 2-core machine (docs/deploy.md has the figures).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from chart_helpers import REPO_ROOT, api_service, find, render
from chart_pod import (
    GRPC,
    HEALTH,
    HTTP,
    METRICS,
    PODMAN,
    PodSpec,
    container_logs,
    http_status,
    podman_unusable_reason,
    run_command,
    wait_for_status,
)
from server_process import free_ports

pytestmark = [
    pytest.mark.skipif(podman_unusable_reason() is not None, reason=str(podman_unusable_reason())),
    # A cold build downloads nothing new but installs torch into a fresh layer: minutes on 2 cores.
    pytest.mark.timeout(2400),
]

DEMO_MODEL = REPO_ROOT / "models" / "smollm2-135m-instruct"
# The chart's values for a CPU pod serving the demo model from a volume (the checkpoint's PVC).
DEMO_VALUES = {
    "gpu": {"sharing": "none"},
    # 8 running slots: of the 10 drain streams, 2 wait in the engine's queue at the SIGTERM.
    "engine": {"device": "cpu", "dtype": "float32", "max_model_len": 2048, "max_num_seqs": 8},
    "model": {"source": "pvc", "pvc": {"claimName": "demo-model"}},
    # The drain must fit the grace period with room: 10 streams of DRAIN_TOKENS on 2 shared cores.
    "triton": {"drainTimeoutSeconds": 150, "exitTimeoutSeconds": 15},
    "preStopSleepSeconds": 2,
    "terminationGracePeriodSeconds": 180,
}
# Five Python stubs each import torch before the pod is ready: minutes on 2 cores, many more when they are shared.
READY_TIMEOUT_S = 1200
DRAIN_STREAMS = 10
DRAIN_TOKENS = 64


@dataclass
class RunningPod:
    name: str
    image: str
    spec: PodSpec
    objects: list[dict]
    ports: dict[int, int]
    ready_seconds: float = 0.0
    figures: dict = field(default_factory=dict)

    def url(self, path: str, port: int = HTTP) -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"


def build_cpu_image() -> tuple[str, float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "deploy" / "build_image.py"), "--variant", "cpu"],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert result.returncode == 0, f"deploy/build_image.py failed:\n{result.stderr[-6000:]}"
    return result.stdout.strip().splitlines()[-1], time.monotonic() - start


def image_size_mb(image: str) -> float:
    size = subprocess.run([*PODMAN, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True)
    return int(size.stdout.strip()) / 1e6


def readable_checkpoint(folder: Path) -> Path:
    """A copy of the demo model that the pod's user can read, as a PVC gives it to the pod's fsGroup
    (`make model` leaves the weights readable by their owner only)."""
    copy = folder / "checkpoint"
    shutil.copytree(DEMO_MODEL, copy)
    copy.chmod(0o755)
    for file in copy.iterdir():
        file.chmod(0o644)
    return copy


@pytest.fixture(scope="module")
def pod(tools, tmp_path_factory):
    if not (DEMO_MODEL / "config.json").exists():
        pytest.fail(f"demo model missing at {DEMO_MODEL}: run `make model`")
    checkpoint = readable_checkpoint(tmp_path_factory.mktemp("pvc"))
    image, build_seconds = build_cpu_image()
    objects = render(tools, DEMO_VALUES)
    spec = PodSpec.from_objects(objects)
    rendered_image = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert rendered_image == image, "the chart's default image for a CPU pod must be what `make image` tags"
    name = f"qwen-deploy-test-{uuid.uuid4().hex[:8]}"
    ports = dict(zip((HTTP, GRPC, METRICS, HEALTH), free_ports(4)))
    started = subprocess.run(run_command(image, spec, checkpoint, name, ports), capture_output=True, text=True)
    assert started.returncode == 0, f"podman run failed: {started.stderr[-3000:]}"
    running = RunningPod(name, image, spec, objects, ports)
    running.figures.update(build_seconds=round(build_seconds, 1), image_mb=round(image_size_mb(image)))
    try:
        startup_port, startup_path = spec.probes["startup"]
        running.ready_seconds = wait_for_status(running.url(startup_path, startup_port), name, READY_TIMEOUT_S)
        yield running
    finally:
        print(f"\ncontainer test figures: {json.dumps(running.figures)}")
        subprocess.run([*PODMAN, "rm", "--force", "--time=0", name], capture_output=True)


def post_json(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_the_chart_probe_paths_answer(pod):
    pod.figures["start_to_ready_s"] = round(pod.ready_seconds, 1)
    for kind, (port, path) in pod.spec.probes.items():
        assert http_status(pod.url(path, port)) == 200, f"the chart's {kind} probe {path} on port {port} fails"
    # The probes are the supervisor's (they see a drain and a dead engine), not Triton's own.
    assert pod.spec.probes["readiness"] == (HEALTH, "/ready")
    assert http_status(pod.url("/metrics", METRICS)) == 200


def test_the_server_runs_as_the_pod_user_on_a_read_only_root(pod):
    probe = subprocess.run(
        [
            *PODMAN,
            "exec",
            pod.name,
            "sh",
            "-c",
            "id -u; id -g; touch /opt/qwen/x 2>&1 || true; grep CapEff /proc/1/status",
        ],
        capture_output=True,
        text=True,
    )
    uid, gid, touch, caps = probe.stdout.strip().splitlines()
    assert (int(uid), int(gid)) == pod.spec.run_as
    assert "Read-only file system" in touch
    assert caps.split()[1] == "0000000000000000", f"capabilities left: {caps}"


def test_generate_answers_with_the_demo_model(pod):
    status, answer = post_json(
        pod.url("/v2/models/qwen/generate"),
        {"messages": json.dumps([{"role": "user", "content": "What is the capital of France?"}]), "max_tokens": 24},
    )
    assert status == 200, answer
    assert "Paris" in answer["text_output"]


def test_the_helm_test_pod_command_passes(pod):
    """The chart's test pod script, verbatim but for the Service's address (here: the pod's own port)."""
    test_pod = find(pod.objects, "Pod", "-test-generate")
    [container] = test_pod["spec"]["containers"]
    script = container["args"][0]
    service = f"http://{api_service(pod.objects)['metadata']['name']}:8000"
    assert service in script
    script = script.replace(service, f"http://127.0.0.1:{HTTP}")
    result = subprocess.run(
        [*PODMAN, "exec", pod.name, *container["command"], script], capture_output=True, text=True, timeout=320
    )
    assert result.returncode == 0, f"helm test command failed:\n{result.stdout}\n{result.stderr}"
    assert '"text_output":"' in result.stdout


def test_the_admin_apis_are_closed(pod):
    """Shared-memory registration and log settings need the admin header, whose key nobody was given."""
    status, _ = post_json(pod.url("/v2/logging"), {"log_verbose_level": 1})
    assert status in (401, 403), f"log settings changed without the admin key: {status}"
    assert http_status(pod.url("/v2/systemsharedmemory/status")) in (401, 403)
    ps = subprocess.run([*PODMAN, "top", pod.name, "args"], capture_output=True, text=True).stdout
    assert "--http-restricted-api=shared-memory" in ps and "--grpc-restricted-protocol=shared-memory" in ps
    # Triton 2.51 takes the key only in its argv (docs/reliability.md); the log must never show it.
    [key] = set(re.findall(r"--http-restricted-api=\S+:triton-admin-key=(\S+)", ps))
    assert key != "***" and len(key) >= 32
    logs = subprocess.run([*PODMAN, "logs", pod.name], capture_output=True, text=True)
    assert "triton-admin-key=***" in logs.stdout
    assert key not in logs.stdout + logs.stderr, "the admin key is in the container's log"


class Stream(threading.Thread):
    """One generate_stream request read to its end: counts deltas, keeps the final finish_reason."""

    def __init__(self, url: str, prompt: str):
        super().__init__(daemon=True)
        self.url, self.prompt = url, prompt
        self.deltas = 0
        self.finish_reason = ""
        self.error = ""
        self.started = threading.Event()

    def run(self) -> None:
        body = {
            "text_input": self.prompt,
            "max_tokens": DRAIN_TOKENS,
            "stream": True,
            "temperature": 0,
            "ignore_eos": True,
        }
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as reply:
                for line in reply:
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        self.deltas += 1
                        self.started.set()
                        self.finish_reason = event.get("finish_reason") or self.finish_reason
        except Exception as error:  # noqa: BLE001 - what a cut stream raised is the test's finding
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.started.set()


def test_sigterm_drains_in_flight_streams_within_the_grace_period(pod):
    """As the kubelet stops a pod: preStop, then SIGTERM to PID 1; admitted streams must all finish."""
    streams = [
        Stream(pod.url("/v2/models/qwen/generate_stream"), f"Count from {i} upward:") for i in range(DRAIN_STREAMS)
    ]
    for stream in streams:
        stream.start()
    running_slots = DEMO_VALUES["engine"]["max_num_seqs"]
    deadline = time.monotonic() + 120
    while sum(stream.started.is_set() for stream in streams) < running_slots:  # the rest are queued
        assert time.monotonic() < deadline, "the running streams got no first token within 120 s"
        time.sleep(0.1)
    subprocess.run([*PODMAN, "exec", pod.name, *pod.spec.pre_stop], check=True, timeout=60)
    in_flight = sum(stream.is_alive() for stream in streams)
    queued = sum(not stream.started.is_set() for stream in streams)
    stop_sent = time.monotonic()
    subprocess.run([*PODMAN, "kill", "--signal=TERM", pod.name], check=True)
    ready_port, ready_path = pod.spec.probes["readiness"]
    readiness_after_sigterm = http_status(pod.url(ready_path, ready_port))
    while readiness_after_sigterm == 200 and time.monotonic() - stop_sent < 1.0:  # "at once": within a second
        time.sleep(0.05)
        readiness_after_sigterm = http_status(pod.url(ready_path, ready_port))
    readiness_drop_s = time.monotonic() - stop_sent
    time.sleep(1)  # the engines' watchdogs read the drain request every 0.25 s
    late_status, late_answer = post_json(pod.url("/v2/models/qwen/generate"), {"text_input": "Hi", "max_tokens": 4})
    waited = subprocess.run(
        [*PODMAN, "wait", pod.name], capture_output=True, text=True, timeout=pod.spec.grace_seconds + 30
    )
    exit_seconds = time.monotonic() - stop_sent
    for stream in streams:
        stream.join(timeout=30)
    finished = [s for s in streams if s.finish_reason in ("length", "stop")]
    pod.figures.update(
        in_flight_at_sigterm=in_flight,
        queued_at_sigterm=queued,
        drain_completed=f"{len(finished)}/{len(streams)}",
        readiness_after_sigterm=f"{readiness_after_sigterm} after {readiness_drop_s:.2f} s",
        drain_exit_s=round(exit_seconds, 1),
        drain_exit_code=waited.stdout.strip(),
        request_after_sigterm=f"{late_status} {json.dumps(late_answer)[:160]}",
        cut_streams=[
            f"{s.deltas} deltas, {s.finish_reason or s.error or 'no final response'}"
            for s in streams
            if s not in finished
        ],
    )
    assert in_flight == len(streams), f"streams ended before the SIGTERM: nothing to drain: {pod.figures}"
    assert exit_seconds <= pod.spec.grace_seconds, f"the server outlived terminationGracePeriodSeconds: {pod.figures}"
    assert len(finished) == len(streams), f"in-flight streams cut by SIGTERM: {pod.figures}\n{container_logs(pod.name)}"
    assert readiness_after_sigterm == 503, f"readiness did not drop at the SIGTERM: {pod.figures}"
    # Triton 2.51's HTTP /generate maps the model's UNAVAILABLE to 400 (docs/reliability.md); the message
    # tells the client to go elsewhere and when to retry.
    assert late_status in (400, 503), f"a request after SIGTERM was not refused: {pod.figures}"
    message = json.dumps(late_answer)
    assert "shutting down" in message and "retry after" in message, f"not the retryable refusal: {message}"
