"""Our forward against Hugging Face transformers, the reference: greedy tokens and prefill logits."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy, make_engine, run_all
from transformers import AutoModelForCausalLM, AutoTokenizer

from qwen_triton.layers.attention import AttentionMetadata

PROMPTS = ["The quick brown fox", "In 1905, Albert Einstein published", "def fibonacci(n):"]


def hf_greedy(model_dir, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("checkpoint", ["tiny_qwen2", "demo_model"])
def test_greedy_matches_transformers(checkpoint, request):
    model_dir = request.getfixturevalue(checkpoint)
    engine = make_engine(model_dir)
    if checkpoint == "tiny_qwen2":
        assert engine.model.layers[0].self_attn.qkv_proj.bias is not None  # Qwen2: QKV bias
        assert engine.model.lm_head.weight is engine.model.embed_tokens.weight  # tied
        assert engine.model.layers[0].self_attn.num_kv_heads < engine.model.layers[0].self_attn.num_heads  # GQA
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = {f"p{i}": tokenizer.encode(p) for i, p in enumerate(PROMPTS)}
    ours = run_all(engine, {rid: (ids, greedy(20, ignore_eos=True)) for rid, ids in prompts.items()})
    for rid, ids in prompts.items():
        assert ours[rid]["tokens"] == hf_greedy(model_dir, ids, 20), rid


def test_prefill_logits_close_to_transformers(tiny_qwen2):
    engine = make_engine(tiny_qwen2)
    ids = AutoTokenizer.from_pretrained(tiny_qwen2).encode(PROMPTS[1])
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    n = len(ids)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n),
        block_tables=torch.arange(-(-n // 16)).unsqueeze(0).int(),
        context_lens=torch.tensor([n], dtype=torch.int32),
        is_decode=False,
        query_lens=[n],
        context_lens_cpu=[n],
    )
    with torch.inference_mode():
        hidden = engine.model(torch.tensor(ids), torch.arange(n), meta, engine.kv_cache)
        ours = engine.model.compute_logits(hidden)
    assert torch.allclose(ours, expected, atol=1e-4, rtol=1e-4), (ours - expected).abs().max()


def test_chat_answer_from_the_real_model(demo_model):
    engine = make_engine(demo_model)
    ids = engine.tokenizer.encode(messages=[{"role": "user", "content": "What is the capital of France?"}])
    result = run_all(engine, {"q": (ids, greedy(24))})["q"]
    assert "Paris" in result["text"]
    assert result["reason"] == "stop"  # ended on <|im_end|>, an EOS of the checkpoint


def test_qwen2_sliding_window_layers_match_transformers(tmp_path, demo_model):
    """A Qwen2 config with use_sliding_window: its upper layers see only the last `sliding_window`
    positions. Prompts longer than the window, greedy tokens equal to transformers."""
    import shutil

    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
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
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_model / name, tmp_path / name)
    engine = make_engine(tmp_path, max_model_len=512)
    assert [layer.self_attn.sliding_window for layer in engine.model.layers] == [0, 8]
    prompts = {f"p{i}": [(97 * i + 13 * j) % 49152 for j in range(20 + 3 * i)] for i in range(3)}
    ours = run_all(engine, {rid: (ids, greedy(12, ignore_eos=True)) for rid, ids in prompts.items()})
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
    # Greedy by full forward passes, no KV cache: with a sliding window, transformers 5.24's `generate`
    # disagrees with its own forward pass from the first token on (its sliding cache), the forward is the
    # model's definition.
    for rid, ids in prompts.items():
        tokens = list(ids)
        with torch.no_grad():
            for _ in range(12):
                tokens.append(int(reference(torch.tensor([tokens])).logits[0, -1].argmax()))
        assert ours[rid]["tokens"] == tokens[len(ids) :], rid
