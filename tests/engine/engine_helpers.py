"""Helpers shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.llm_engine import LLMEngine
from qwen_triton.engine.sampling_params import SamplingParams


def make_engine(model: Path, **overrides) -> LLMEngine:
    settings = dict(
        model=str(model), dtype="float32", device="cpu", max_model_len=1024, max_num_seqs=8, cuda_graphs=False
    )
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def run_all(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, dict]:
    """Submit all requests at once, step until done; per request: tokens, text, finish reason."""
    for request_id, (ids, params) in requests.items():
        engine.add_request(request_id, ids, params)
    results = {rid: {"tokens": [], "text": "", "reason": None} for rid in requests}
    while engine.has_unfinished():
        for out in engine.step():
            results[out.request_id]["tokens"] += out.token_ids
            results[out.request_id]["text"] += out.text
            if out.finished:
                results[out.request_id]["reason"] = out.finish_reason
    return results


def greedy(max_tokens: int, **extra) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **extra)
