# The Helm chart (helm/qwen-triton) and the plain manifests rendered from it (k8s/).
#   make chart-lint   helm lint, default values and a sharing/autoscaling matrix
#   make k8s          regenerate k8s/qwen-triton.yaml from the chart's defaults (commit the result)
#   make chart-test   the chart's test suite (tests/chart): render matrix, schemas, checkov, staleness,
#                     and the live autoscaling-signal test (real tritonserver + Prometheus)
CHART := helm/qwen-triton
K8S_RELEASE := qwen-triton
K8S_NAMESPACE := qwen
K8S_TOOLS := .tools/bin
HELM := $(K8S_TOOLS)/helm

.PHONY: k8s-tools chart-lint k8s chart-test

k8s-tools:
	scripts/install_k8s_tools.sh

chart-lint: k8s-tools
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) --set gpu.sharing=time-slicing --set autoscaling.kind=keda
	$(HELM) lint --strict $(CHART) --set gpu.sharing=mig --set model.source=pvc --set model.pvc.claimName=weights

# The test-hook pod is left out: plain-manifest users have no `helm test`.
k8s: k8s-tools
	$(HELM) template $(K8S_RELEASE) $(CHART) --namespace $(K8S_NAMESPACE) --skip-tests > k8s/qwen-triton.yaml

chart-test: setup k8s-tools
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/chart
