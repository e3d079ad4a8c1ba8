"""The engine serves GPTQ / AWQ checkpoints: a tiny Qwen2 written in each packed format, loaded by
LLMEngine, gives the same greedy tokens as the float checkpoint quantized in memory to the same grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from checkpoint_writers import awq_tensors, gptq_tensors
from safetensors.torch import save_file
from torch import nn

from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.llm_engine import LLMEngine
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.quantization.quantize import quantize_linear
from qwen_triton.quantization.spec import parse_format

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "smollm2-135m-instruct"
GROUP = 32


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    out = tmp_path_factory.mktemp("float")
    Qwen2ForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, out / name)
    return out


def write_packed(float_dir: Path, out: Path, method: str) -> Path:
    """The float checkpoint re-written as Qwen's GPTQ (symmetric, v1) or AWQ (gemm) release would be."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32)
    tensors = {name: t.contiguous() for name, t in model.state_dict().items() if name != "lm_head.weight"}
    fmt = parse_format(f"int4:g{GROUP}{':sym' if method == 'gptq' else ''}", "test")
    for name, linear in model.named_modules():
        if not isinstance(linear, nn.Linear) or name == "lm_head":
            continue
        packed = quantize_linear(linear, fmt)
        q, zeros, scales = packed.unpacked_qweight().t().long(), packed.zeros.t().long(), packed.scales.t()
        bias = None if linear.bias is None else linear.bias.detach()
        for key in [k for k in tensors if k.startswith(name + ".")]:
            del tensors[key]
        if method == "gptq":
            tensors.update(gptq_tensors(name, q, zeros, scales, torch.arange(q.shape[0]) // GROUP, 4, bias))
        else:
            tensors.update(awq_tensors(name, q, zeros, scales, bias))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(out / "model.safetensors"))
    config = json.loads((float_dir / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": method,
        "bits": 4,
        "group_size": GROUP,
        "sym": method == "gptq",
        "desc_act": False,
        "version": "gemm",
        "zero_point": method == "awq",
    }
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(float_dir / name, out / name)
    return out


def greedy_tokens(model_dir: Path, **settings) -> list[list[int]]:
    return engine_tokens(
        LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", device="cpu", max_model_len=256, **settings))
    )


def engine_tokens(engine: LLMEngine) -> list[list[int]]:
    prompts = [[(31 * i + 7 * j) % 49152 for j in range(20)] for i in range(3)]
    for i, ids in enumerate(prompts):
        engine.add_request(f"p{i}", ids, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    return [tokens[f"p{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize(
    "method, in_memory_spec", [("gptq", f"int4:g{GROUP}:sym,lm_head=none"), ("awq", f"int4:g{GROUP},lm_head=none")]
)
def test_engine_serves_packed_checkpoint_like_in_memory_quantization(
    float_checkpoint, tmp_path, method, in_memory_spec
):
    packed = write_packed(float_checkpoint, tmp_path / method, method)
    assert greedy_tokens(packed) == greedy_tokens(float_checkpoint, quantization=in_memory_spec)


def test_requantizing_a_packed_checkpoint_is_refused(float_checkpoint, tmp_path):
    packed = write_packed(float_checkpoint, tmp_path / "gptq", "gptq")
    with pytest.raises(ValueError, match="already gptq"):
        LLMEngine(EngineConfig(model=str(packed), device="cpu", max_model_len=256, quantization="int8"))


def test_a_packed_checkpoint_moved_to_the_device_takes_the_devices_layout(float_checkpoint, tmp_path, monkeypatch):
    """GPTQ / AWQ projections are built row-major on the host and moved in; on CUDA the int4 kernels read
    the tiled layout (kernels/int4_layout.py). Here the host builds row-major and the device (CPU, forced)
    tiles: every packed projection must arrive tiled, with the same tokens."""
    from qwen_triton.models import loader
    from qwen_triton.quantization.formats import GroupwiseLinear

    packed = write_packed(float_checkpoint, tmp_path / "awq", "awq")
    expected = greedy_tokens(packed)
    read_on_the_host = loader.read_fused_projection

    def row_major_on_the_host(*args):
        with monkeypatch.context() as host:
            host.setattr(GroupwiseLinear, "_tiles", staticmethod(lambda *_: False))
            return read_on_the_host(*args)

    monkeypatch.setattr(loader, "read_fused_projection", row_major_on_the_host)
    monkeypatch.setattr(GroupwiseLinear, "_tiles", staticmethod(lambda qweight, *_: not qweight.is_meta))
    engine = LLMEngine(EngineConfig(model=str(packed), dtype="float32", device="cpu", max_model_len=256))
    projections = [m for m in engine.model.modules() if isinstance(m, GroupwiseLinear)]
    assert projections and all(m.qweight.dim() == 4 for m in projections)
    assert engine_tokens(engine) == expected
