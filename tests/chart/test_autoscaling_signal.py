"""The autoscaling signal for real: a real tritonserver (scripts/serve.py, the demo model, max_num_seqs=2 so
requests queue), a real Prometheus (the Debian package) scraping its metrics port on loopback, load from
qwen_client's bench, and the exact PromQL the chart renders for prometheus-adapter and for KEDA.

It shows the signal rises past the chart's default target under load and falls back when idle, and
computes what the HPA would do at each point. Set QWEN_AUTOSCALING_REPORT=<file> to write the table
(docs/autoscaling.md holds one such run)."""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from chart_helpers import REPO_ROOT, find, render

NAMESPACE = "qwen"
# What prometheus-operator attaches to the series of one pod of the Deployment (ServiceMonitor relabelling).
POD = "qwen-triton-6d5f7c9b8d-x7k2p"
SCRAPE_INTERVAL_S = 2  # the chart's ServiceMonitor uses 15 s; 2 s keeps this test short
HPA_TOLERANCE = 0.1  # kube-controller-manager's default --horizontal-pod-autoscaler-tolerance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def wait_until(check, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def stop(process: subprocess.Popen, grace: float = 40.0) -> None:
    """Stops a process group this test started (serve.py forwards SIGTERM to tritonserver)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# ------------------------------------------------------------------------------ what the chart renders


@pytest.fixture(scope="module")
def chart_autoscaling(tools):
    """The PromQL, target and replica bounds from the chart's default values (HPA) and the KEDA variant."""
    hpa_objects = render(tools)
    [rule] = yaml.safe_load(find(hpa_objects, "ConfigMap", "-adapter-rules")["data"]["config.yaml"])["rules"]
    hpa = find(hpa_objects, "HorizontalPodAutoscaler")["spec"]
    [trigger] = find(render(tools, {"autoscaling": {"kind": "keda"}}), "ScaledObject")["spec"]["triggers"]
    return {
        "series_query": rule["seriesQuery"],
        # prometheus-adapter fills these for a request about the pods of one namespace, grouped per pod.
        "adapter_query": rule["metricsQuery"]
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
        .replace("<<.GroupBy>>", "pod"),
        "keda_query": trigger["metadata"]["query"],
        "target": float(hpa["metrics"][0]["pods"]["target"]["averageValue"]),
        "keda_threshold": float(trigger["metadata"]["threshold"]),
        "min": hpa["minReplicas"],
        "max": hpa["maxReplicas"],
    }


def hpa_desired_replicas(current: int, average_per_pod: float, target: float, low: int, high: int) -> int:
    """The HPA's rule for an AverageValue Pods metric: ceil(current * average / target), within the
    tolerance band nothing changes, clamped to [min, max]."""
    ratio = average_per_pod / target
    desired = current if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(current * ratio)
    return max(low, min(high, desired))


# ------------------------------------------------------------------------------ real server and Prometheus


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "serve.py"),
            "--http-port",
            str(ports["http"]),
            "--grpc-port",
            str(ports["grpc"]),
            "--metrics-port",
            str(ports["metrics"]),
            "--instance-kind",
            "cpu",
            # Two sequences at a time: a dozen concurrent requests must queue.
            "--param",
            "max_num_seqs=2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        wait_until(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/health/ready", timeout=2).status == 200
            ),
            300,
            "tritonserver",
            process,
        )
        yield ports
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    # `make test` installs it before collection (scripts/install_k8s_tools.sh): missing means a broken setup.
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run scripts/install_k8s_tools.sh as root (`make test` does)")
    folder = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [
            {
                "job_name": "qwen-triton",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{server['metrics']}"], "labels": {"namespace": NAMESPACE, "pod": POD}}
                ],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200, 60, "prometheus", process)
        # Wait for the first scrapes of the idle server.
        wait_until(lambda: query(url, "qwen_num_requests_waiting") != [], 60, "first scrape", process)
        yield url
    finally:
        stop(process, grace=10)
        log.close()


