"""helm template over the values matrix, with assertions on the rendered objects."""

import json
import re
import shutil
import subprocess

import pytest
import yaml
from chart_helpers import (
    CHART,
    api_service,
    engine_params,
    entrypoint_args,
    find,
    flag,
    kinds,
    merge,
    metrics_service,
    render,
    render_error,
    server_container,
)
from values_matrix import AUTOSCALING, SHARING, SOURCES, case

GPU = "nvidia.com/gpu"


def resources_of(objects):
    return server_container(objects)["resources"]


# ------------------------------------------------------------------------------ GPU sharing


@pytest.mark.parametrize(
    "mode, resource, count, fraction, instances",
    [
        ("exclusive", GPU, 1, None, "1"),
        ("time-slicing", GPU, 1, "0.225", "1"),  # 4 pods share a card: 0.9 / 4
        ("mps", "nvidia.com/gpu.shared", 1, "0.450", "1"),  # renameByDefault; 2 pods: 0.9 / 2
        ("mig", "nvidia.com/mig-3g.40gb", 1, None, "1"),  # the slice's memory is its own
        ("multi-instance", GPU, 1, "0.300", "3"),  # 3 engines in one pod: 0.9 / 3
    ],
)
def test_gpu_sharing_mode_sets_resource_memory_share_and_instances(tools, mode, resource, count, fraction, instances):
    objects = render(tools, case(mode, "hpa", "pvc"))
    resources = resources_of(objects)
    assert resources["limits"][resource] == count and resources["requests"][resource] == count
    other_gpu_keys = {k for k in resources["limits"] if k.startswith("nvidia.com/")} - {resource}
    assert not other_gpu_keys
    assert engine_params(objects).get("kv_memory_fraction") == fraction
    own, _ = entrypoint_args(objects)
    assert flag(own, "instance-count") == instances
    assert flag(own, "instance-kind") == "gpu"


@pytest.mark.parametrize("mode, sharing_key", [("time-slicing", "timeSlicing"), ("mps", "mps")])
def test_shared_gpu_modes_render_the_device_plugin_config(tools, mode, sharing_key):
    objects = render(tools, case(mode, "hpa", "pvc"))
    config_map = find(objects, "ConfigMap", "-device-plugin")
    assert config_map["metadata"]["namespace"] == "gpu-operator"
    config = yaml.safe_load(config_map["data"]["qwen-triton"])
    sharing = config["sharing"][sharing_key]
    assert sharing["resources"] == [{"name": GPU, "replicas": SHARING[mode]["gpu"]["replicasPerGpu"]}]


@pytest.mark.parametrize("mode", ["exclusive", "mig", "multi-instance", "cpu"])
def test_unshared_modes_render_no_device_plugin_config(tools, mode):
    objects = render(tools, case(mode, "hpa", "pvc"))
    assert not [o for o in objects if o["metadata"]["name"].endswith("-device-plugin")]


def test_explicit_kv_memory_fraction_wins_over_the_split(tools):
    values = case("time-slicing", "hpa", "pvc")
    values["engine"] = {"kv_memory_fraction": 0.3}
    assert engine_params(render(tools, values))["kv_memory_fraction"] == "0.3"


def test_cpu_mode_asks_for_no_gpu_and_runs_cpu_instances(tools):
    objects = render(tools, case("cpu", "fixed", "pvc"))
    assert not [k for k in resources_of(objects)["limits"] if k.startswith("nvidia.com/")]
    own, server = entrypoint_args(objects)
    assert flag(own, "instance-kind") == "cpu"
    assert flag(server, "allow-gpu-metrics") == "false"
    assert engine_params(objects)["device"] == "cpu"


def test_scheduling_knobs_pass_through(tools):
    values = case("exclusive", "hpa", "pvc")
    values |= {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "qwen-triton"}},
            }
        ],
    }
    pod = find(render(tools, values), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["affinity"] == values["affinity"]
    assert pod["topologySpreadConstraints"] == values["topologySpreadConstraints"]
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


# ------------------------------------------------------------------------------ autoscaling


def test_hpa_scales_on_the_waiting_requests_pods_metric(tools):
    objects = render(tools, case("exclusive", "hpa", "pvc"))
    assert "ScaledObject" not in kinds(objects)
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": find(objects, "Deployment")["metadata"]["name"],
    }
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "qwen_num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2"}
    # Slow-starting pods: react at once upward, wait long before removing one.
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert "replicas" not in find(objects, "Deployment")["spec"]


