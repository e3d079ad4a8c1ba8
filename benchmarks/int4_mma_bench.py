"""int4 linears at decode rows on the GPU: the tensor-core kernel (kernels/int4_mma.py) beside the
kernels it would replace (quant_matmul's int4 GEMV / GEMM) and the copy bound, per Qwen2.5 layer shape.

    python3 benchmarks/int4_mma_bench.py --out int4_mma.json [--rows 1,8] [--shapes qkv,gate_up72]

Per shape and row count: the bytes' time at the measured copy bandwidth (weights + scales), the
replaced kernels, int4_mma at its default settings and the best of a sweep of tile shapes (BLOCK_N,
warps), K splits and PREFETCH, each the best of 5 replays of a CUDA graph of 50 calls (one weight, so L2 holds
part of the small layers: read small-layer figures as upper bounds on speed); the relative error of
int4_mma against the replaced kernel's output. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))

from qwen_triton.kernels import int4_mma, quant_matmul  # noqa: E402

SHAPES = {
    "qkv05": (1152, 896),
    "gate_up05": (9728, 896),
    "down05": (896, 4864),
    "qkv": (4608, 3584),
    "o": (3584, 3584),
    "gate_up": (37888, 3584),
    "down": (3584, 18944),
    "qkv72": (10240, 8192),
    "o72": (8192, 8192),
    "gate_up72": (59136, 8192),
    "down72": (8192, 29568),
}
TILES = ((64, 2), (128, 2), (128, 4), (256, 4), (256, 8))  # (BLOCK_N, num_warps)
SPLITS = (None, 2, 4, 8, 16, 32)  # None: the kernel's own choice
GROUP = 128


def replay_us(fn, calls=50, repeats=5):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1000 / calls)
    return best


def copy_bandwidth():
    src = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / replay_us(lambda: dst.copy_(src), calls=10) * 1e-6  # bytes per us -> TB/s


def bench_shape(name, out_f, in_f, rows, bandwidth):
    packed = torch.randint(0, 256, (out_f, in_f // 2), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(out_f, in_f // GROUP, device="cuda") * 0.02 + 1e-3).half()
    x = torch.randn(rows, in_f, device="cuda", dtype=torch.bfloat16)
    replaced = "gemv" if quant_matmul.use_gemv(rows, None, "int4", out_f, in_f) else "gemm"
    expected = quant_matmul.int4_linear(x, packed, scales, None, GROUP, path=replaced).float()
    got = quant_matmul.int4_linear(x, packed, scales, None, GROUP, path="mma").float()
    bound = (packed.numel() + scales.numel() * 2) / bandwidth * 1e-6
    row = dict(shape=name, rows=rows, bound_us=bound, replaced_path=replaced)
    row["replaced_us"] = replay_us(lambda: quant_matmul.int4_linear(x, packed, scales, None, GROUP, path=replaced))
    row["mma_us"] = replay_us(lambda: quant_matmul.int4_linear(x, packed, scales, None, GROUP, path="mma"))
    row["rel_error"] = ((got - expected).norm() / expected.norm()).item()
    sweep = {}
    for (block_n, warps), split, prefetch in itertools.product(TILES, SPLITS, (False, True)):
        config = dict(BLOCK_N=block_n, num_warps=warps, PREFETCH=prefetch)
        call = lambda: int4_mma.int4_mma_linear(x, packed, scales, None, GROUP, config=config, split_k=split)  # noqa: E731
        sweep[f"BLOCK_N={block_n} warps={warps} split={split} prefetch={prefetch}"] = replay_us(call)
    row["best"], row["best_us"] = min(sweep.items(), key=lambda item: item[1])
    row["sweep"] = sweep
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, copy {bandwidth:.2f} TB/s")
    print("| layer | rows | bound us | replaced (path) us | int4_mma us | % of bound | best of sweep us | rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.shapes.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            row = bench_shape(name, *SHAPES[name], rows, bandwidth)
            results.append(row)
            print(
                f"| {name} {SHAPES[name][0]}x{SHAPES[name][1]} | {rows} | {row['bound_us']:.1f} | "
                f"{row['replaced_us']:.1f} ({row['replaced_path']}) | {row['mma_us']:.1f} | "
                f"{100 * row['bound_us'] / row['mma_us']:.0f} % | {row['best_us']:.1f} ({row['best']}) | "
                f"{row['rel_error']:.1e} |",
                flush=True,
            )
            Path(args.out).write_text(json.dumps(dict(copy_tb_s=bandwidth, rows=results), indent=1))


if __name__ == "__main__":
    main()
