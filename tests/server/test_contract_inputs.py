"""One home for the Triton input lists: model_repository/*/config.pbtxt. The parsers, the client's specs
and docs/CONTRACTS.md must name exactly the inputs (and dtypes) the configs declare."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from qwen_client.params import INPUT_SPECS
from qwen_triton.serving import request_parsing, vllm_dialect

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = (REPO_ROOT / "docs" / "CONTRACTS.md").read_text()


def config_inputs(model: str) -> dict[str, tuple[str, bool]]:
    """input name -> (datatype as the client spells it, whether it is a list: dims [-1])"""
    path = REPO_ROOT / "model_repository" / model / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return {
        i.name: (
            model_config_pb2.DataType.Name(i.data_type).removeprefix("TYPE_").replace("STRING", "BYTES"),
            list(i.dims) == [-1],
        )
        for i in config.input
    }


def contracts_section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## )", CONTRACTS, flags=re.S | re.M)
    assert match, f"docs/CONTRACTS.md has no section '## {title}'"
    return match.group(1)


def test_qwen_parser_reads_exactly_the_declared_inputs():
    assert set(request_parsing.INPUT_NAMES) == set(config_inputs("qwen"))


def test_client_specs_match_the_qwen_config():
    declared = config_inputs("qwen")
    assert set(INPUT_SPECS) == set(declared)
    for name, spec in INPUT_SPECS.items():
        assert (spec.datatype, spec.is_list) == declared[name], name


def test_vllm_dialect_inputs_and_what_it_forwards():
    assert set(vllm_dialect.INPUT_NAMES) == set(config_inputs("qwen_vllm"))
    qwen = config_inputs("qwen")
    for name, dtype in vllm_dialect.SCALAR_KEYS.values():
        assert name in qwen, name
        assert qwen[name][0] == {"int32": "INT32", "int64": "INT64", "float32": "FP32", "bool_": "BOOL"}[dtype.__name__]
    for name in (*vllm_dialect.LIST_KEYS.values(), "logit_bias", "stop_token_ids", "return_logprobs", "top_logprobs"):
        assert name in qwen, name


def test_pipeline_inputs_are_qwen_inputs_of_the_same_type():
    qwen = config_inputs("qwen")
    for name, spec in config_inputs("qwen_pipeline").items():
        assert qwen[name] == spec, name


@pytest.mark.parametrize("model, section", [("qwen", "Triton model `qwen`"), ("qwen_vllm", "Triton model `qwen_vllm`")])
def test_contracts_md_lists_every_input(model, section):
    text = contracts_section(section)
    missing = [name for name in config_inputs(model) if f"`{name}`" not in text]
    assert not missing, f"docs/CONTRACTS.md section {section!r} lacks {missing}"
