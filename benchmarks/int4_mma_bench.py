"""int4 linears at decode rows on the GPU: the tensor-core kernel (kernels/int4_mma.py) beside the
kernels it would replace (quant_matmul's int4 GEMV / GEMM) and the copy bound, per Qwen2.5 layer shape.

    python3 benchmarks/int4_mma_bench.py --out int4_mma.json [--rows 1,8] [--shapes qkv,gate_up72]

Per shape and row count: the bytes' time at the measured copy bandwidth (weights, scales, zero points),
the replaced kernels (row-major weight), int4_mma at its default settings on the row-major and on
int4_layout's tiled layout (what the model holds on CUDA), the GEMM on the tiled layout (what more rows
take), and the best of a sweep of tile shapes (BLOCK_N, warps), K splits and groups a step on the tiled
layout. Each time is the best of 5
replays of a CUDA graph cycling through enough distinct random layers (STREAMED_BYTES) that none is in
L2 when its call comes, as in a model; relative errors against the replaced kernel. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))

from qwen_triton.kernels import int4_layout, int4_mma, quant_matmul  # noqa: E402

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
TILES = ((64, 2), (128, 4))  # (BLOCK_N, num_warps)
SPLITS = (None, 1, 2, 4, 8, 16)  # None: the kernel's own choice
STEP_GROUPS = (2, 4)
GROUP = 128
# Distinct weights a timed graph cycles through, at least this many bytes in all: a model's layers are
# never in L2 (50 MB on the H200) when their turn comes, so neither may the benchmark's be.
STREAMED_BYTES = 256 << 20


def replay_us(fn, calls=50, repeats=5):
    """Microseconds a call of fn(i) (i = the call's index in a CUDA graph of ``calls`` calls)."""
    fn(0)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
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
    return 2 * src.numel() / replay_us(lambda i: dst.copy_(src), calls=10) * 1e-6  # bytes per us -> TB/s


def layer_copies(out_f, in_f):
    """Random int4 layers (packed bytes, fp16 scales, uint8 zero points: what GroupwiseLinear holds) of
    one shape, enough of them to stream STREAMED_BYTES."""
    nbytes = out_f * in_f // 2 + out_f * (in_f // GROUP) * 3
    copies = max(2, -(-STREAMED_BYTES // nbytes))
    layers = []
    for _ in range(copies):
        packed = torch.randint(0, 256, (out_f, in_f // 2), dtype=torch.uint8, device="cuda")
        scales = (torch.rand(out_f, in_f // GROUP, device="cuda") * 0.02 + 1e-3).half()
        zeros = torch.randint(0, 16, (out_f, in_f // GROUP), dtype=torch.uint8, device="cuda")
        layers.append((packed, int4_layout.tiled(packed, GROUP), scales, zeros))
    return layers, nbytes


def bench_shape(name, out_f, in_f, rows, bandwidth):
    layers, nbytes = layer_copies(out_f, in_f)
    calls = max(50, len(layers))
    x = torch.randn(rows, in_f, device="cuda", dtype=torch.bfloat16)
    replaced = "gemv" if quant_matmul.use_gemv(rows, None, "int4", out_f, in_f) else "gemm"

    def call(i, tiled=False, **options):
        packed, tiled_bytes, scales, zeros = layers[i % len(layers)]
        weight = tiled_bytes if tiled else packed
        return quant_matmul.int4_linear(x, weight, scales, zeros, GROUP, **options)

    def mma(i, tiled=False, **options):
        packed, tiled_bytes, scales, zeros = layers[i % len(layers)]
        weight = tiled_bytes if tiled else packed
        return int4_mma.int4_mma_linear(x, weight, scales, zeros, GROUP, tiled=tiled, **options)

    expected = call(0, path=replaced).float()
    error = lambda got: ((got.float() - expected).norm() / expected.norm()).item()  # noqa: E731
    row = dict(shape=name, rows=rows, bound_us=nbytes / bandwidth * 1e-6, replaced_path=replaced, copies=len(layers))
    row["replaced_us"] = replay_us(lambda i: call(i, path=replaced), calls)
    row["mma_us"] = replay_us(mma, calls)
    row["tiled_us"] = replay_us(lambda i: mma(i, tiled=True), calls)
    row["gemm_tiled_us"] = replay_us(lambda i: call(i, tiled=True, path="gemm"), calls)
    row["rel_error"], row["rel_error_tiled"] = error(mma(0)), error(mma(0, tiled=True))
    row["rel_error_gemm_tiled"] = error(call(0, tiled=True, path="gemm"))
    sweep = {}
    for (block_n, warps), split, step in itertools.product(TILES, SPLITS, STEP_GROUPS):
        config = dict(BLOCK_N=block_n, num_warps=warps, STEP_GROUPS=step)
        key = f"BLOCK_N={block_n} warps={warps} split={split} step_groups={step}"
        sweep[key] = replay_us(lambda i: mma(i, True, config=config, split_k=split), calls)  # noqa: B023
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
    print(
        "| layer | rows | bound us | replaced (path) us | int4_mma row-major us | int4_mma tiled us | % of bound "
        "| GEMM tiled us | best of sweep us | rel. error (row-major / tiled / GEMM tiled) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.shapes.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            row = bench_shape(name, *SHAPES[name], rows, bandwidth)
            results.append(row)
            print(
                f"| {name} {SHAPES[name][0]}x{SHAPES[name][1]} | {rows} | {row['bound_us']:.1f} | "
                f"{row['replaced_us']:.1f} ({row['replaced_path']}) | {row['mma_us']:.1f} | {row['tiled_us']:.1f} | "
                f"{100 * row['bound_us'] / row['tiled_us']:.0f} % | {row['gemm_tiled_us']:.1f} | "
                f"{row['best_us']:.1f} ({row['best']}) | {row['rel_error']:.1e} / {row['rel_error_tiled']:.1e} / "
                f"{row['rel_error_gemm_tiled']:.1e} |",
                flush=True,
            )
            Path(args.out).write_text(json.dumps(dict(copy_tb_s=bandwidth, rows=results), indent=1))


if __name__ == "__main__":
    main()
