"""The GPU benchmark of issue 6: engine decode and throughput next to the hardware bound and HF eager.

Runs on one CUDA GPU (the device machine), random weights at real Qwen2.5 shapes. In one run:
  1. the two ceilings: device-to-device copy bandwidth, bf16 matmul rate;
  2. a correctness gate: tiny Qwen2 on CUDA, greedy tokens of the engine (CUDA graphs + paged kernel)
     equal to transformers, and CUDA-graph decode equal to eager decode; where a token differs, HF's
     logit gap between its pick and the engine's (a near tie or a wrong result);
  3. per shape: batch-1 decode tok/s per weight format beside its bandwidth bound and HF eager bf16;
     throughput at 16/64/256 concurrent requests (512 prompt, 256 generated): output tok/s, TTFT and
     inter-token latency p50/p99 beside the bound that counts weights + KV bytes per step; TTFT of one
     512-token prompt; weight and KV memory.
Prints markdown tables last and writes JSON.

  python benchmarks/gpu_bench.py --tokenizer DIR --shapes 0.5b,7b --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))

from qwen_triton.engine.config import EngineConfig  # noqa: E402
from qwen_triton.engine.llm_engine import LLMEngine  # noqa: E402
from qwen_triton.engine.sampling_params import SamplingParams  # noqa: E402

# Public Qwen2.5 config.json values (hidden, intermediate, layers, heads, kv heads, vocab, tied).
SHAPES = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "32b": dict(
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "72b": dict(
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
FORMATS = ["none", "int8", "int4", "fp8", "layered"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def log(*parts) -> None:
    print(*parts, flush=True)


def cuda_time(fn, repeat: int = 20) -> float:
    """Median seconds of fn() by CUDA events, after a warm-up."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def ceilings() -> dict:
    n = 2 * 2**30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_s = cuda_time(lambda: dst.copy_(src))
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_s = cuda_time(lambda: a @ b)
    del a, b
    torch.cuda.empty_cache()
    return {"copy_bytes_per_s": 2 * n / copy_s, "bf16_flops_per_s": 2 * 8192**3 / mm_s}


def linear_elements(shape: dict) -> int:
    """Weights a token multiplies through (every layer's linears and the LM head): 2 flops each."""
    h, inter, heads, kv = (
        shape[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    )
    kv_dim = h // heads * kv
    per_layer = h * (h + 2 * kv_dim) + h * h + 3 * h * inter
    return shape["num_hidden_layers"] * per_layer + shape["vocab_size"] * h


def make_checkpoint(shape: str, tokenizer_dir: Path, root: Path) -> Path:
    from transformers import Qwen2Config

    out = root / f"qwen2.5-{shape}-random"
    out.mkdir(parents=True, exist_ok=True)
    Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
    ).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


def engine_for(checkpoint: Path, quantization: str = "none", **extra) -> LLMEngine:
    settings = dict(
        model=str(checkpoint),
        load_format="random",
        dtype="bfloat16",
        device="cuda",
        quantization=quantization,
        max_model_len=2048,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        kv_cache_bytes=24 * 2**30,
        enable_prefix_caching=False,
    )
    settings.update(extra)
    return LLMEngine(EngineConfig(**settings))


def release() -> None:
    """Return the GPU memory of engines the caller has already dropped (`del engine` first)."""
    gc.collect()
    torch.cuda.empty_cache()


def bytes_read_per_step(engine: LLMEngine) -> int:
    """Weights a decode step reads: every parameter/buffer but the embedding table (one row per token),
    which is read whole only when it doubles as the tied LM head."""
    from qwen_triton.quantization.quantize import model_bytes

    total = model_bytes(engine.model)
    if not engine.model.tie_word_embeddings:
        emb = engine.model.embed_tokens.weight
        total -= emb.numel() * emb.element_size()
    return total


def prompt_ids(vocab: int, n: int, length: int) -> list[list[int]]:
    return [[(7919 * (i + 1) * (j + 3) + i) % min(vocab, 49152) for j in range(length)] for i in range(n)]