def test_hpa_renders_prometheus_adapter_rules_for_its_metric(tools):
    objects = render(tools, case("exclusive", "hpa", "pvc"))
    [rule] = yaml.safe_load(find(objects, "ConfigMap", "-adapter-rules")["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"] == 'qwen_num_requests_waiting{namespace!="",pod!=""}'
    assert rule["name"]["as"] == "qwen_num_requests_waiting"
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert rule["metricsQuery"] == (
        'sum(avg_over_time(qwen_num_requests_waiting{<<.LabelMatchers>>,model="qwen"}[1m])) by (<<.GroupBy>>)'
    )


def test_keda_scaled_object_replaces_the_hpa(tools):
    objects = render(tools, case("exclusive", "keda", "pvc"))
    assert "HorizontalPodAutoscaler" not in kinds(objects)
    assert not [o for o in objects if o["metadata"]["name"].endswith("-adapter-rules")]
    scaled = find(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "2"
    assert trigger["metadata"]["query"] == (
        'sum(avg_over_time(qwen_num_requests_waiting{namespace="qwen",pod=~"qwen-triton-.*",model="qwen"}[1m]))'
    )
    assert (
        scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        >= 300
    )


def test_fixed_replicas_without_autoscaling(tools):
    objects = render(tools, case("exclusive", "fixed", "pvc"))
    assert not kinds(objects) & {"HorizontalPodAutoscaler", "ScaledObject"}
    assert find(objects, "Deployment")["spec"]["replicas"] == AUTOSCALING["fixed"]["replicaCount"]


# ------------------------------------------------------------------------------ model sources


def volume(objects, name):
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    return next(v for v in pod["volumes"] if v["name"] == name)


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_hub_source_downloads_by_id_with_the_token_file(tools):
    objects = render(tools, case("exclusive", "hpa", "hub"))
    container = server_container(objects)
    assert flag(entrypoint_args(objects)[0], "model") == "Qwen/Qwen2.5-72B-Instruct"
    assert env_of(container)["HF_TOKEN_PATH"] == "/var/run/secrets/qwen-triton/hub/token"
    assert "HF_TOKEN" not in env_of(container)  # secrets as files, not env
    assert volume(objects, "hub-token")["secret"] == {
        "secretName": "hf-token",
        "defaultMode": 0o440,
        "items": [{"key": "token", "path": "token"}],
    }
    assert volume(objects, "hub-cache")["persistentVolumeClaim"] == {"claimName": "hf-cache"}
    egress_ports = [
        p["port"] for rule in find(objects, "NetworkPolicy", "qwen-triton")["spec"]["egress"] for p in rule["ports"]
    ]
    assert 443 in egress_ports


def test_pvc_source_mounts_the_claim_read_only_and_stays_offline(tools):
    objects = render(tools, case("exclusive", "hpa", "pvc"))
    assert volume(objects, "checkpoint")["persistentVolumeClaim"] == {"claimName": "qwen-weights", "readOnly": True}
    assert flag(entrypoint_args(objects)[0], "model") == "/models/qwen2.5-7b"
    mount = next(m for m in server_container(objects)["volumeMounts"] if m["name"] == "checkpoint")
    assert mount == {"name": "checkpoint", "mountPath": "/models", "readOnly": True}
    assert env_of(server_container(objects))["HF_HUB_OFFLINE"] == "1"
    egress_ports = [
        p["port"] for rule in find(objects, "NetworkPolicy", "qwen-triton")["spec"]["egress"] for p in rule["ports"]
    ]
    assert 443 not in egress_ports


def test_host_path_source(tools):
    objects = render(tools, case("exclusive", "hpa", "hostPath"))
    assert volume(objects, "checkpoint")["hostPath"] == {"path": "/data/qwen2.5-7b", "type": "Directory"}
    assert flag(entrypoint_args(objects)[0], "model") == "/models"


def test_init_container_source_fetches_into_an_empty_dir(tools):
    objects = render(tools, case("exclusive", "hpa", "initContainer"))
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert env_of(init)["CHECKPOINT_DIR"] == "/models/checkpoint"
    assert env_of(init)["HUB_MODEL_ID"] == "Qwen/Qwen2.5-7B-Instruct"
    assert "snapshot_download" in init["command"][-1]
    assert {"name": "checkpoint", "mountPath": "/models"} in init["volumeMounts"]
    assert volume(objects, "checkpoint")["emptyDir"] == {"sizeLimit": "200Gi"}
    assert flag(entrypoint_args(objects)[0], "model") == "/models/checkpoint"


def test_engine_settings_become_config_pbtxt_parameters(tools):
    values = case("exclusive", "hpa", "pvc")
    values["engine"] = {
        "dtype": "float16",
        "quantization": "int8",
        "kv_cache_dtype": "fp8",
        "max_num_seqs": 8,
        "max_model_len": 4096,
        "enable_prefix_caching": False,
        "attention_window": 1024,
        "attention_sinks": 4,
    }
    params = engine_params(render(tools, values))
    expected = {
        "dtype": "float16",
        "quantization": "int8",
        "kv_cache_dtype": "fp8",
        "max_num_seqs": "8",
        "max_model_len": "4096",
        "enable_prefix_caching": "false",
        "attention_window": "1024",
        "attention_sinks": "4",
    }
    assert {k: params[k] for k in expected} == expected
    assert "num_kv_blocks" not in params  # empty values keep config.pbtxt's default


# ------------------------------------------------------------------------------ pod, service, drain, security


@pytest.fixture(scope="module")
def default_objects(tools):
    return render(tools)


def test_every_object_carries_the_standard_labels(default_objects):
    for obj in default_objects:
        labels = obj["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks label {key}"


def test_api_and_metrics_have_services_of_their_own(default_objects):
    api = {p["name"]: p["port"] for p in api_service(default_objects)["spec"]["ports"]}
    assert api == {"http": 8000, "grpc": 8001}
    metrics = metrics_service(default_objects)
    assert {p["name"]: p["port"] for p in metrics["spec"]["ports"]} == {"metrics": 8002}
    assert metrics["spec"]["type"] == "ClusterIP"


def test_probes_allow_a_72b_load_and_ask_the_supervisor(default_objects):
    """The probes go to the entrypoint's health port, which sees a drain and a dead engine (Triton's own
    /v2/health/ready does not), on the port the entrypoint is told to serve."""
    container = server_container(default_objects)
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/ready", "port": "health"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "health"}
    health = next(p for p in container["ports"] if p["name"] == "health")
    own, _ = entrypoint_args(default_objects)
    assert int(flag(own, "health-port")) == health["containerPort"]
    for service in (api_service(default_objects), metrics_service(default_objects)):
        assert "health" not in {p.get("targetPort") for p in service["spec"]["ports"]}, "probes are for the kubelet"


def test_termination_drains_in_flight_requests(default_objects):
    pod = find(default_objects, "Deployment")["spec"]["template"]["spec"]
    container = server_container(default_objects)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    own, server = entrypoint_args(default_objects)
    drain_timeout = float(flag(own, "drain-timeout"))
    exit_timeout = int(flag(server, "exit-timeout-secs"))
    assert pre_stop > 0 and drain_timeout > 0 and exit_timeout > 0
    # preStop, then the supervisor's drain, then tritonserver's own exit: all inside the grace period.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain_timeout + exit_timeout
    assert find(default_objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    strategy = find(default_objects, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_pod_runs_non_root_read_only_without_privileges(default_objects):
    pod = find(default_objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = server_container(default_objects)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    scratch = {m["mountPath"] for m in server_container(default_objects)["volumeMounts"]}
    assert {"/tmp", "/run/qwen", "/var/cache/qwen", "/dev/shm"} <= scratch
    own, _ = entrypoint_args(default_objects)
    assert flag(own, "run-dir") == "/run/qwen"  # the rendered repository goes to scratch


def test_triton_admin_apis_are_locked(default_objects):
    own, server = entrypoint_args(default_objects)
    assert flag(server, "model-control-mode") == "none"
    apis = set(flag(own, "restricted-apis").split(","))
    assert {"shared-memory", "logging", "trace", "statistics"} <= apis
    assert not apis & {"health", "inference", "metadata"}  # probes and clients stay open
    # No Secret given: the entrypoint draws a random key; nothing key-like in the pod spec or its env.
    assert not [a for a in own if a.startswith("--admin-key-file")]
    assert "TRITON_ADMIN_KEY" not in env_of(server_container(default_objects))


def test_admin_key_comes_from_a_mounted_secret_file(tools):
    objects = render(tools, {"triton": {"restrictedApis": {"existingSecret": "triton-admin"}}})
    own, _ = entrypoint_args(objects)
    assert flag(own, "admin-key-file") == "/var/run/secrets/qwen-triton/admin/key"
    assert volume(objects, "admin-key")["secret"]["secretName"] == "triton-admin"
    assert not [e for e in server_container(objects)["env"] if "ADMIN" in e["name"]]


def test_network_policy_admits_named_clients_and_monitoring_only(default_objects):
    policy = find(default_objects, "NetworkPolicy", "qwen-triton")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "inference-server"
    client_rule, metrics_rule = policy["ingress"]
    assert {p["port"] for p in client_rule["ports"]} == {"http", "grpc"}
    peers = client_rule["from"]
    assert peers, "the API must not be open to every source"
    assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "helm-test"
    assert {"podSelector": {"matchLabels": {"qwen-triton/client": "true"}}} in peers
    assert [p["port"] for p in metrics_rule["ports"]] == ["metrics"]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def egress_rules(objects) -> tuple[list[dict], list[dict]]:
    """The server pods' egress: (DNS rules, HTTPS rules); nothing else may be there."""
    rules = find(objects, "NetworkPolicy", "qwen-triton")["spec"]["egress"]
    dns = [r for r in rules if {p["port"] for p in r["ports"]} == {53}]
    https = [r for r in rules if [p["port"] for p in r["ports"]] == [443]]
    assert len(dns) == 1 and len(dns) + len(https) == len(rules), rules
    return dns, https


def test_https_egress_goes_to_the_named_hosts_only(tools):
    proxy = [{"ipBlock": {"cidr": "10.0.0.8/32"}}]
    objects = render(tools, merge(case("exclusive", "hpa", "hub"), {"networkPolicy": {"httpsEgressTo": proxy}}))
    _, [https] = egress_rules(objects)
    assert https["to"] == proxy


def test_https_egress_without_named_hosts_reaches_public_addresses_only(default_objects):
    """The default (a hub download, nothing named): 443 to the internet, not to the cluster's own ranges
    (its services, the API server on 443) nor to the cloud's metadata address."""
    _, [https] = egress_rules(default_objects)
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"].get("except", [])) for peer in https["to"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= blocks["0.0.0.0/0"]
    assert {"fc00::/7", "fe80::/10"} <= blocks["::/0"]


@pytest.mark.parametrize("source", ["pvc", "hostPath"])
def test_no_egress_but_dns_without_a_download(tools, source):
    _, https = egress_rules(render(tools, case("exclusive", "hpa", source)))
    assert https == []


def test_init_container_download_opens_https_and_never_closes_it(tools):
    """The download of model.source=initContainer needs 443; a NetworkPolicy cannot close it afterwards."""
    _, [https] = egress_rules(render(tools, case("exclusive", "hpa", "initContainer")))
    assert https["to"]
    _, never = egress_rules(
        render(
            tools, merge(case("exclusive", "hpa", "initContainer"), {"networkPolicy": {"allowHttpsEgress": "never"}})
        )
    )
    assert never == []


def test_service_monitor_scrapes_the_metrics_service(default_objects):
    monitor = find(default_objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    labels = metrics_service(default_objects)["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert not selector.items() <= api_service(default_objects)["metadata"]["labels"].items()


def test_grafana_dashboard_shows_the_autoscaling_signal(default_objects):
    config_map = find(default_objects, "ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["qwen-triton.json"])
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert any("qwen_num_requests_waiting" in q for q in queries)
    assert any("qwen_time_to_first_token_seconds_bucket" in q for q in queries)


def test_helm_test_hook_sends_one_generate_request(default_objects):
    pod = find(default_objects, "Pod", "-test-generate")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert re.search(r"http://qwen-triton:8000/v2/models/qwen/generate", script)
    body = json.loads(re.search(r"body='(.*)'", script).group(1))
    assert json.loads(body["messages"]) == [{"role": "user", "content": "What is the capital of France?"}]
    assert "curl" in script and "text_output" in script
    # Its own policy lets it reach the server pods' HTTP port (and DNS) only.
    policy = find(default_objects, "NetworkPolicy", "-test-generate")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "helm-test"
    [dns, server] = policy["egress"]
    assert server["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert server["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "inference-server"


def test_ingress_routes_the_generate_endpoints_only(tools):
    objects = render(tools, {"ingress": {"enabled": True, "className": "nginx"}})
    [rule] = find(objects, "Ingress")["spec"]["rules"]
    paths = {p["path"]: p for p in rule["http"]["paths"]}
    assert set(paths) == {"/v2/models/qwen/generate", "/v2/models/qwen/generate_stream"}
    for path in paths.values():
        assert path["pathType"] == "Exact"
        assert path["backend"]["service"] == {"name": "qwen-triton", "port": {"number": 8000}}


# ------------------------------------------------------------------------------ OpenAI gateway


def test_openai_gateway_runs_beside_tritonserver(tools):
    values = {
        "openai": {"enabled": True, "apiKeySecret": {"name": "openai-key"}},
        "ingress": {"enabled": True},
    }
    objects = render(tools, values)
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "openai-gateway")
    assert gateway["image"] == server_container(objects)["image"]
    assert gateway["command"] == [
        "qwen-openai",
        "--triton-grpc=127.0.0.1:8001",
        "--host=0.0.0.0",
        "--port=9000",
        "--model-name=qwen",
        "--api-key-file=/var/run/secrets/qwen-triton/openai/api-key",
    ]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "openai"}
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert volume(objects, "openai-api-key")["secret"]["secretName"] == "openai-key"
    assert {p["name"]: p["port"] for p in api_service(objects)["spec"]["ports"]}["openai"] == 9000
    assert "openai-metrics" in {p["name"] for p in metrics_service(objects)["spec"]["ports"]}
    endpoints = find(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert {"port": "openai-metrics", "path": "/metrics"}.items() <= endpoints[1].items()
    client_rule = find(objects, "NetworkPolicy", "qwen-triton")["spec"]["ingress"][0]
    assert "openai" in {p["port"] for p in client_rule["ports"]}
    [rule] = find(objects, "Ingress")["spec"]["rules"]
    v1 = next(p for p in rule["http"]["paths"] if p["path"] == "/v1/")
    assert v1["backend"]["service"]["port"]["number"] == 9000


# ------------------------------------------------------------------------------ tensor parallelism


def test_tensor_parallel_pod_asks_for_its_gpus_and_sets_the_parameter(tools):
    objects = render(tools, merge(case("exclusive", "hpa", "pvc"), {"engine": {"tensorParallelSize": 4}}))
    assert resources_of(objects)["limits"][GPU] == 4
    assert engine_params(objects)["tensor_parallel_size"] == "4"
    shm = volume(objects, "shm")["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"]


def test_one_gpu_engine_renders_no_tensor_parallel_parameter(default_objects):
    assert "tensor_parallel_size" not in engine_params(default_objects)


@pytest.mark.parametrize("mode", ["mig", "time-slicing", "mps", "cpu"])
def test_tensor_parallelism_needs_whole_gpus(tools, mode):
    error = render_error(tools, merge(case(mode, "hpa", "pvc"), {"engine": {"tensorParallelSize": 2}}))
    assert "tensorParallelSize" in error


# ------------------------------------------------------------------------------ image


@pytest.mark.parametrize("mode, tag", [("exclusive", "0.1.0"), ("cpu", "0.1.0-cpu")])
def test_default_image_is_what_make_image_builds(tools, mode, tag):
    objects = render(tools, case(mode, "hpa", "pvc"))
    assert server_container(objects)["image"] == f"localhost/qwen-triton:{tag}"


@pytest.mark.parametrize("source", list(SOURCES))
def test_notes_render_for_every_source(tools, tmp_path, source):
    # `helm install --dry-run` needs a cluster; render NOTES.txt through a copy of the chart with one
    # extra template that includes it (Helm names each file's template by its path).
    chart_copy = tmp_path / "qwen-triton"
    shutil.copytree(CHART, chart_copy)
    (chart_copy / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ include "qwen-triton/templates/NOTES.txt" . | toJson }}\n'
    )
    values = merge(SOURCES[source], {"model": {"pvc": {"claimName": "w"}, "hostPath": {"path": "/w"}}})
    result = subprocess.run(
        [
            tools.helm,
            "template",
            "qwen",
            str(chart_copy),
            "-n",
            "qwen",
            "-f",
            "-",
            "--show-only",
            "templates/zz-notes.yaml",
        ],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    notes = yaml.safe_load(result.stdout)["notes"]
    assert "curl -s localhost:8000/v2/models/qwen/generate" in notes
    assert "helm test qwen -n qwen" in notes
    assert f"(source: {source})" in notes
