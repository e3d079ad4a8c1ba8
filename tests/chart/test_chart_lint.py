"""helm lint, and bad values rejected with a message that names the field and the fix."""

import subprocess

import pytest
from chart_helpers import CHART, render_error


def helm_lint(tools, *set_flags: str) -> subprocess.CompletedProcess:
    command = [tools.helm, "lint", "--strict", str(CHART)]
    for item in set_flags:
        command += ["--set", item]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "set_flags",
    [
        (),
        ("gpu.sharing=time-slicing", "autoscaling.kind=keda"),
        ("gpu.sharing=mig", "model.source=pvc", "model.pvc.claimName=weights"),
    ],
)
def test_helm_lint_strict_passes(tools, set_flags):
    result = helm_lint(tools, *set_flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "values, field",
    [
        ({"gpu": {"sharing": "shared"}}, "gpu.sharing"),
        ({"model": {"source": "s3"}}, "model.source"),
        ({"engine": {"max_num_seqs": 0}}, "engine.max_num_seqs"),
        ({"engine": {"kv_memory_fraction": 1.5}}, "engine.kv_memory_fraction"),
        ({"engine": {"dtype": "fp64"}}, "engine.dtype"),
        ({"autoscaling": {"kind": "vpa"}}, "autoscaling.kind"),
        ({"autoscaling": {"metric": {"window": "one minute"}}}, "autoscaling.metric.window"),
        ({"gpu": {"migProfile": "big"}}, "gpu.migProfile"),
        ({"triton": {"healthPort": 8000}}, "triton.healthPort"),  # taken by tritonserver's HTTP
        ({"networkPolicy": {"httpsEgressExcept": ["10.0.0.0"]}}, "networkPolicy.httpsEgressExcept"),
        ({"triton": {"restrictedApis": {"apis": ["everything"]}}}, "triton.restrictedApis.apis"),
        ({"engnie": {}}, "engnie"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(tools, values, field):
    assert field in render_error(tools, values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model": {"source": "pvc"}}, "model.source=pvc needs model.pvc.claimName"),
        ({"model": {"source": "hostPath"}}, "model.source=hostPath needs model.hostPath.path"),
        ({"terminationGracePeriodSeconds": 60}, "terminationGracePeriodSeconds (60) must be at least"),
        (
            {"triton": {"drainTimeoutSeconds": 300}},
            "terminationGracePeriodSeconds (150) must be at least preStopSleepSeconds + triton.drainTimeoutSeconds",
        ),
        ({"gpu": {"sharing": "none"}}, "set engine.device=cpu"),
        (
            {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}},
            "autoscaling.maxReplicas must be >= autoscaling.minReplicas",
        ),
    ],
)
def test_inconsistent_values_fail_with_the_fix(tools, values, message):
    assert message in render_error(tools, values)
