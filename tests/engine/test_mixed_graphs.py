"""Mixed steps (prompt chunks beside decode rows) replayed through captured CUDA graphs must give the
tokens of the eager path, with prefix-cache hits, chunked prompts and padding to the captured size."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy, make_engine, run_all
from transformers import AutoTokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

SYSTEM = "You are a careful assistant. Answer briefly and precisely. " * 4
QUESTIONS = ["What is two plus two?", "Name a color.", "Why is the sky blue?", "Count to five.", "Say hi."]


def tokens_of(engine, prompts):
    results = run_all(engine, {rid: (ids, greedy(24, ignore_eos=True)) for rid, ids in prompts.items()})
    return {rid: r["tokens"] for rid, r in results.items()}


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_mixed_graphs_keep_the_eager_tokens(tiny_qwen2, prefix_caching):
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    prompts = {f"q{i}": tok.encode(SYSTEM + q) for i, q in enumerate(QUESTIONS)}
    # 128 tokens a step, so the first step leaves prompts waiting, then a cap of 8 prompt tokens a step
    # while others decode: nearly every later step mixes chunks and decode rows.
    settings = dict(
        device="cuda",
        dtype="float16",
        cuda_graphs=True,
        max_num_batched_tokens=128,
        max_prefill_tokens_while_decoding=8,
        enable_prefix_caching=prefix_caching,
    )
    eager = tokens_of(make_engine(tiny_qwen2, mixed_graph_max_tokens=0, **settings), prompts)
    engine = make_engine(tiny_qwen2, mixed_graph_max_tokens=128, **settings)
    assert [g[2].tokens for g in engine.runner.mixed_graphs] == [64, 128]
    replays = []
    replay = engine.runner._replay_mixed
    engine.runner._replay_mixed = lambda step, ids: replays.append(len(step.positions)) or replay(step, ids)
    assert tokens_of(engine, prompts) == eager
    assert len(replays) > 5 and max(replays) > 8, "the run must replay mixed graphs, padded and not"
