"""Load time and peak device memory of the streamed loader, per weight format, at a Qwen2.5 shape (GPU).

Random weights (load_format=random): each tensor is generated on the device a block of rows at a time and
quantized as it arrives, so the device never holds the float model. For each format the table shows the
load time, the peak of device memory allocated during the load over the final weights, and the goal
ratio: peak over (final weights + the KV budget the engine would then take), goal <= 1.15. Beside it in
the same run: the bound (the bf16 source bytes written once at the measured device copy rate) and the
peer, measured: the whole model loaded in bf16, then quantized in place by quantize_model (the path this
loader replaced), with its peak or the out-of-memory it ends in, for the first quantized format.

  python benchmarks/load_bench.py --shape 72b --formats int8,int4,fp8,layered
  python benchmarks/load_bench.py --shape 32b --formats none
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from qwen_triton.models.loader import load_model  # noqa: E402
from qwen_triton.models.memory import tensor_bytes  # noqa: E402

GB = 1e9
from gpu_bench import SHAPES  # noqa: E402  (the Qwen2.5 shapes, one table for every benchmark)

GOAL_RATIO = 1.15
KV_MEMORY_FRACTION = 0.9  # EngineConfig's default: the share of free memory after the weights for the KV pool
ACTIVATION_ROOM = 2 * 2**30  # what the engine keeps back from the KV pool (llm_engine._blocks_for_budget)


def hf_config(shape: str):
    from transformers import Qwen2Config

    return Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, **SHAPES[shape])


def copy_rate() -> float:
    """Device copy bytes per second (read + write), median of 10 copies of 2 GiB."""
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2 * 2**30 / sorted(times)[len(times) // 2]


def bf16_bytes(config) -> int:
    with torch.device("meta"):
        from qwen_triton.models.qwen2 import DecoderModel

        return tensor_bytes(DecoderModel(config, 16).to(torch.bfloat16))


def load_once(config, quantization: str, max_model_len: int) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    model = load_model(
        config,
        None,
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        max_model_len=max_model_len,
        load_format="random",
        quantization=quantization,
    )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before
    weights = tensor_bytes(model)
    free, total = torch.cuda.mem_get_info()
    kv_budget = max(0, int(free * KV_MEMORY_FRACTION) - ACTIVATION_ROOM)
    result = {
        "format": quantization,
        "load_s": seconds,
        "weights_gb": weights / GB,
        "peak_gb": peak / GB,
        "peak_reserved_gb": (torch.cuda.max_memory_reserved() - before) / GB,
        "peak_over_weights": peak / weights,
        "kv_budget_gb": kv_budget / GB,
        "goal_ratio": peak / (weights + kv_budget),
        "device_total_gb": total / GB,
    }
    del model
    return result


def load_then_quantize(config, quantization: str, max_model_len: int) -> dict:
    """The peer: the whole model in bf16 on the device first, then quantize_model swapping each linear (the
    path this loader replaced). Its peak, or the allocation it died at."""
    from qwen_triton.quantization.quantize import quantize_model

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    model = None
    try:
        model = load_model(
            config,
            None,
            device=torch.device("cuda"),
            dtype=torch.bfloat16,
            max_model_len=max_model_len,
            load_format="random",
        )
        quantize_model(model, quantization)
        torch.cuda.synchronize()
        outcome = "ok"
    except torch.cuda.OutOfMemoryError:
        outcome = "out of memory"
    except ValueError as refused:  # the memory plan refused the bf16 model up front
        outcome = f"refused: {refused}"[:160]
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {"format": quantization, "outcome": outcome, "load_s": seconds, "peak_gb": peak / GB}


def print_table(shape: str, rows: list[dict], rate: float, model_bf16: int, device_total: int) -> None:
    device = torch.cuda.get_device_name()
    print(f"\n## Streamed load, Qwen2.5-{shape.upper()} shape, random weights, {device} ({device_total / GB:.0f} GB)")
    print(f"device copy rate {rate / GB:.0f} GB/s; bf16 model {model_bf16 / GB:.1f} GB")
    print(
        "| format | load s | bound s (bf16 source bytes at copy rate) | final weights GB | peak GB | peak / weights "
        "| KV budget GB | peak / (weights + KV) (goal <= 1.15) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        goal = "ok" if r["goal_ratio"] <= GOAL_RATIO else "MISSED"
        print(
            f"| {r['format']} | {r['load_s']:.1f} | {model_bf16 / rate:.3f} | {r['weights_gb']:.1f} "
            f"| {r['peak_gb']:.1f} | {r['peak_over_weights']:.3f} | {r['kv_budget_gb']:.1f} "
            f"| {r['goal_ratio']:.3f} {goal} |"
        )


def print_peer(peer: dict) -> None:
    print(
        f"| peer: bf16 load, then quantize_model ({peer['format']}) | {peer['load_s']:.1f} | - | - "
        f"| {peer['peak_gb']:.1f} ({peer['outcome']}) | - | - | - |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="72b", choices=sorted(SHAPES))
    parser.add_argument("--formats", default="int8,int4,fp8,layered", help="comma-separated quantization settings")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--no-peer", action="store_true", help="skip the load-then-quantize peer")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("load_bench needs a CUDA device", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = hf_config(args.shape)
    rate = copy_rate()
    model_bf16 = bf16_bytes(config)
    device_total = torch.cuda.mem_get_info()[1]
    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    rows = [load_once(config, fmt, args.max_model_len) for fmt in formats]
    quantized = [fmt for fmt in formats if fmt != "none"]
    print_table(args.shape, rows, rate, model_bf16, device_total)
    report = {"shape": args.shape, "device": torch.cuda.get_device_name(), "copy_rate": rate, "rows": rows}
    write_report(args.out, report)
    if quantized and not args.no_peer:  # last: the peer ends in an out-of-memory where bf16 does not fit
        report["peer"] = load_then_quantize(config, quantized[0], args.max_model_len)
        print_peer(report["peer"])
        write_report(args.out, report)
    return 0


def write_report(path: Path | None, report: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