def run_requests(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> dict:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", ids, params)
    first, last, gaps, generated = {}, {}, [], 0
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            generated += len(out.token_ids)
            if out.request_id in last:
                gaps.append(now - last[out.request_id])
            else:
                first[out.request_id] = now - start
            last[out.request_id] = now
    elapsed = time.perf_counter() - start
    return {
        "elapsed_s": elapsed,
        "output_tokens": generated,
        "output_tok_per_s": generated / elapsed,
        "ttft_s": sorted(first.values()),
        "itl_s": sorted(gaps),
    }


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def decode_batch1(engine: LLMEngine, max_tokens: int = 256) -> float:
    """Decode tok/s of one sequence: time from its first token to its last."""
    run_requests(engine, prompt_ids(engine.hf_config.vocab_size, 1, 16), 8)  # warm-up
    result = run_requests(engine, prompt_ids(engine.hf_config.vocab_size, 1, 128), max_tokens)
    decode_time = result["elapsed_s"] - result["ttft_s"][0]
    return (result["output_tokens"] - 1) / decode_time


# The seed README compared "native", "8-bit" and "optimized" loading by latency, QPS and memory; these
# are the formats that fill those rows, measured.
SEED_ROWS = {
    "none": "native (bf16)",
    "int8": "8-bit (int8 weights)",
    "layered": "optimized (layered: MLP int4, attention int8)",
}
SEED_CONCURRENCY = 16


def service_figures(engine: LLMEngine, decode_tok_s: float) -> dict:
    """One 512+256 request alone (its latency), then 16 at once (queries per second), and the memory
    that load needs: the weights plus the KV of 16 sequences of 768 tokens."""
    vocab = engine.hf_config.vocab_size
    alone = run_requests(engine, prompt_ids(vocab, 1, 512), 256)
    load = run_requests(engine, prompt_ids(vocab, SEED_CONCURRENCY, 512), 256)
    kv_bytes = SEED_CONCURRENCY * 768 * engine.kv_cache.spec.bytes_per_token()
    return {
        "request_latency_s": alone["elapsed_s"],
        "ttft_512_s": alone["ttft_s"][0],
        "ms_per_token": 1e3 / decode_tok_s,
        "qps": SEED_CONCURRENCY / load["elapsed_s"],
        "memory_bytes": bytes_read_per_step(engine) + kv_bytes,
    }


def hf_eager(checkpoint: Path, batch: int, new_tokens: int = 128) -> float:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="eager").eval()
    ids = torch.tensor(prompt_ids(config.vocab_size, batch, 128), device="cuda")
    kwargs = dict(do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0)
    model.generate(ids[:, :16], **{**kwargs, "min_new_tokens": 4, "max_new_tokens": 4})
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    tok_s = batch * new_tokens / (time.perf_counter() - start)
    del model
    release()
    return tok_s


