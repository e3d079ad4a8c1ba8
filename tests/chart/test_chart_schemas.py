"""Every object of every matrix rendering, validated against Kubernetes' OpenAPI schemas (offline,
kubernetes-validate's bundled schemas, strict: unknown fields fail)."""

import kubernetes_validate
import pytest
from chart_helpers import CRD_KINDS, render
from values_matrix import covering_matrix

# Our kubectl's release (1.33), and the newest release the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS = sorted({"1.33", kubernetes_validate.latest_version()})
MATRIX = covering_matrix()


def validate_crd_shape(obj: dict) -> None:
    """kubernetes-validate has no schemas for CRDs (prometheus-operator, KEDA): check what they need."""
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"] and spec["endpoints"][0]["port"] == "metrics"
    elif obj["kind"] == "PodMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"] and spec["podMetricsEndpoints"][0]["port"] == "metrics"
    elif obj["kind"] == "ScaledObject":
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["name"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus"
            assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
            float(trigger["metadata"]["threshold"])  # KEDA parses it as a number


@pytest.mark.parametrize("name", list(MATRIX))
def test_every_rendered_object_is_valid_kubernetes(tools, name):
    objects = render(tools, MATRIX[name])
    assert {"Deployment", "Service"} <= {o["kind"] for o in objects}
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            validate_crd_shape(obj)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{name}: {obj['kind']} {obj['metadata']['name']} invalid for Kubernetes {version}: "
                    f"{error.message} at {'.'.join(map(str, error.path))}"
                )
