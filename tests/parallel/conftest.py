"""Tiny random Qwen2 checkpoints for the tensor-parallel tests: one whose heads, KV heads, MLP rows and
vocabulary all divide by 2, and one whose 3 KV heads do not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from qwen_triton.models.checkpoint import ensure_demo_model

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def write_tiny_qwen2(out: Path, tokenizer_dir: Path, num_heads: int, num_kv_heads: int) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=49152,
        hidden_size=16 * num_heads,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=1e6,
        initializer_range=0.2,  # wide enough that greedy choices are not near-ties
        bos_token_id=1,
        eos_token_id=2,
    )
    Qwen2ForCausalLM(config).float().save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return ensure_demo_model(REPO / "models" / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_qwen2_gqa(tmp_path_factory, tokenizer_dir) -> Path:
    """4 heads, 2 KV heads, hidden 64, QKV bias (Qwen2), tied embeddings."""
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2-gqa"), tokenizer_dir, 4, 2)


@pytest.fixture(scope="session")
def tiny_qwen2_odd_kv(tmp_path_factory, tokenizer_dir) -> Path:
    """6 heads, 3 KV heads: the KV heads do not divide by 2."""
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2-odd-kv"), tokenizer_dir, 6, 3)
