"""The demo model's tokenizer, shared by the structured-output tests (compiling needs a real vocabulary)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_triton.models.checkpoint import ensure_demo_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model(REPO / "models" / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


@pytest.fixture(scope="session")
def compiler(demo_tokenizer):
    from qwen_triton.structured.compiler import GrammarCompiler

    return GrammarCompiler(demo_tokenizer, vocab_size=len(demo_tokenizer), stop_token_ids=[demo_tokenizer.eos_token_id])