def correctness_gate(tokenizer_dir: Path, root: Path) -> dict:
    """Tiny Qwen2 on CUDA: engine greedy == transformers greedy (fp32); graphs == eager (bf16)."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tiny = root / "tiny-qwen2"
    Qwen2Config(
        vocab_size=49152,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.2,
    ).save_pretrained(tiny)
    Qwen2ForCausalLM(Qwen2Config.from_pretrained(tiny)).save_pretrained(tiny)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, tiny / name)
    prompts = prompt_ids(49152, 6, 40)
    reference = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).cuda()
    expected = [
        reference.generate(torch.tensor([p], device="cuda"), max_new_tokens=24, do_sample=False, pad_token_id=0)[
            0, 40:
        ].tolist()
        for p in prompts
    ]
    results = {}
    for name, settings in {
        "fp32_graphs": dict(dtype="float32"),
        "fp32_eager": dict(dtype="float32", cuda_graphs=False),
        "bf16_graphs": dict(dtype="bfloat16"),
        "bf16_eager": dict(dtype="bfloat16", cuda_graphs=False),
    }.items():
        engine = LLMEngine(
            EngineConfig(
                model=str(tiny), device="cuda", max_model_len=512, max_num_seqs=16, kv_cache_bytes=2**28, **settings
            )
        )
        out = {}
        for i, p in enumerate(prompts):
            engine.add_request(f"p{i}", p, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
        while engine.has_unfinished():
            for o in engine.step():
                out.setdefault(o.request_id, []).extend(o.token_ids)
        results[name] = [out[f"p{i}"] for i in range(len(prompts))]
        results[name + "_graphs_captured"] = len(engine.runner.graphs)
        del engine
        release()
    gate = {
        "fp32_graphs_eq_hf": results["fp32_graphs"] == expected,
        "fp32_eager_eq_hf": results["fp32_eager"] == expected,
        "bf16_graphs_eq_eager": results["bf16_graphs"] == results["bf16_eager"],
        "graphs_captured": results["fp32_graphs_graphs_captured"],
        "fp32_graphs_differences": first_differences(reference, prompts, expected, results["fp32_graphs"]),
        "fp32_eager_differences": first_differences(reference, prompts, expected, results["fp32_eager"]),
    }
    del reference
    release()
    log("correctness gate:", gate)
    return gate


def first_differences(reference, prompts, expected, got) -> list[dict]:
    """Where the engine's greedy tokens leave HF's: per differing prompt, the first such token and HF's
    logit gap between its own pick and the engine's there. A gap near float32 rounding is a near tie
    (an fp32 kernel's summation order decides it); a large one is a wrong result."""
    differences = []
    for i, (want, have) in enumerate(zip(expected, got)):
        if want == have:
            continue
        at = next((j for j, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
        if at == min(len(want), len(have)):
            differences.append(dict(prompt=i, token=at, hf_logit_gap=None))  # lengths differ
            continue
        with torch.no_grad():
            logits = reference(torch.tensor([prompts[i] + want[:at]], device="cuda")).logits[0, -1].double()
        gap = (logits[want[at]] - logits[have[at]]).item()
        differences.append(dict(prompt=i, token=at, hf_logit=logits[want[at]].item(), hf_logit_gap=gap))
    return differences


def bench_shape(
    shape: str,
    checkpoint: Path,
    bounds: dict,
    formats: list[str],
    concurrency: list[int],
    prefill_cap: int = 0,
    throughput_format: str = "none",
    mixed_graph_max_tokens: int = EngineConfig.mixed_graph_max_tokens,
) -> dict:
    bw = bounds["copy_bytes_per_s"]
    result = {"shape": shape, "decode": {}, "throughput": {}}
    for fmt in formats:
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            engine = engine_for(checkpoint, fmt, max_num_seqs=SEED_CONCURRENCY)
        except Exception as error:  # a format the GPU cannot do is reported, not fatal
            result["decode"][fmt] = {"error": repr(error)}
            log(shape, fmt, "failed:", repr(error))
            continue
        # Load time counts the streamed load, the KV allocation and the CUDA-graph capture; the peak is
        # the device's high-water mark over all of it, against the weights plus the KV pool it keeps.
        load_s = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated()
        weight_bytes = bytes_read_per_step(engine)
        kv_pool = engine.kv_cache.spec.bytes_per_block() * engine.kv_cache.num_blocks
        tok_s = decode_batch1(engine)
        bound = bw / weight_bytes
        result["decode"][fmt] = {
            "tok_per_s": tok_s,
            "bound_tok_per_s": bound,
            "fraction": tok_s / bound,
            "weight_bytes": weight_bytes,
            "load_s": load_s,
            "peak_bytes": peak,
            "peak_over_weights_and_kv": peak / (weight_bytes + kv_pool),
        }
        log(f"{shape} {fmt}: {tok_s:.1f} tok/s, bound {bound:.1f} ({100 * tok_s / bound:.0f} %), load {load_s:.1f} s")
        if fmt in SEED_ROWS:
            result["decode"][fmt]["service"] = service_figures(engine, tok_s)
            log(shape, fmt, result["decode"][fmt]["service"])
        del engine
        release()
    if not concurrency:
        return result
    engine = engine_for(
        checkpoint,
        throughput_format,
        max_prefill_tokens_while_decoding=prefill_cap,
        mixed_graph_max_tokens=mixed_graph_max_tokens,
    )
    result["max_prefill_tokens_while_decoding"] = prefill_cap
    result["mixed_graph_max_tokens"] = mixed_graph_max_tokens
    result["throughput_format"] = throughput_format
    weight_bytes = bytes_read_per_step(engine)
    kv_token = engine.kv_cache.spec.bytes_per_token()
    result["weight_bytes"] = weight_bytes
    result["kv_bytes_per_token"] = kv_token
    result["kv_pool_bytes"] = engine.kv_cache.spec.bytes_per_block() * engine.kv_cache.num_blocks
    one = run_requests(engine, prompt_ids(engine.hf_config.vocab_size, 1, 512), 1)
    one = run_requests(engine, prompt_ids(engine.hf_config.vocab_size, 1, 512), 1)
    result["ttft_512_s"] = one["ttft_s"][0]
    # 2 flops per weight element per token: the element count from the bf16 size of the same model
    flops_per_token = 2 * linear_elements(SHAPES[shape])
    for n in concurrency:
        r = run_requests(engine, prompt_ids(engine.hf_config.vocab_size, n, 512), 256)
        # The run's floor: prefill of n x 512 tokens at the matmul rate, then 255 decode steps, each
        # reading the weights once plus every sequence's KV (mean context 512 + 128), or computing,
        # whichever is slower.
        prefill_s = n * 512 * flops_per_token / bounds["bf16_flops_per_s"]
        step_bytes = weight_bytes + n * (512 + 128) * kv_token
        step_s = max(step_bytes / bw, n * flops_per_token / bounds["bf16_flops_per_s"])
        bound = n * 256 / (prefill_s + 255 * step_s)
        result["throughput"][n] = {
            "output_tok_per_s": r["output_tok_per_s"],
            "bound_tok_per_s": bound,
            "fraction": r["output_tok_per_s"] / bound,
            "ttft_p50_ms": 1e3 * pct(r["ttft_s"], 0.5),
            "ttft_p99_ms": 1e3 * pct(r["ttft_s"], 0.99),
            "itl_p50_ms": 1e3 * pct(r["itl_s"], 0.5),
            "itl_p99_ms": 1e3 * pct(r["itl_s"], 0.99),
            "step_bound_ms": 1e3 * step_s,
        }
        log(shape, n, result["throughput"][n])
    del engine
    release()
    result["hf_eager_bf16_batch1_tok_per_s"] = hf_eager(checkpoint, 1)
    log(shape, "HF eager batch 1:", result["hf_eager_bf16_batch1_tok_per_s"])
    return result


def print_tables(report: dict) -> None:
    c = report["ceilings"]
    log(
        f"\nDevice: {report['device']}; copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
        f"bf16 matmul {c['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s"
    )
    log(
        "\n| shape | format | weights GB | decode tok/s (batch 1) | bound tok/s | % of bound | HF eager bf16 | "
        "load s | peak GB (x weights + KV) |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    for s in report["shapes"]:
        eager = s.get("hf_eager_bf16_batch1_tok_per_s")
        for fmt, d in s["decode"].items():
            if "error" in d:
                log(f"| {s['shape']} | {fmt} | - | failed: {d['error'][:100]} | | | | | |")
                continue
            log(
                f"| {s['shape']} | {fmt} | {d['weight_bytes'] / 1e9:.2f} | {d['tok_per_s']:.1f} | "
                f"{d['bound_tok_per_s']:.1f} | {100 * d['fraction']:.0f} % | "
                f"{'-' if eager is None else f'{eager:.1f}'} | {d['load_s']:.1f} | "
                f"{d['peak_bytes'] / 1e9:.1f} ({d['peak_over_weights_and_kv']:.3f}x) |"
            )
    log(
        "\n| shape | setup | latency of one 512+256 request s | ms/token (batch 1) | TTFT 512 ms | "
        f"QPS at {SEED_CONCURRENCY} concurrent | memory GB (weights + KV of {SEED_CONCURRENCY} x 768 tokens) |"
    )
    log("|---|---|---|---|---|---|---|")
    for s in report["shapes"]:
        for fmt, label in SEED_ROWS.items():
            if "error" in s["decode"].get(fmt, {}):  # e.g. 72B in bf16: refused before any allocation
                log(f"| {s['shape']} | {label} | does not fit one GPU: {s['decode'][fmt]['error'][:100]} | | | | |")
                continue
            f = s["decode"].get(fmt, {}).get("service")
            if f:
                log(
                    f"| {s['shape']} | {label} | {f['request_latency_s']:.2f} | {f['ms_per_token']:.2f} | "
                    f"{1e3 * f['ttft_512_s']:.1f} | {f['qps']:.2f} | {f['memory_bytes'] / 1e9:.1f} |"
                )
    log("\n| shape | concurrent | output tok/s | bound tok/s | % | TTFT p50/p99 ms | ITL p50/p99 ms | step bound ms |")
    log("|---|---|---|---|---|---|---|---|")
    for s in report["shapes"]:
        for n, t in s["throughput"].items():
            log(
                f"| {s['shape']} | {n} | {t['output_tok_per_s']:.0f} | {t['bound_tok_per_s']:.0f} | "
                f"{100 * t['fraction']:.0f} % | {t['ttft_p50_ms']:.0f} / {t['ttft_p99_ms']:.0f} | "
                f"{t['itl_p50_ms']:.1f} / {t['itl_p99_ms']:.1f} | {t['step_bound_ms']:.1f} |"
            )
        if "ttft_512_s" not in s:
            continue
        log(
            f"| {s['shape']} | TTFT of one 512-token prompt: {1e3 * s['ttft_512_s']:.1f} ms | weights "
            f"{s['weight_bytes'] / 1e9:.2f} GB | KV {s['kv_bytes_per_token'] / 1e3:.1f} kB/token | | | | |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory with tokenizer.json")
    parser.add_argument("--shapes", default="0.5b,7b")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--concurrency", default="16,64,256")
    parser.add_argument("--skip-gate", action="store_true")
    parser.add_argument(
        "--prefill-cap", type=int, default=0, help="max_prefill_tokens_while_decoding of the concurrency runs"
    )
    parser.add_argument(
        "--mixed-graph-max-tokens",
        type=int,
        default=EngineConfig.mixed_graph_max_tokens,
        help="mixed_graph_max_tokens of the concurrency runs (0: mixed steps eager)",
    )
    parser.add_argument(
        "--throughput-format", default="none", help="weight format of the concurrency runs (72b: int8 or int4)"
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_bench.json"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qwen-bench-"))
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "ceilings": ceilings(),
        "shapes": [],
    }
    log("ceilings:", report["ceilings"])
    if not args.skip_gate:
        report["gate"] = correctness_gate(args.tokenizer, root)
        args.out.write_text(json.dumps(report, indent=1))
    for shape in filter(None, args.shapes.split(",")):  # --shapes '' runs the gate alone
        checkpoint = make_checkpoint(shape, args.tokenizer, root)
        report["shapes"].append(
            bench_shape(
                shape,
                checkpoint,
                report["ceilings"],
                args.formats.split(","),
                [int(n) for n in filter(None, args.concurrency.split(","))],
                args.prefill_cap,
                args.throughput_format,
                args.mixed_graph_max_tokens,
            )
        )
        args.out.write_text(json.dumps(report, indent=1))
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
