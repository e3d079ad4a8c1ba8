"""The Triton side of tensor parallelism: `tensor_parallel_size` is a parameter of the `qwen` model, and
above 1 scripts/serve.py makes its instance group one KIND_MODEL instance (the engine places its ranks on
cuda:0..N-1 itself; KIND_GPU would pin each instance to one GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QWEN_CONFIG = REPO / "model_repository" / "qwen" / "config.pbtxt"


@pytest.fixture(scope="module")
def serve():
    spec = importlib.util.spec_from_file_location("serve_script", REPO / "scripts" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_qwen_model_declares_tensor_parallel_size_1(serve):
    assert serve.load_config(QWEN_CONFIG).parameters["tensor_parallel_size"].string_value == "1"


@pytest.mark.parametrize(("size", "kind"), [("1", "KIND_GPU"), ("2", "KIND_MODEL"), ("8", "KIND_MODEL")])
def test_instance_group_kind_follows_tensor_parallel_size(serve, size, kind):
    from tritonclient.grpc import model_config_pb2

    config = serve.load_config(QWEN_CONFIG)
    used = serve.apply_overrides(config, {"tensor_parallel_size": size}, "gpu")
    assert used == {"tensor_parallel_size"}
    groups = list(config.instance_group)
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in groups] == [kind]
    if kind == "KIND_MODEL":
        assert groups[0].count == 1 and not list(groups[0].gpus)
    else:
        assert list(groups[0].gpus) == [0]
