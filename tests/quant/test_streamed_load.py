"""The streamed loader (models/loader.py): quantizing as tensors arrive gives exactly what loading the float
model and then quantizing it gave (same stored tensors, same greedy tokens); a model that cannot fit is
refused before anything is allocated; the progress line; a tensor-parallel rank reads only its slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.llm_engine import LLMEngine
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.models import loader
from qwen_triton.models.checkpoint import load_config
from qwen_triton.models.loader import LoadProgress, load_model, module_roles
from qwen_triton.quantization.formats import QuantizedLinear
from qwen_triton.quantization.quantize import quantize_model
from qwen_triton.quantization.spec import DEFAULT_MODULE_ROLES

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "smollm2-135m-instruct"
PROMPT = list(range(200, 230))


def write_tiny_qwen2(out: Path, tied: bool) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    config = Qwen2Config(
        vocab_size=49152,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        initializer_range=0.2,
    )
    Qwen2ForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, out / name)
    return out


@pytest.fixture(scope="module")
def tied_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_qwen2(tmp_path_factory.mktemp("tied"), tied=True)


@pytest.fixture(scope="module")
def untied_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_qwen2(tmp_path_factory.mktemp("untied"), tied=False)


def engine(checkpoint: Path, quantization: str = "none") -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=str(checkpoint),
            dtype="float32",
            device="cpu",
            max_model_len=256,
            max_num_seqs=4,
            cuda_graphs=False,
            quantization=quantization,
        )
    )


def greedy_tokens(llm: LLMEngine, n: int = 8) -> list[int]:
    llm.add_request("a", PROMPT, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    tokens = []
    while llm.has_unfinished():
        for out in llm.step():
            tokens += out.token_ids
    return tokens


def stored_tensors(model) -> dict[str, torch.Tensor]:
    return {name: t for name, t in [*model.named_parameters(), *model.named_buffers()] if "rotary" not in name}


@pytest.mark.parametrize(
    "spec, tied",
    [("int8", True), ("int4", True), ("fp8", False), ("layered", False), ("int4:g32:sym,lm_head=int8", False)],
)
def test_streamed_quantization_equals_load_then_quantize(spec, tied, tied_checkpoint, untied_checkpoint):
    checkpoint = tied_checkpoint if tied else untied_checkpoint
    streamed = engine(checkpoint, spec)
    reference = engine(checkpoint)
    quantize_model(reference.model, spec)
    got, want = stored_tensors(streamed.model), stored_tensors(reference.model)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert any(isinstance(m, QuantizedLinear) for m in streamed.model.modules())
    assert greedy_tokens(streamed) == greedy_tokens(reference)


def test_float_load_keeps_one_copy_of_a_tied_embedding(tied_checkpoint):
    model = engine(tied_checkpoint).model
    assert model.lm_head.weight is model.embed_tokens.weight


def test_a_model_too_big_for_the_device_is_refused_before_any_allocation(untied_checkpoint, monkeypatch):
    config = load_config(untied_checkpoint)
    monkeypatch.setattr(loader, "free_device_bytes", lambda device: 30_000_000)  # 30 MB "free"

    def no_allocation(*args, **kwargs):
        raise AssertionError("materialize ran: memory was allocated before the plan was checked")

    monkeypatch.setattr(loader, "materialize", no_allocation)
    with pytest.raises(ValueError) as refused:
        load_model(config, untied_checkpoint, device=torch.device("cpu"), dtype=torch.float32, max_model_len=256)
    message = str(refused.value)
    assert "needs 0.05 GB" in message and "0.03 GB are free" in message, message
    assert "quantization=int4" in message and "tensor_parallel_size=2" in message, message
    assert "quantization=int8" not in message, message  # int8 would not fit: not offered


def test_the_progress_line_counts_tensors_bytes_rate_and_time_left():
    now = [0.0]
    lines: list[str] = []
    progress = LoadProgress(4, 8 * 10**9, interval_s=5.0, clock=lambda: now[0], emit=lines.append)
    now[0] = 2.0
    progress.advance(2 * 10**9)
    assert lines == []  # quieter than one line per interval
    now[0] = 5.0
    progress.advance(3 * 10**9)
    assert lines == ["loading weights: 2/4 tensors, 5.00/8.00 GB, 1.00 GB/s, ETA 3 s"]
    now[0] = 8.0
    progress.advance(3 * 10**9, tensors=2)
    progress.finish()
    assert lines[-1] == "loaded weights: 4 tensors, 8.00 GB in 8.0 s (1.00 GB/s)"


def test_roles_of_the_quantization_rules_match_the_loaders_table():
    assert module_roles() == DEFAULT_MODULE_ROLES


def test_a_tensor_parallel_rank_loads_exactly_its_slices(untied_checkpoint):
    parallel = pytest.importorskip("qwen_triton.parallel.shard_plan")
    from qwen_triton.models.qwen2 import TensorSplit

    config = load_config(untied_checkpoint)
    kwargs = dict(device=torch.device("cpu"), dtype=torch.float32, max_model_len=256)
    whole = load_model(config, untied_checkpoint, **kwargs)
    q, kv = whole.layers[0].self_attn.q_size, whole.layers[0].self_attn.kv_size
    full_qkv = whole.layers[0].self_attn.qkv_proj.weight
    full_q, full_k, full_v = full_qkv.split([q, kv, kv])
    for rank in (0, 1):
        plan = parallel.ShardPlan(config, TensorSplit(rank, 2))
        part = load_model(config, untied_checkpoint, shard=plan, **kwargs)
        expected_qkv = torch.cat([half(full_q, q, rank), half(full_k, kv, rank), half(full_v, kv, rank)])
        assert torch.equal(part.layers[0].self_attn.qkv_proj.weight, expected_qkv)
        o = whole.layers[1].self_attn.o_proj.weight
        assert torch.equal(part.layers[1].self_attn.o_proj.weight, o[:, rank * q // 2 : (rank + 1) * q // 2])
        assert torch.equal(part.embed_tokens.weight, half(whole.embed_tokens.weight, config.vocab_size, rank))
        assert torch.equal(part.norm.weight, whole.norm.weight)


def half(tensor: torch.Tensor, size: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s half of the first `size` rows."""
    return tensor[rank * size // 2 : (rank + 1) * size // 2]


def test_streamed_int4_into_the_tiled_layout(untied_checkpoint, monkeypatch):
    """Where int4 weights are stored tiled (CUDA; forced here on CPU for every real device, as CUDA does:
    never on meta, where the loader builds the model), the loader tiles each allocated module and writes its
    row blocks into the tiles: the same bytes as quantizing the float model, the same greedy tokens."""
    from qwen_triton.quantization.formats import GroupwiseLinear

    reference = engine(untied_checkpoint)
    quantize_model(reference.model, "int4")
    monkeypatch.setattr(GroupwiseLinear, "_tiles", staticmethod(lambda qweight, *args: not qweight.is_meta))
    streamed = engine(untied_checkpoint, "int4")
    want = dict(reference.model.named_modules())
    tiled = [(name, m) for name, m in streamed.model.named_modules() if isinstance(m, GroupwiseLinear)]
    assert tiled and all(m.qweight.dim() == 4 for _, m in tiled)
    for name, module in tiled:
        assert torch.equal(module.row_major_qweight(), want[name].qweight), name
        assert torch.equal(module.scales, want[name].scales), name
    assert greedy_tokens(streamed) == greedy_tokens(reference)