def query(prometheus_url: str, promql: str) -> list:
    reply = http_json(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def scalar(prometheus_url: str, promql: str) -> float:
    result = query(prometheus_url, promql)
    return float(result[0]["value"][1]) if result else 0.0


# ------------------------------------------------------------------------------ the test


def start_bench(grpc_port: int) -> threading.Thread:
    from qwen_client.bench import run_bench

    thread = threading.Thread(
        target=run_bench,
        daemon=True,
        kwargs=dict(url=f"127.0.0.1:{grpc_port}", concurrency=12, num_requests=20, prompt_tokens=16, max_tokens=24),
    )
    thread.start()
    return thread


def sample(prometheus_url: str, chart: dict, started: float, phase: str) -> dict:
    adapter_value = scalar(prometheus_url, chart["adapter_query"])
    keda_total = scalar(prometheus_url, chart["keda_query"])
    return {
        "t_s": round(time.monotonic() - started),
        "phase": phase,
        "waiting_now": scalar(prometheus_url, "sum(qwen_num_requests_waiting)"),
        "adapter_value": adapter_value,
        "hpa_replicas": hpa_desired_replicas(1, adapter_value, chart["target"], chart["min"], chart["max"]),
        "keda_replicas": max(chart["min"], min(chart["max"], math.ceil(keda_total / chart["keda_threshold"]))),
    }


def test_waiting_requests_signal_rises_under_load_and_falls_when_idle(server, prometheus, chart_autoscaling):
    chart = chart_autoscaling
    # The adapter's discovery query finds our series, with the labels it maps to Kubernetes objects.
    [series] = http_json(f"{prometheus}/api/v1/series?" + urllib.parse.urlencode({"match[]": chart["series_query"]}))[
        "data"
    ]
    assert series["namespace"] == NAMESPACE and series["pod"] == POD and series["model"] == "qwen"

    started = time.monotonic()
    rows = [sample(prometheus, chart, started, "idle")]
    bench = start_bench(server["grpc"])
    while bench.is_alive() and time.monotonic() - started < 240:
        time.sleep(5)
        rows.append(sample(prometheus, chart, started, "load"))
    bench.join(60)
    assert not bench.is_alive(), "the bench did not finish"
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 120:
        time.sleep(5)
        rows.append(sample(prometheus, chart, started, "idle"))
        if (
            rows[-1]["adapter_value"] < chart["target"]
            and rows[-1]["waiting_now"] == 0
            and time.monotonic() - idle_since > 15
        ):
            break
    report(rows, chart)

    load = [r for r in rows if r["phase"] == "load"]
    peak = max(load, key=lambda r: r["adapter_value"])
    assert max(r["waiting_now"] for r in load) > 0, "requests never queued: the load did not saturate the engine"
    assert peak["adapter_value"] > chart["target"], f"signal never passed the target {chart['target']}: {rows}"
    assert peak["hpa_replicas"] > chart["min"] and peak["keda_replicas"] > chart["min"]
    assert rows[-1]["adapter_value"] < chart["target"] and rows[-1]["hpa_replicas"] == chart["min"]
    # With one pod the adapter's per-pod value and KEDA's total are the same number.
    assert all(r["hpa_replicas"] >= r["keda_replicas"] - 1 for r in rows)


def report(rows: list[dict], chart: dict) -> None:
    lines = [
        f"Run of {datetime.date.today().isoformat()} (tests/chart/test_autoscaling_signal.py): one pod, "
        f"max_num_seqs=2, bench concurrency 12; target {chart['target']:g} waiting per pod.",
        "",
        f"Adapter query: `{chart['adapter_query']}`",
        f"KEDA query: `{chart['keda_query']}`",
        "",
        "| t (s) | phase | waiting now | adapter value (per pod) | HPA desired replicas | KEDA desired replicas |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['t_s']} | {r['phase']} | {r['waiting_now']:g} | {r['adapter_value']:.2f} | {r['hpa_replicas']} | "
        f"{r['keda_replicas']} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if os.environ.get("QWEN_AUTOSCALING_REPORT"):
        Path(os.environ["QWEN_AUTOSCALING_REPORT"]).write_text(text)
