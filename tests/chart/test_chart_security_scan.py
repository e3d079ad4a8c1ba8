"""checkov over the rendered manifests: nothing fails except the skips helm/.checkov.yaml explains.

Offline checkov prints no severities, so the high-impact checks are named here and must each pass
(on the Deployment of every rendering), on top of "no failed check at all"."""

import json
import subprocess

import pytest
import yaml
from chart_helpers import CHART, REPO_ROOT, render
from values_matrix import covering_matrix

CHECKOV_CONFIG = CHART.parent / ".checkov.yaml"
MUST_PASS = {
    "CKV_K8S_8": "liveness probe",
    "CKV_K8S_9": "readiness probe",
    "CKV_K8S_10": "CPU requests",
    "CKV_K8S_11": "CPU limits",
    "CKV_K8S_12": "memory requests",
    "CKV_K8S_13": "memory limits",
    "CKV_K8S_16": "not privileged",
    "CKV_K8S_17": "no host PID",
    "CKV_K8S_18": "no host IPC",
    "CKV_K8S_19": "no host network",
    "CKV_K8S_20": "no privilege escalation",
    "CKV_K8S_22": "read-only root filesystem",
    "CKV_K8S_23": "no root containers",
    "CKV_K8S_25": "no added capabilities",
    "CKV_K8S_28": "no NET_RAW",
    "CKV_K8S_29": "pod security context",
    "CKV_K8S_30": "container security context",
    "CKV_K8S_31": "seccomp",
    "CKV_K8S_35": "secrets as files",
    "CKV_K8S_37": "capabilities dropped",
    "CKV_K8S_38": "no service account token",
    "CKV_K8S_40": "high UID",
    "CKV_K8S_14": "image tag pinned",
    "CKV_K8S_21": "not the default namespace",
}


@pytest.fixture(scope="module")
def scan(tools, tmp_path_factory):
    """Renders the whole matrix into one folder per case and scans it once (checkov starts slowly)."""
    root = tmp_path_factory.mktemp("rendered")
    for index, values in enumerate(covering_matrix().values()):
        objects = render(tools, values)
        (root / f"case{index:02d}.yaml").write_text(yaml.safe_dump_all(objects))
    result = subprocess.run(
        [tools.checkov, "--config-file", str(CHECKOV_CONFIG), "-d", str(root), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def test_no_check_fails(scan):
    failed = [
        f"{c['check_id']} {c['check_name']} on {c['resource']} ({c['file_path']})"
        for report in scan
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failures (fix the chart, or skip in helm/.checkov.yaml with a reason):\n" + "\n".join(
        failed
    )


def test_high_impact_checks_pass_on_every_deployment(scan):
    passed = {}
    for report in scan:
        for check in report["results"]["passed_checks"]:
            if check["resource"].startswith("Deployment."):
                passed.setdefault(check["check_id"], set()).add(check["file_path"])
    cases = len(covering_matrix())
    missing = {cid: what for cid, what in MUST_PASS.items() if len(passed.get(cid, ())) != cases}
    assert not missing, f"not passed on all {cases} renderings: {missing}"
