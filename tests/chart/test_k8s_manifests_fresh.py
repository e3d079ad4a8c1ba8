"""k8s/qwen-triton.yaml must be exactly the chart's default rendering."""

from chart_helpers import REPO_ROOT, helm_template

MANIFEST = REPO_ROOT / "k8s" / "qwen-triton.yaml"


def test_k8s_manifests_match_a_fresh_default_rendering(tools):
    result = helm_template(tools, skip_tests=True)
    assert result.returncode == 0, result.stderr
    assert MANIFEST.exists(), "k8s/qwen-triton.yaml is missing: run `make k8s` and commit it"
    assert MANIFEST.read_text() == result.stdout, (
        "k8s/qwen-triton.yaml is stale (the chart changed since it was rendered): run `make k8s` and commit it"
    )
