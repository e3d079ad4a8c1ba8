"""`qwen-engine bench`: the engine's offline throughput beside the machine's bound and Hugging Face
`generate` on the same checkpoint, prompts and lengths, measured in the same run.

The bound: a step reads every weight once for the whole batch and does 2 FLOPs per weight per token, so
output tok/s <= min(batch x bandwidth / weight bytes, matmul rate / (2 x weights)), both rates measured
here (a large tensor copy, a large matmul).
"""

from __future__ import annotations

import statistics
import time

import torch

from qwen_triton.engine.llm_engine import LLMEngine
from qwen_triton.engine.sampling_params import SamplingParams


def measured_rates(device: torch.device) -> tuple[float, float]:
    """(bytes/s of a device-to-device copy, counting read + write; FLOP/s of a float32 matmul)."""
    src = torch.randn(64 * 2**20 // 4 * 4, device=device)  # 256 MiB of float32
    dst = torch.empty_like(src)
    a = torch.randn(1024, 1024, device=device)
    copy_s = _best_of(lambda: dst.copy_(src), device)
    matmul_s = _best_of(lambda: a @ a, device)
    return 2 * src.numel() * 4 / copy_s, 2 * 1024**3 / matmul_s


def _best_of(fn, device: torch.device, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def prompts(vocab: int, n: int, length: int) -> list[list[int]]:
    """Distinct pseudo-random prompts: no prefix-cache hits flatter the numbers."""
    return [[(7919 * (i + 1) * (j + 3)) % vocab for j in range(length)] for i in range(n)]


def engine_throughput(engine: LLMEngine, batch: list[list[int]], max_tokens: int) -> dict:
    engine.add_request("warmup", batch[0][:16], SamplingParams(max_tokens=4, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    for i, ids in enumerate(batch):
        engine.add_request(f"b{i}", ids, params)
    first: dict[str, float] = {}
    generated = 0
    while engine.has_unfinished():
        for out in engine.step():
            generated += len(out.token_ids)
            first.setdefault(out.request_id, time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    ttft = sorted(first.values())
    return {"tok_s": generated / elapsed, "ttft_p50": statistics.median(ttft), "ttft_max": ttft[-1]}


def hf_throughput(
    model_dir, dtype: torch.dtype, device: torch.device, batch: list[list[int]], max_tokens: int
) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    ids = torch.tensor(batch, device=device)  # equal lengths: no padding needed
    kwargs = dict(do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids[:1, :16], max_new_tokens=4, min_new_tokens=4, **kwargs)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(batch) * max_tokens / (time.perf_counter() - start)


def run(
    engine: LLMEngine, model_dir, num_requests: int, prompt_tokens: int, max_tokens: int, baseline: bool = True
) -> str:
    """Markdown table: engine, HF generate, the bound."""
    batch = prompts(engine.hf_config.vocab_size, num_requests, prompt_tokens)
    ours = engine_throughput(engine, batch, max_tokens)
    hf = hf_throughput(model_dir, engine.dtype, engine.device, batch, max_tokens) if baseline else float("nan")
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    elements = sum(p.numel() for p in engine.model.parameters())
    bandwidth, flops = measured_rates(engine.device)
    concurrent = min(num_requests, engine.config.max_num_seqs)
    bound = min(concurrent * bandwidth / weights, flops / (2 * elements))
    return (
        "| device | dtype | requests | prompt | output | engine tok/s | HF generate tok/s | bound tok/s | "
        "engine % of bound | TTFT p50 / max ms |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {engine.device} | {str(engine.dtype).removeprefix('torch.')} | {num_requests} | {prompt_tokens} | "
        f"{max_tokens} | {ours['tok_s']:.1f} | {hf:.1f} | {bound:.0f} | {100 * ours['tok_s'] / bound:.0f} % | "
        f"{1e3 * ours['ttft_p50']:.0f} / {1e3 * ours['ttft_max']:.0f} |\n"
        f"(bound = min(batch x {bandwidth / 1e9:.1f} GB/s copy / {weights / 1e9:.2f} GB of weights, "
        f"{flops / 1e12:.2f} TFLOP/s matmul / 2 FLOPs per weight), both measured in this run"
    )
