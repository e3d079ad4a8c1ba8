"""GPU kernel benchmark: paged decode attention and weight-only quantized linears on one GPU.

Run on a CUDA machine from the repository root:

    PYTHONPATH=python_backend python3 benchmarks/kernel_bench.py --out /tmp/kernel_bench.json

One run measures the device-to-device copy bandwidth (bytes read + written), checks every kernel
against a float32 reference, then times (CUDA graphs, rotating over enough input copies to defeat
the L2 cache, median of replays):
- decode attention at Qwen2.5-7B shape (28 heads, 4 kv heads, head_dim 128, page 16), batch
  1/16/64/256 x context 512..4096, bf16 / int8 / fp8 KV, beside the bandwidth bound (KV bytes /
  copy bandwidth) and a gather + SDPA baseline;
- int8 / int4 (group 128) / fp8 weight-only linears at Qwen2.5-7B shapes, rows 1/4/16/64, beside bf16
  torch matmul, fp8 torch._scaled_mm (quantization.Fp8Linear's W8A8 path, with and without its per-token
  activation quantization) and the bound (weight bytes / copy bandwidth);
- small sweeps of launch settings, so the defaults in the kernels can be chosen from data;
- with ``--formats bf16_gemv``: the dense few-row linears of kernels/dense_gemv.py against cuBLAS
  (F.linear) at 1/2/4 rows on the Qwen2.5-7B and -0.5B decode shapes, after a check on CUDA (graph
  replays included), and a sweep of their launch settings (``--dense-deadline`` bounds its seconds):

    PYTHONPATH=python_backend python3 benchmarks/kernel_bench.py --skip attention,linears \
        --formats bf16_gemv --out kb.json
It prints one table last and writes every number to the JSON file.

To time a change of the linear kernels against the code it replaces, in one run on one card:

    git show HEAD:python_backend/qwen_triton/kernels/quant_matmul.py > /tmp/quant_matmul_base.py
    PYTHONPATH=python_backend python3 benchmarks/kernel_bench.py --skip attention --formats bf16,int4 \
        --baseline /tmp/quant_matmul_base.py --out kb.json

(``--baseline`` adds an ``int4_base`` column, and so on per kernel format, with the saved copy's defaults.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from qwen_triton.kernels import common as kernel_common
from qwen_triton.kernels import dense_gemv as dg
from qwen_triton.kernels import dequantize
from qwen_triton.kernels import paged_attention as pa
from qwen_triton.kernels import quant_matmul as qm
from qwen_triton.layers.kv_cache import quantize_kv

# The float references the kernel tests check against (tests/kernels/kernel_reference.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))
import kernel_reference as ref  # noqa: E402

# Qwen2.5-7B attention and linear shapes.
HEADS, KV_HEADS, HEAD_DIM, PAGE = 28, 4, 128, 16
LINEAR_SHAPES = {  # name: (out_features, in_features)
    "qkv 4608x3584": (4608, 3584),
    "o 3584x3584": (3584, 3584),
    "up 18944x3584": (18944, 3584),
    "gate_up 37888x3584": (37888, 3584),  # the model's fused gate + up projection
    "down 3584x18944": (3584, 18944),
    # Qwen2.5-0.5B's, for the int4 GEMV at one row (by their first word: --shapes qkv05,o05,...)
    "qkv05 1152x896": (1152, 896),
    "o05 896x896": (896, 896),
    "gate_up05 9728x896": (9728, 896),
    "down05 896x4864": (896, 4864),
    # Qwen2.5-72B's (--shapes qkv72,o72,gate_up72,down72)
    "qkv72 10240x8192": (10240, 8192),
    "o72 8192x8192": (8192, 8192),
    "gate_up72 59136x8192": (59136, 8192),
    "down72 8192x29568": (8192, 29568),
}
GROUP = 128
SAVE_PROGRESS = lambda: None  # main() replaces it: write the JSON so far (a killed run keeps its numbers)
# fp8_wo: the weight-only Triton kernel (qm.fp8_linear); fp8: Fp8Linear's _scaled_mm path (W8A8).
# int4_mma: the tensor-core kernel of kernels/int4_mma.py (int4_linear path="mma"; up to 8 rows).
# int8_deq / int4_deq: the many-row path (kernels/dequantize.py into a bf16 scratch weight, then cuBLAS).
LINEAR_COLUMNS = (
    "bf16",
    "int8",
    "int8_best",
    "int8_deq",
    "int4",
    "int4_best",
    "int4_deq",
    "int4_mma",
    "fp8_wo",
    "fp8_wo_best",
    "fp8",
    "fp8_mm_only",
)
KERNEL_FORMATS = ("int8", "int4", "fp8_wo")  # the formats our kernels serve: checked, swept
DEVICE = "cuda"  # a CPU smoke run (tests) sets "cpu" with the Triton interpreter
FORMATS = set(LINEAR_COLUMNS)  # main() narrows them with --formats
BASELINE = None  # main() sets it with --baseline: a saved copy of quant_matmul, timed as "<fmt>_base"


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def time_calls(calls, replays=20, min_calls=16):
    """Median microseconds per call: the calls (one per input copy) captured in a CUDA graph,
    repeated to at least ``min_calls``, replayed ``replays`` times. Returns (median, min, max)."""
    sequence = list(calls) * max(1, math.ceil(min_calls / len(calls)))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # compile + warm up outside the graph
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in sequence:
            call()
    graph.replay()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / len(sequence))
    del graph
    return statistics.median(per_call), min(per_call), max(per_call)


def warm_up_clocks(seconds=1.0):
    """Keep the GPU busy until its clocks have ramped up (an idle H100 sits at a few hundred MHz)."""
    a = torch.randn(4096, 4096, device=DEVICE, dtype=torch.bfloat16)
    started = time.time()
    while time.time() - started < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def memory_bandwidths():
    """(copy, read) bytes per second: a large device-to-device copy counting bytes read + written
    (the rate the bounds use), and a large sum (bytes read only), for reference."""
    src = torch.randn(512 * 2**20, device=DEVICE, dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    total = torch.empty((), device=DEVICE, dtype=torch.float32)
    nbytes = src.numel() * src.element_size()
    copy_us = time_calls([lambda: dst.copy_(src)], replays=10, min_calls=4)[0]
    read_us = time_calls([lambda: torch.sum(src, dim=0, dtype=torch.float32, out=total)], replays=10, min_calls=4)[0]
    del src, dst
    return 2 * nbytes / (copy_us * 1e-6), nbytes / (read_us * 1e-6)


def rel_error(out, expected):
    out, expected = out.double(), expected.double()
    if not torch.isfinite(out).all():
        return float("nan")
    return ((out - expected).norm() / expected.norm()).item()


def copies_needed(bytes_per_copy, l2_bytes, cap=32):
    """Input copies to rotate through so one pass over them is >= 4x the L2 cache."""
    return int(min(cap, max(1, math.ceil(4 * l2_bytes / bytes_per_copy))))


# ------------------------------------------------------------------------------------------------
# Decode attention
# ------------------------------------------------------------------------------------------------


def quantize_cache(cache, kind):
    """bf16 cache -> (int8 | fp8 cache, float32 scales [num_blocks, page, kv_heads]) as the engine writes
    it: one scale per token and KV head (layers/kv_cache.py)."""
    dtype = torch.int8 if kind == "int8" else torch.float8_e4m3fn
    values, scales = quantize_kv(cache.flatten(0, 1), dtype)
    return values.view(cache.shape), scales.view(cache.shape[:3])


def make_caches(num_blocks, kinds):
    k = torch.randn(num_blocks, PAGE, KV_HEADS, HEAD_DIM, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    caches = {"bf16": (k, v, None, None)}
    for kind in kinds:
        if kind != "bf16":
            kq, ks = quantize_cache(k, kind)
            vq, vs = quantize_cache(v, kind)
            caches[kind] = (kq, vq, ks, vs)
    return caches


def check_attention(results):
    """Variable context lengths, GQA, windows, splits, every KV format vs the float32 reference."""
    torch.manual_seed(1)
    batch, blocks_per_seq = 6, 200
    caches = make_caches(batch * blocks_per_seq + 7, ["bf16", "int8", "fp8"])
    tables = torch.randperm(batch * blocks_per_seq + 7, device=DEVICE)[: batch * blocks_per_seq]
    tables = tables.view(batch, blocks_per_seq).int()
    lens = torch.tensor([1, 17, 700, 1500, 3000, 3200], dtype=torch.int32, device=DEVICE)
    q = torch.randn(batch, HEADS, HEAD_DIM, device=DEVICE, dtype=torch.bfloat16)
    for kind, (k, v, ks, vs) in caches.items():
        for window, sinks, splits in ((0, 0, None), (0, 0, 1), (0, 0, 7), (512, 4, None), (64, 0, 3)):
            expected = ref.paged_decode_attention_reference(
                q, k, v, tables, lens, HEAD_DIM**-0.5, ks, vs, window=window, sinks=sinks
            )
            out = pa.paged_decode_attention(
                q, k, v, tables, lens, HEAD_DIM**-0.5, ks, vs, window=window, sinks=sinks, num_splits=splits
            )
            err = rel_error(out.cpu(), expected)
            results.append(dict(kind=kind, window=window, sinks=sinks, splits=splits, rel_error=err, ok=err < 2e-2))
    del caches


def sdpa_baseline(q, k_cache, v_cache, tables, context):
    """Gather the whole cache of each sequence, then SDPA (what a non-paged kernel has to do)."""
    batch = q.shape[0]
    k = k_cache[tables.long()].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2)
    v = v_cache[tables.long()].view(batch, context, KV_HEADS, HEAD_DIM).transpose(1, 2)
    return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True).squeeze(2)


# Launch settings of the decode-attention sweep: (block_n, num_warps, num_stages, splits; None = the
# kernel's own choice, a float = that multiple of it).
ATTENTION_SWEEP = [
    (block_n, warps, stages, splits)
    for block_n in (32, 64, 128)
    for warps in (4, 8)
    for stages in (2, 3, 4)
    for splits in (None, 2.0)
    if block_n * 128 * 2 * stages <= 96 * 1024
]


def bench_attention(batches, contexts, bandwidth, l2_bytes, sweep_shapes, rows, sweeps):
    for batch in batches:
        for context in contexts:
            blocks_per_seq = context // PAGE
            kv_bytes = {"bf16": 2 * batch * context * KV_HEADS * HEAD_DIM * 2}
            for kind in ("int8", "fp8"):
                kv_bytes[kind] = kv_bytes["bf16"] // 2 + 2 * batch * context * KV_HEADS * 4  # + scales
            copies = copies_needed(kv_bytes["bf16"], l2_bytes, cap=16)
            num_blocks = copies * batch * blocks_per_seq
            caches = make_caches(num_blocks, ["bf16", "int8", "fp8"])
            perm = torch.randperm(num_blocks, device=DEVICE).int()
            tables = [
                perm[i * batch * blocks_per_seq : (i + 1) * batch * blocks_per_seq].view(batch, blocks_per_seq)
                for i in range(copies)
            ]
            lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
            q = torch.randn(batch, HEADS, HEAD_DIM, device=DEVICE, dtype=torch.bfloat16)
            splits = pa.choose_num_splits(batch, KV_HEADS, blocks_per_seq * PAGE, q.device)
            row = dict(batch=batch, context=context, splits=splits, copies=copies)
            for kind, (k, v, ks, vs) in caches.items():
                calls = [
                    lambda t=t, k=k, v=v, ks=ks, vs=vs: pa.paged_decode_attention(
                        q, k, v, t, lens, HEAD_DIM**-0.5, ks, vs
                    )
                    for t in tables
                ]
                us = time_calls(calls)[0]
                bound_us = kv_bytes[kind] / bandwidth * 1e6
                row[kind] = dict(
                    us=us, bound_us=bound_us, pct_of_bound=100 * bound_us / us, gbps=kv_bytes[kind] / us / 1e3
                )
            try:
                k, v = caches["bf16"][:2]
                calls = [lambda t=t: sdpa_baseline(q, k, v, t, context) for t in tables[:4]]
                row["sdpa_gather_us"] = time_calls(calls, replays=10, min_calls=4)[0]
            except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
                row["sdpa_gather_us"] = None
                row["sdpa_error"] = repr(exc)[:200]
            rows.append(row)
            print(
                f"attention b={batch} ctx={context}: "
                + ", ".join(f"{kind} {row[kind]['us']:.1f}us ({row[kind]['pct_of_bound']:.0f}%)" for kind in caches)
                + f", sdpa {row['sdpa_gather_us']}",
                flush=True,
            )
            if (batch, context) in sweep_shapes:
                k, v = caches["bf16"][:2]
                for block_n, warps, stages, split_choice in ATTENTION_SWEEP:
                    calls = [
                        lambda t=t: pa.paged_decode_attention(
                            q,
                            k,
                            v,
                            t,
                            lens,
                            HEAD_DIM**-0.5,
                            block_n=block_n,
                            num_warps=warps,
                            num_stages=stages,
                            num_splits=None if split_choice is None else int(split_choice * splits),
                        )
                        for t in tables
                    ]
                    try:
                        us = time_calls(calls)[0]
                    except Exception as exc:  # noqa: BLE001
                        us = None
                        print("sweep failed", block_n, warps, stages, repr(exc)[:200])
                    sweeps.append(
                        dict(
                            batch=batch,
                            context=context,
                            block_n=block_n,
                            num_warps=warps,
                            num_stages=stages,
                            num_splits=int((split_choice or 1) * splits),
                            us=us,
                            pct_of_bound=None if us is None else 100 * kv_bytes["bf16"] / bandwidth * 1e6 / us,
                        )
                    )
            del caches, tables, perm
            torch.cuda.empty_cache()
            SAVE_PROGRESS()


# ------------------------------------------------------------------------------------------------
# Quantized linears
# ------------------------------------------------------------------------------------------------


def make_weights(out_f, in_f):
    """One random bf16 weight and its int8 / int4 (asymmetric, group 128) / fp8 forms."""
    from qwen_triton.quantization import formats as quant

    w = torch.randn(out_f, in_f, device=DEVICE, dtype=torch.bfloat16) * 0.02
    int8 = quant.Int8Linear.from_float(w)
    int4 = quant.GroupwiseLinear.from_float(w, bits=4, group_size=GROUP)
    fp8 = quant.Fp8Linear.from_float(w)
    return dict(bf16=w, int8=int8, int4=int4, fp8=fp8)


def stored_form(fmt):
    """The make_weights entry a benchmark format reads: every fp8 variant reads the one Fp8Linear."""
    return "fp8" if fmt.startswith("fp8") else fmt.removesuffix("_deq").removesuffix("_mma")


def weight_bytes(forms, fmt):
    if fmt == "bf16":
        return forms["bf16"].numel() * 2
    return forms[stored_form(fmt)].weight_bytes()


def linear_call(fmt, forms, x, config=None, path=None, split_k=None):
    kernels = qm
    if fmt.endswith("_base"):
        kernels, fmt = BASELINE, fmt[: -len("_base")]
    if fmt == "bf16":
        return lambda: F.linear(x, forms["bf16"])
    if fmt == "int8":
        m = forms["int8"]
        return lambda: kernels.int8_linear(x, m.qweight, m.scale, config=config, path=path, split_k=split_k)
    if fmt == "int4":
        m = forms["int4"]
        return lambda: kernels.int4_linear(
            x, m.qweight, m.scales, m.zeros, GROUP, config=config, path=path, split_k=split_k
        )
    if fmt == "int4_mma":
        m = forms["int4"]
        return lambda: qm.int4_linear(
            x, m.qweight, m.scales, m.zeros, GROUP, config=config, path="mma", split_k=split_k
        )
    if fmt == "int8_deq":
        m = forms["int8"]
        return lambda: F.linear(x, dequantize.dequantize_int8(m.qweight, m.scale, x.dtype))
    if fmt == "int4_deq":
        m = forms["int4"]
        return lambda: F.linear(x, dequantize.dequantize_int4(m.qweight, m.scales, m.zeros, GROUP, x.dtype))
    if fmt == "fp8_wo":
        m = forms["fp8"]
        return lambda: kernels.fp8_linear(x, m.qweight, m.scale, config=config, path=path, split_k=split_k)
    if fmt == "fp8":  # _scaled_mm with per-token activation quantization, whatever kernels are registered
        m = forms["fp8"]
        return lambda: m._scaled_mm_forward(x)
    if fmt == "fp8_mm_only":  # _scaled_mm alone, activations already fp8 (kernel time without the quant ops)
        m = forms["fp8"]
        x8, xs = qm_fp8_activation(x)
        return lambda: torch._scaled_mm(
            x8, m.qweight.t(), scale_a=xs, scale_b=m.scale.view(1, -1), out_dtype=torch.bfloat16
        )
    raise ValueError(fmt)


def qm_fp8_activation(x):
    scale = (x.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def check_linears(results, shapes, formats):
    """Every kernel format, path and K split against x.float() @ the dequantized float32 weight: the
    benchmarked shapes plus one whose K is not a multiple of the tile; int4 also with fp16 x and
    symmetric storage (the two conversions of its packed path, and the zero point 8)."""
    torch.manual_seed(2)
    for out_f, in_f in [LINEAR_SHAPES[name] for name in shapes] + [(1000, 3000)]:
        forms = make_weights(out_f, in_f)
        for rows in (1, 3, 4, 16, 64):
            x = torch.randn(rows, in_f, device=DEVICE, dtype=torch.bfloat16)
            for fmt in formats:
                expected = x.float() @ forms[stored_form(fmt)].dequantize_weight(torch.float32).T
                for path in (None, "gemv", "gemm"):
                    for split_k in (None, 1, 3):
                        out = linear_call(fmt, forms, x, path=path, split_k=split_k)()
                        err = rel_error(out, expected)
                        results.append(
                            dict(
                                fmt=fmt,
                                shape=[out_f, in_f],
                                rows=rows,
                                path=path,
                                split_k=split_k,
                                rel_error=err,
                                ok=err < 1e-2,
                            )
                        )
            if "int4" in formats and rows in (1, 16):
                check_int4_variants(forms["int4"], x, results)
        del forms
        torch.cuda.empty_cache()


def check_int4_variants(module, x, results):
    """int4 with float16 activations, and symmetric (zeros None: zero point 8) on the same codes."""
    weight = module.dequantize_weight(torch.float32)
    sym_weight = ref.int4_dequantize(module.qweight, module.scales, None, GROUP)
    for name, xs, zeros, w in (("int4 fp16", x.half(), module.zeros, weight), ("int4 symmetric", x, None, sym_weight)):
        expected = xs.float() @ w.T
        for split_k in (None, 1, 3):
            out = qm.int4_linear(xs, module.qweight, module.scales, zeros, GROUP, split_k=split_k)
            err = rel_error(out, expected)
            results.append(
                dict(
                    fmt=name,
                    shape=list(module.qweight.shape),
                    rows=x.shape[0],
                    path=None,
                    split_k=split_k,
                    rel_error=err,
                    ok=err < 1e-2,
                )
            )


def bench_linears(rows_list, bandwidth, l2_bytes, rows_out, sweeps, shapes, sweep_formats):
    for name in shapes:
        out_f, in_f = LINEAR_SHAPES[name]
        base = make_weights(out_f, in_f)
        copies = copies_needed(weight_bytes(base, "int4"), l2_bytes, cap=24)
        sets = [base] + [make_weights(out_f, in_f) for _ in range(copies - 1)]
        for rows in rows_list:
            xs = [torch.randn(rows, in_f, device=DEVICE, dtype=torch.bfloat16) for _ in sets]
            row = dict(shape=name, rows=rows, copies=copies)
            timed = ("bf16", "int8", "int8_deq", "int4", "int4_deq", "int4_mma", "fp8_wo", "fp8", "fp8_mm_only")
            timed_formats = [f for f in timed if f in FORMATS and (f != "int4_mma" or rows <= qm.int4_mma.MAX_ROWS)]
            if BASELINE is not None:
                timed_formats += [f + "_base" for f in KERNEL_FORMATS if f in FORMATS]
            for fmt in timed_formats:
                moved = weight_bytes(base, fmt.removesuffix("_base")) + rows * (in_f + out_f) * 2
                try:
                    us = time_calls([linear_call(fmt, s, x) for s, x in zip(sets, xs)])[0]
                except Exception as exc:  # noqa: BLE001
                    row[fmt] = dict(error=repr(exc)[:200])
                    continue
                bound = moved / bandwidth * 1e6
                row[fmt] = dict(us=us, bound_us=bound, pct_of_bound=100 * bound / us, gbps=moved / us / 1e3)
            rows_out.append(row)
            sweep_linear(name, rows, sets, xs, base, bandwidth, sweeps, sweep_formats)
            for fmt in KERNEL_FORMATS:
                tried = [
                    s
                    for s in sweeps
                    if s["shape"] == name and s["rows"] == rows and s["fmt"] == fmt and s.get("us") and "config" in s
                ]
                if tried:
                    best = min(tried, key=lambda s: s["us"])
                    row[fmt + "_best"] = dict(
                        us=best["us"],
                        pct_of_bound=best["pct_of_bound"],
                        config=best["config"],
                        split_k=best["split_k"],
                        path=best.get("path"),
                    )
            print(
                f"linear {name} rows={rows}: "
                + ", ".join(
                    f"{f} {row[f]['us']:.1f}us ({row[f]['pct_of_bound']:.0f}%)" if "us" in row[f] else f"{f} err"
                    for f in linear_columns()
                    if f in row
                ),
                flush=True,
            )
        del sets, base
        torch.cuda.empty_cache()
        SAVE_PROGRESS()


# int8 / fp8 GEMV (dense_gemv's kernel on bytes), its default first: BLOCK_N weight rows a program, BLOCK_K
# bytes of each a step (1024 = two 16-byte loads a thread with one row a warp).
BYTE_GEMV_SWEEP = [
    None,
    dict(BLOCK_N=4, BLOCK_K=2048, num_warps=4),
    dict(BLOCK_N=8, BLOCK_K=1024, num_warps=8),
    dict(BLOCK_N=8, BLOCK_K=1024, num_warps=4),
    dict(BLOCK_N=8, BLOCK_K=2048, num_warps=8),
    dict(BLOCK_N=16, BLOCK_K=1024, num_warps=8),
    dict(BLOCK_N=8, BLOCK_K=512, num_warps=4),
    dict(BLOCK_N=2, BLOCK_K=2048, num_warps=2),
    dict(BLOCK_N=4, BLOCK_K=1024, num_warps=4, num_stages=2),
]
GEMV_SWEEP = {
    "int8": BYTE_GEMV_SWEEP,
    "fp8_wo": BYTE_GEMV_SWEEP,  # one byte per weight like int8; its conversion differs
    # int4's GEMV (quant_matmul._int4_gemv_kernel), its default first: BLOCK_K inputs a step in
    # chunks of 32 (16 bytes, one a thread), BLOCK_N rows a program; num_stages > 1 asks Triton to
    # pipeline its loads.
    "int4": [
        dict(BLOCK_N=16, BLOCK_K=512, num_warps=4),
        dict(BLOCK_N=16, BLOCK_K=1024, num_warps=4),
        dict(BLOCK_N=32, BLOCK_K=512, num_warps=4),
        dict(BLOCK_N=32, BLOCK_K=1024, num_warps=8),
        dict(BLOCK_N=8, BLOCK_K=1024, num_warps=4),
        dict(BLOCK_N=64, BLOCK_K=512, num_warps=8),
        dict(BLOCK_N=32, BLOCK_K=256, num_warps=4),
        dict(BLOCK_N=16, BLOCK_K=512, num_warps=4, num_stages=3),
        dict(BLOCK_N=32, BLOCK_K=128, num_warps=4),
        dict(BLOCK_N=64, BLOCK_K=128, num_warps=4),
        dict(BLOCK_N=64, BLOCK_K=256, num_warps=4),
        dict(BLOCK_N=128, BLOCK_K=256, num_warps=8),
        dict(BLOCK_N=32, BLOCK_K=512, num_warps=8),
    ],
}
BYTE_GEMM_SWEEP = [
    dict(BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=3),
    dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3),
    dict(BLOCK_N=32, BLOCK_K=64, num_warps=4, num_stages=4),
    dict(BLOCK_N=64, BLOCK_K=128, num_warps=8, num_stages=3),
    dict(BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3),
    dict(BLOCK_N=64, BLOCK_K=256, num_warps=8, num_stages=3),
    dict(BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4),
]
GEMM_SWEEP = {
    "int8": BYTE_GEMM_SWEEP,
    "fp8_wo": BYTE_GEMM_SWEEP,
    # int4's default first: it alone also tries other K splits (the others: the default split only).
    # BLOCK_K 256 spans two groups of 128 (128 contiguous bytes of each weight row; the kernel takes
    # at most two groups a step). SERIAL=False: the separate split-sum kernel; PACKED_CVT=False: the
    # pure-Triton conversion. Out < 2048 (INT4_NARROW) runs BLOCK_N 32 / 2 warps by default.
    "int4": [
        dict(BLOCK_N=64, BLOCK_K=256, num_warps=4, num_stages=3),
        dict(BLOCK_N=32, BLOCK_K=256, num_warps=2, num_stages=3),
        dict(BLOCK_N=64, BLOCK_K=256, num_warps=4, num_stages=2),
        dict(BLOCK_N=32, BLOCK_K=256, num_warps=2, num_stages=2),
        dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3),
        dict(BLOCK_N=128, BLOCK_K=256, num_warps=4, num_stages=3),
        dict(BLOCK_N=64, BLOCK_K=256, num_warps=4, num_stages=3, SERIAL=False),
        dict(BLOCK_N=64, BLOCK_K=256, num_warps=4, num_stages=3, PACKED_CVT=False),
    ],
}
EXTRA_SPLITS = (2, 4, 8, 16)


def gemv_max_rows(kernels, fmt):
    """GEMV_MAX_ROWS was one number for every format before int4 moved to the GEMM."""
    limit = kernels.GEMV_MAX_ROWS
    return limit[stored_form(fmt)] if isinstance(limit, dict) else limit


def uses_gemv(kernels, fmt, rows, name):
    """Whether the automatic path is the GEMV; int4's depends on the layer's shape."""
    if fmt == "int4":
        return kernels.use_gemv(rows, None, "int4", *LINEAR_SHAPES[name])
    return rows <= gemv_max_rows(kernels, fmt)


def sweep_linear(name, rows, sets, xs, base, bandwidth, sweeps, sweep_formats):
    def timed(fmt, **overrides):
        try:
            return time_calls([linear_call(fmt, s, x, **overrides) for s, x in zip(sets, xs)])[0]
        except Exception as exc:  # noqa: BLE001
            print("sweep failed", fmt, overrides, repr(exc)[:300])
            return None

    for fmt in sweep_formats:
        gemv = uses_gemv(qm, fmt, rows, name)
        configs = [(None, c) for c in (GEMV_SWEEP if gemv else GEMM_SWEEP)[fmt]]
        if fmt == "int4" and rows == 1:  # int4's one-row path depends on the shape: sweep the other one too
            configs += [("gemm" if gemv else "gemv", c) for c in (GEMM_SWEEP if gemv else GEMV_SWEEP)[fmt]]
        moved = weight_bytes(base, fmt) + rows * (sum(LINEAR_SHAPES[name])) * 2
        for i, (path, config) in enumerate(configs):
            if i == 0:  # the default: other splits too
                splits = (None, 1) + EXTRA_SPLITS
            else:
                splits = (None,) if fmt == "int4" else (None, 1)
            for split_k in splits:
                us = timed(fmt, config=config, split_k=split_k, path=path)
                sweeps.append(
                    dict(
                        fmt=fmt,
                        shape=name,
                        rows=rows,
                        path=path,
                        config=config,
                        split_k=split_k,
                        us=us,
                        pct_of_bound=None if us is None else 100 * moved / bandwidth * 1e6 / us,
                    )
                )
        if rows in (1, 2, 4):  # where is the GEMV / GEMM crossover?
            for path in ("gemv", "gemm"):
                us = timed(fmt, path=path)
                sweeps.append(
                    dict(
                        fmt=fmt,
                        shape=name,
                        rows=rows,
                        path=path,
                        config=None,
                        split_k=None,
                        us=us,
                        pct_of_bound=None if us is None else 100 * moved / bandwidth * 1e6 / us,
                    )
                )


# ------------------------------------------------------------------------------------------------
# Dense few-row linears (kernels/dense_gemv.py) against cuBLAS
# ------------------------------------------------------------------------------------------------

DENSE_SHAPES = {  # name: (out_features, in_features, bias)
    "7b qkv 4608x3584": (4608, 3584, True),
    "7b o 3584x3584": (3584, 3584, False),
    "7b gate_up 37888x3584": (37888, 3584, False),
    "7b down 3584x18944": (3584, 18944, False),
    "0.5b qkv 1152x896": (1152, 896, True),
    "0.5b o 896x896": (896, 896, False),
    "0.5b gate_up 9728x896": (9728, 896, False),
    "0.5b down 896x4864": (896, 4864, False),
}
# Launch settings tried per rows of x (the default first); each with the K splits of DENSE_SPLITS.
DENSE_SWEEP = {
    1: [
        None,
        dict(BLOCK_N=4, BLOCK_K=1024, num_warps=4),
        dict(BLOCK_N=8, BLOCK_K=1024, num_warps=8),
        dict(BLOCK_N=4, BLOCK_K=512, num_warps=4),
        dict(BLOCK_N=16, BLOCK_K=512, num_warps=8),
        dict(BLOCK_N=8, BLOCK_K=256, num_warps=4),
        dict(BLOCK_N=16, BLOCK_K=256, num_warps=4),
    ],
    2: [
        None,
        dict(BLOCK_N=4, BLOCK_K=512, num_warps=4),
        dict(BLOCK_N=8, BLOCK_K=256, num_warps=4),
        dict(BLOCK_N=8, BLOCK_K=512, num_warps=8),
    ],
    4: [
        None,
        dict(BLOCK_N=4, BLOCK_K=256, num_warps=4),
        dict(BLOCK_N=8, BLOCK_K=512, num_warps=8),
        dict(BLOCK_N=4, BLOCK_K=512, num_warps=4),
    ],
}
DENSE_SPLITS = (None, 1, 2, 4)


def dense_case(out_f, in_f, bias, rows, dtype=torch.bfloat16):
    """(weight, bias or None, x)."""
    weight = (torch.randn(out_f, in_f, device=DEVICE) * in_f**-0.5).to(dtype)
    b = torch.randn(out_f, device=DEVICE).to(dtype) if bias else None
    x = torch.randn(rows, in_f, device=DEVICE).to(dtype)
    return weight, b, x


def dense_call(kind, weight, bias, x, config=None, split_k=None):
    """kind "cublas": the peer (F.linear); "gemv": dense_gemv.dense_linear."""
    if kind == "cublas":
        return lambda: F.linear(x, weight, bias)
    return lambda: dg.dense_linear(x, weight, bias, config=config, split_k=split_k)


def dense_reference(weight, bias, x):
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double())


def check_dense(results):
    """Every shape at 1, 3 and 6 rows (launches of 1-4 rows), the default and a forced K split, fp16
    on two shapes, ragged shapes, and graph replays with new inputs."""
    torch.manual_seed(4)
    shapes = list(DENSE_SHAPES.values()) + [(1000, 3000, True), (1000, 3000, False)]
    for out_f, in_f, bias in shapes:
        for dtype in (torch.bfloat16, torch.float16) if out_f in (4608, 1000) else (torch.bfloat16,):
            weight, b, _ = dense_case(out_f, in_f, bias, 1, dtype)
            for rows in (1, 3, 6):  # launches of 1, 3, 4 + 2 rows
                x = dense_case(1, in_f, False, rows, dtype)[2]
                expected = dense_reference(weight, b, x)
                for split_k in (None, 3):
                    err = rel_error(dense_call("gemv", weight, b, x, split_k=split_k)(), expected)
                    results.append(
                        dict(
                            fmt=f"dense {dtype}",
                            shape=[out_f, in_f],
                            rows=rows,
                            split_k=split_k,
                            rel_error=err,
                            ok=err < 1e-2,
                        )
                    )
    check_dense_graphs(results)


def check_dense_graphs(results):
    """Graph replays with new inputs: the split-K tile counters must be back at zero after each; and
    the path taken when a graph is captured before the counters exist (a separate sum kernel)."""
    weight, b, x = dense_case(3584, 18944, False, 1)
    counters = kernel_common.split_counters
    for fallback in (False, True):
        if fallback:
            kernel_common.split_counters = lambda device, tiles: None
        try:
            call = dense_call("gemv", weight, b, x, split_k=4)
            call()  # compile outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = call()
        finally:
            kernel_common.split_counters = counters
        for replay in range(3):
            x.copy_(torch.randn_like(x))
            graph.replay()
            torch.cuda.synchronize()
            err = rel_error(out, dense_reference(weight, b, x))
            results.append(
                dict(
                    fmt="dense graph" + (" fallback" if fallback else ""),
                    shape=[3584, 18944],
                    rows=1,
                    replay=replay,
                    rel_error=err,
                    ok=err < 1e-2,
                )
            )
        del graph


def dense_bytes(out_f, in_f, bias, rows):
    return 2 * (out_f * in_f + rows * in_f + rows * out_f + (out_f if bias else 0))


def time_dense(kind, sets, **overrides):
    try:
        return time_calls([dense_call(kind, w, b, x, **overrides) for w, b, x in sets])[0]
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
        print("dense timing failed", kind, overrides, repr(exc)[:300], flush=True)
        return None


def dense_sets(name, rows, l2_bytes):
    out_f, in_f, bias = DENSE_SHAPES[name]
    copies = copies_needed(2 * out_f * in_f, l2_bytes, cap=32)
    return [dense_case(out_f, in_f, bias, rows) for _ in range(copies)]


def bench_dense(rows_list, bandwidth, l2_bytes, rows_out, sweeps, deadline, sweep_filter=""):
    """Defaults of every shape and row count first (the table), then the sweep until the deadline."""
    for name, (out_f, in_f, bias) in DENSE_SHAPES.items():
        for rows in rows_list:
            sets = dense_sets(name, rows, l2_bytes)
            bound = dense_bytes(out_f, in_f, bias, rows) / bandwidth * 1e6
            row = dict(
                shape=name,
                rows=rows,
                bound_us=bound,
                cublas_us=time_dense("cublas", sets),
                gemv_us=time_dense("gemv", sets),
            )
            rows_out.append(row)
            print(
                f"dense {name} rows={rows}: cublas {row['cublas_us']} us, gemv {row['gemv_us']} us, "
                f"bound {bound:.1f} us",
                flush=True,
            )
            del sets
        SAVE_PROGRESS()
    # 7B shapes first, one row first: what the deadline must not cut.
    order = sorted(
        ((rows, name) for rows in rows_list for name in DENSE_SHAPES if sweep_filter in name),
        key=lambda item: (not item[1].startswith("7b"), item[0]),
    )
    for rows, name in order:
        if time.time() > deadline:
            print("dense sweep: deadline reached", flush=True)
            return
        sets = dense_sets(name, rows, l2_bytes)
        for config in DENSE_SWEEP[min(r for r in DENSE_SWEEP if r >= rows)]:
            for split_k in DENSE_SPLITS:
                us = time_dense("gemv", sets, config=config, split_k=split_k)
                sweeps.append(dict(shape=name, rows=rows, config=config, split_k=split_k, us=us))
        del sets
        SAVE_PROGRESS()


def print_dense_table(report):
    if not report["dense"]:
        return
    print("\nDense linears, bf16 (rows = batch): us per call; % = bound (weight + activations / copy rate) / time")
    print("(cublas: F.linear; gemv: dense_gemv defaults; best: sweep)")
    print(f"{'shape':>24} {'rows':>4} | {'bound':>6} | {'cublas':>13} | {'gemv':>13} | {'best':>13} | best config")
    for row in report["dense"]:
        tried = [
            s for s in report["dense_sweep"] if s["shape"] == row["shape"] and s["rows"] == row["rows"] and s["us"]
        ]
        best = min(tried, key=lambda s: s["us"]) if tried else None
        cells = [
            _dense_cell(row["cublas_us"], row["bound_us"]),
            _dense_cell(row["gemv_us"], row["bound_us"]),
            _dense_cell(best and best["us"], row["bound_us"]),
        ]
        where = "" if best is None else f"{best['config'] or 'default'} split {best['split_k']}"
        print(f"{row['shape']:>24} {row['rows']:>4} | {row['bound_us']:6.1f} | " + " | ".join(cells) + " | " + where)


def _dense_cell(us, bound):
    return f"{'-':>13}" if not us else f"{us:7.1f} {100 * bound / us:4.0f}%"


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def print_table(report):
    print(
        "\n== GPU kernels:",
        report["device"],
        "| copy bandwidth %.0f GB/s, read-only %.0f GB/s"
        % (report["copy_bandwidth"] / 1e9, report.get("read_bandwidth", 0) / 1e9),
    )
    checks = report["checks"]
    bad = [c for c in checks if not c["ok"]]
    print(
        f"correctness: {len(checks) - len(bad)}/{len(checks)} checks pass; worst rel error "
        f"{max((c['rel_error'] for c in checks), default=0):.2e}"
    )
    for c in bad[:10]:
        print("  FAIL", c)
    if report["attention"]:
        print_attention_table(report)
    if report["linears"]:
        print_linear_table(report)


def print_attention_table(report):
    print("\nDecode attention, Qwen2.5-7B shape (28/4 heads, d128), us per layer call, % of bandwidth bound")
    print(
        f"{'batch':>5} {'ctx':>5} {'splits':>6} | {'bf16':>14} | {'int8 KV':>14} | {'fp8 KV':>14} | {'gather+SDPA':>11}"
    )
    for row in report["attention"]:
        cells = [f"{row[k]['us']:8.1f} {row[k]['pct_of_bound']:4.0f}%" for k in ("bf16", "int8", "fp8")]
        sdpa = row.get("sdpa_gather_us")
        print(
            f"{row['batch']:>5} {row['context']:>5} {row['splits']:>6} | "
            + " | ".join(cells)
            + f" | {sdpa if sdpa is None else f'{sdpa:9.1f}'}"
        )


def print_linear_table(report):
    print("\nWeight-only linears (rows = batch), us per call, % of bandwidth bound")
    print("(int8/int4/fp8_wo: default launch settings; *_best: best of the sweep, see linear_sweep in the JSON;")
    print(" *_base: the --baseline copy of the kernels, default settings;")
    print(" fp8_wo: weight-only Triton kernel; fp8: Fp8Linear's per-token quantization + _scaled_mm;")
    print(" fp8_mm_only: _scaled_mm alone on pre-quantized activations)")
    fmts = [f for f in linear_columns() if any(f in row for row in report["linears"])]
    print(f"{'shape':>16} {'rows':>4} | " + " | ".join(f"{f:>14}" for f in fmts))
    for row in report["linears"]:
        cells = [
            f"{row[f]['us']:8.1f} {row[f]['pct_of_bound']:4.0f}%" if "us" in row.get(f, {}) else f"{'-':>14}"
            for f in fmts
        ]
        print(f"{row['shape']:>16} {row['rows']:>4} | " + " | ".join(cells))


def linear_columns():
    base = tuple(f + "_base" for f in KERNEL_FORMATS) if BASELINE is not None else ()
    return LINEAR_COLUMNS + base


def load_baseline(path):
    """A saved copy of quant_matmul.py, imported as a sibling of the current one (its relative imports
    resolve in qwen_triton.kernels)."""
    spec = importlib.util.spec_from_file_location("qwen_triton.kernels._baseline_quant_matmul", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kernel_bench.json")
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--contexts", default="512,1024,2048,4096")
    parser.add_argument("--rows", default="1,4,16,64")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: checks,attention,linears,sweeps")
    parser.add_argument(
        "--formats",
        default=",".join(LINEAR_COLUMNS),
        help="linear formats to check and time (of %s)" % ", ".join(LINEAR_COLUMNS),
    )
    parser.add_argument(
        "--shapes", default="qkv,o,up,gate_up,down", help="linear shapes by name: " + ", ".join(LINEAR_SHAPES)
    )
    parser.add_argument(
        "--attention-sweep",
        default="1:4096,16:4096,256:4096",
        help="batch:context pairs whose decode-attention launch settings to sweep",
    )
    parser.add_argument("--baseline", help="a saved quant_matmul.py to time beside the current kernels")
    parser.add_argument("--sweep", help="kernel formats whose launch settings to sweep (default: those timed)")
    parser.add_argument("--check", help="kernel formats to check against the reference (default: those timed)")
    parser.add_argument("--dense-rows", default="1,2,4", help="rows of x for the bf16_gemv format")
    parser.add_argument(
        "--dense-deadline", type=float, default=1e9, help="seconds after the start past which the bf16_gemv sweep stops"
    )
    parser.add_argument("--dense-sweep-filter", default="", help="sweep only the bf16_gemv shapes naming this")
    args = parser.parse_args(argv)
    started = time.time()
    if not torch.cuda.is_available():
        sys.exit("kernel_bench needs a CUDA GPU")
    import triton

    skip = set(filter(None, args.skip.split(",")))
    global FORMATS, BASELINE
    FORMATS = set(filter(None, args.formats.split(",")))
    BASELINE = load_baseline(args.baseline) if args.baseline else None
    by_prefix = {name.split()[0]: name for name in LINEAR_SHAPES}
    shapes = [by_prefix[s] for s in args.shapes.split(",") if s]
    swept = set(args.sweep.split(",")) if args.sweep is not None else FORMATS
    sweep_formats = [] if "sweeps" in skip else [f for f in KERNEL_FORMATS if f in FORMATS & swept]
    checked = set(args.check.split(",")) if args.check is not None else FORMATS
    check_formats = [f for f in KERNEL_FORMATS if f in checked]
    props = torch.cuda.get_device_properties(0)
    report = dict(
        date=time.strftime("%Y-%m-%d"),
        device=props.name,
        sms=props.multi_processor_count,
        l2_bytes=props.L2_cache_size,
        torch=torch.__version__,
        triton=triton.__version__,
        command=" ".join(sys.argv),
        checks=[],
        attention=[],
        attention_sweep=[],
        linears=[],
        linear_sweep=[],
        dense=[],
        dense_sweep=[],
        errors=[],
    )
    warm_up_clocks()
    bandwidth, read_bandwidth = memory_bandwidths()
    report["copy_bandwidth"], report["read_bandwidth"] = bandwidth, read_bandwidth
    print(
        f"{props.name}: copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write), "
        f"read-only {read_bandwidth / 1e9:.0f} GB/s",
        flush=True,
    )

    def save():
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)

    global SAVE_PROGRESS
    SAVE_PROGRESS = save

    def section(name, fn, *fn_args):
        started = time.time()
        try:
            fn(*fn_args)
        except Exception:  # noqa: BLE001 - one broken section must not lose the others' numbers
            report["errors"].append(dict(section=name, traceback=traceback.format_exc()[-2000:]))
            print(f"section {name} failed:\n{traceback.format_exc()[-2000:]}", flush=True)
        print(f"[{name}: {time.time() - started:.0f} s]", flush=True)
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)

    if "checks" not in skip:
        if "attention" not in skip:
            section("check_attention", check_attention, report["checks"])
        if check_formats:
            section("check_linears", check_linears, report["checks"], shapes, check_formats)
        if "bf16_gemv" in FORMATS:
            section("check_dense", check_dense, report["checks"])
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    sweep_shapes = (
        set() if "sweeps" in skip else {tuple(map(int, s.split(":"))) for s in args.attention_sweep.split(",") if s}
    )
    if "attention" not in skip:
        section(
            "attention",
            bench_attention,
            batches,
            contexts,
            bandwidth,
            props.L2_cache_size,
            sweep_shapes,
            report["attention"],
            report["attention_sweep"],
        )
    if "linears" not in skip:
        section(
            "linears",
            bench_linears,
            [int(r) for r in args.rows.split(",")],
            bandwidth,
            props.L2_cache_size,
            report["linears"],
            report["linear_sweep"],
            shapes,
            sweep_formats,
        )
    if "bf16_gemv" in FORMATS:
        deadline = started + (args.dense_deadline if "sweeps" not in skip else 0)
        section(
            "dense",
            bench_dense,
            [int(r) for r in args.dense_rows.split(",")],
            bandwidth,
            props.L2_cache_size,
            report["dense"],
            report["dense_sweep"],
            deadline,
            args.dense_sweep_filter,
        )
    print_table(report)
    print_dense_table(report)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
