"""deploy/entrypoint.py with the exact arguments the chart gives the container, on the real
model_repository/: every engine setting lands in config.pbtxt, and tritonserver gets its flags."""

import json
import os
import subprocess
import sys

import pytest
from chart_helpers import REPO_ROOT, entrypoint_args, render
from values_matrix import case

ENTRYPOINT = REPO_ROOT / "deploy" / "entrypoint.py"
SOURCE_REPOSITORY = REPO_ROOT / "model_repository"


def run_entrypoint(own_args: list[str], server_args: list[str], run_dir, env=None):
    # In the image the repository is /opt/qwen/model_repository; here the checkout's.
    own = [a for a in own_args if not a.startswith(("--source-repository=", "--run-dir="))]
    command = [
        sys.executable,
        str(ENTRYPOINT),
        f"--source-repository={SOURCE_REPOSITORY}",
        f"--run-dir={run_dir}",
        *own,
        "--dry-run",
        "--",
        *server_args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def read_config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("sharing", ["time-slicing", "multi-instance"])
def test_chart_arguments_render_the_model_config(tools, tmp_path, sharing):
    values = case(sharing, "hpa", "pvc")
    values["engine"] = {"max_num_seqs": 2, "max_model_len": 4096, "enable_prefix_caching": False}
    own, server = entrypoint_args(render(tools, values))
    result = run_entrypoint(own, server, tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)

    config = read_config(tmp_path / "model_repository" / "qwen" / "config.pbtxt")
    params = {key: p.string_value for key, p in config.parameters.items()}
    assert params["model"] == "/models/qwen2.5-7b"
    assert params["max_num_seqs"] == "2" and params["max_model_len"] == "4096"
    assert params["enable_prefix_caching"] == "false" and params["dtype"] == "bfloat16"
    assert params["kv_memory_fraction"] == {"time-slicing": "0.225", "multi-instance": "0.300"}[sharing]
    [group] = config.instance_group
    assert group.kind == group.KIND_GPU
    assert group.count == {"time-slicing": 1, "multi-instance": 3}[sharing]

    command = plan["command"]
    assert command[0] == "/opt/tritonserver/bin/tritonserver"
    assert command[1] == f"--model-repository={tmp_path / 'model_repository'}"
    assert "--model-control-mode=none" in command
    assert "--http-address=0.0.0.0" in command  # the pod's network; the NetworkPolicy decides who reaches it
    restricted = [c for c in command if "restricted" in c]
    assert restricted == [
        "--http-restricted-api=shared-memory,logging,trace,statistics:triton-admin-key=***",
        "--grpc-restricted-protocol=shared-memory,logging,trace,statistics:triton-admin-key=***",
    ]


def test_every_engine_key_of_the_chart_is_a_model_parameter(tools):
    """The chart's engine: keys must stay in sync with config.pbtxt's parameters (EngineConfig)."""
    import yaml

    # tensorParallelSize also sizes the pod's GPUs; it reaches config.pbtxt as tensor_parallel_size (when > 1).
    chart_keys = set(yaml.safe_load((REPO_ROOT / "helm" / "qwen-triton" / "values.yaml").read_text())["engine"])
    chart_keys -= {"tensorParallelSize"}
    declared = set(read_config(SOURCE_REPOSITORY / "qwen" / "config.pbtxt").parameters)
    assert chart_keys <= declared, f"engine keys unknown to model_repository/qwen/config.pbtxt: {chart_keys - declared}"


def test_unknown_parameter_is_refused_naming_the_known_ones(tmp_path):
    result = run_entrypoint(["--model=/models", "--param=max_num_seq=4"], [], tmp_path)
    assert result.returncode != 0
    assert "max_num_seq" in result.stderr and "max_num_seqs" in result.stderr


def test_the_admin_key_comes_from_its_file_and_is_never_printed(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cr3t-admin-value\n")
    result = run_entrypoint(
        ["--model=/models", f"--admin-key-file={key_file}"], [], tmp_path / "run", env=without_admin_env()
    )
    assert result.returncode == 0, result.stderr
    assert "s3cr3t-admin-value" not in result.stdout + result.stderr
    assert "triton-admin-key=***" in result.stdout


def test_empty_admin_key_file_is_refused(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("\n")
    result = run_entrypoint(["--model=/models", f"--admin-key-file={key_file}"], [], tmp_path / "run")
    assert result.returncode != 0
    assert str(key_file) in result.stderr and "empty" in result.stderr


def test_unknown_api_group_is_refused_naming_the_known_ones(tmp_path):
    result = run_entrypoint(["--model=/models", "--restricted-apis=shared-memory,loging"], [], tmp_path)
    assert result.returncode != 0
    assert "loging" in result.stderr and "logging" in result.stderr


def test_shared_memory_stays_restricted_unless_asked(tmp_path):
    closed = run_entrypoint(["--model=/models", "--restricted-apis="], [], tmp_path / "a")
    assert json.loads(closed.stdout)["command"][-2:] == [
        "--http-restricted-api=shared-memory:triton-admin-key=***",
        "--grpc-restricted-protocol=shared-memory:triton-admin-key=***",
    ]
    opened = run_entrypoint(["--model=/models", "--restricted-apis=", "--allow-shared-memory"], [], tmp_path / "b")
    assert not [c for c in json.loads(opened.stdout)["command"] if "restricted" in c]


def without_admin_env() -> dict:
    return {k: v for k, v in os.environ.items() if "ADMIN" not in k}
