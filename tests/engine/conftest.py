"""Checkpoints for engine tests: a tiny random Qwen2 (QKV bias, tied embeddings, GQA) and the real
SmolLM2-135M-Instruct demo model (Llama architecture), both read from local directories."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from qwen_triton.models.checkpoint import ensure_demo_model

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model(REPO / "models" / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, demo_model) -> Path:
    """Random Qwen2 weights, initialised wide enough that greedy choices are not near-ties."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=1e6,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = Qwen2ForCausalLM(config).float()
    out = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (demo_model / name).exists():
            shutil.copy(demo_model / name, out / name)
    return out
