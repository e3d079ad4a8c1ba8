"""Reading checkpoints: sharded safetensors, dtypes, and clear errors for what cannot be served."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_helpers import greedy, make_engine, run_all
from transformers import AutoModelForCausalLM

from qwen_triton.models.checkpoint import CheckpointReader, resolve_checkpoint, safetensors_files


@pytest.fixture(scope="module")
def sharded_qwen2(tiny_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).save_pretrained(out, max_shard_size="1MB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_qwen2 / name, out / name)
    return out


def test_sharded_checkpoint_serves_the_same_tokens(tiny_qwen2, sharded_qwen2):
    assert (sharded_qwen2 / "model.safetensors.index.json").exists() and len(safetensors_files(sharded_qwen2)) > 1
    prompt = list(range(100, 130))
    whole = run_all(make_engine(tiny_qwen2), {"a": (prompt, greedy(12, ignore_eos=True))})["a"]["tokens"]
    sharded = run_all(make_engine(sharded_qwen2), {"a": (prompt, greedy(12, ignore_eos=True))})["a"]["tokens"]
    assert sharded == whole


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_engines_load_and_generate(tiny_qwen2, dtype, torch_dtype):
    engine = make_engine(tiny_qwen2, dtype=dtype)
    assert engine.model.embed_tokens.weight.dtype == torch_dtype
    result = run_all(engine, {"a": (list(range(100, 120)), greedy(8, ignore_eos=True))})["a"]
    assert len(result["tokens"]) == 8 and result["reason"] == "length"


def test_unservable_checkpoints_are_refused_with_the_reason(tmp_path, tiny_qwen2):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "empty"))
    other = tmp_path / "other-arch"
    shutil.copytree(tiny_qwen2, other)
    config = json.loads((other / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not supported"):
        make_engine(other)


def test_missing_and_misshapen_tensors_are_named(tiny_qwen2, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"checkpoint lacks tensors for: \['model.layers.1.mlp.up_proj.weight'\]"):
        make_engine(broken)
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(8, 64)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"up_proj.weight: checkpoint shape \(8, 64\) != model \(128, 64\)"):
        make_engine(broken)


def test_the_reader_copies_out_exactly_the_asked_rows_and_columns(sharded_qwen2):
    reader = CheckpointReader(sharded_qwen2)
    name = "model.layers.0.mlp.down_proj.weight"
    whole = reader.read(name)
    assert reader.tensors[name].shape == tuple(whole.shape) and reader.tensors[name].dtype == whole.dtype
    assert torch.equal(reader.read(name, rows=(3, 9)), whole[3:9])
    assert torch.equal(reader.read(name, rows=(0, 5), cols=(16, 48)), whole[0:5, 16:48])
    assert len({info.file for info in reader.tensors.values()}) > 1  # names of every shard, in file order
