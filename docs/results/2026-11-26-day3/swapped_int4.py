"""Scratch: int4 at few rows as y^T = W x^T (weights the A operand of the tensor-core dot, dequantized in
registers, never re-staged through shared memory) against quant_matmul's kernels, 7B and 0.5B shapes."""
import sys, statistics, math
import torch, triton, triton.language as tl
sys.path.insert(0, "python_backend"); sys.path.insert(0, "benchmarks")
from qwen_triton.kernels import quant_matmul as qm
from qwen_triton.kernels.quant_matmul import _int4_values, _store_output, _split_counters, k_slices
from qwen_triton.kernels.pdl import wait_for_previous_kernel, launch_options, pdl_enabled
from qwen_triton.quantization import formats as quant
from kernel_bench import time_calls, copies_needed, warm_up_clocks, memory_bandwidths

@triton.jit
def swapped(x_ptr, w_ptr, scale_ptr, zeros_ptr, bias_ptr, y_ptr, part_ptr, count_ptr, M, N, K, k_per_split,
            stride_xm, stride_wn, stride_sn, stride_zn, stride_ym,
            GROUP: tl.constexpr, SPLIT: tl.constexpr, SERIAL: tl.constexpr, PACKED_CVT: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_kernel(PDL)
    pid_n = tl.program_id(0)
    split = tl.program_id(2)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    k_start = split * k_per_split
    for k0 in range(k_start, tl.minimum(k_start + k_per_split, K), BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        half = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_wn + half[None, :], mask=col_ok[:, None], other=0)
        g = k0 // GROUP
        scale = tl.load(scale_ptr + cols * stride_sn + g, mask=col_ok, other=0.0).to(tl.float32)
        zero = tl.load(zeros_ptr + cols * stride_zn + g, mask=col_ok, other=0).to(tl.float32)
        low, high = _int4_values(packed, zero, x_ptr.dtype.element_ty, PACKED_CVT)
        xe = tl.load(x_ptr + rows[None, :] * stride_xm + 2 * half[:, None], mask=row_ok[None, :], other=0.0)
        xo = tl.load(x_ptr + rows[None, :] * stride_xm + 2 * half[:, None] + 1, mask=row_ok[None, :], other=0.0)
        acc += (tl.dot(low, xe) + tl.dot(high, xo)) * scale[:, None]
    _store_output(tl.trans(acc), rows, cols, row_ok, col_ok, M, N, scale_ptr, bias_ptr, y_ptr, part_ptr, count_ptr,
                  stride_ym, "int4", False, SPLIT, SERIAL)


def swapped_linear(x, m, block_n=64, block_k=128, warps=4, stages=3, split=None, cvt=True):
    M, K = x.shape
    N = m.qweight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid_n = triton.cdiv(N, block_n)
    if split is None:
        split = max(1, (3 * 132) // grid_n)
    kps, split = k_slices(K, split, block_k)
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device) if split > 1 else y
    counters = _split_counters(x.device, grid_n) if split > 1 else None
    pdl = pdl_enabled(x.device)
    swapped[(grid_n, 1, split)](x, m.qweight, m.scales, m.zeros, m.scales, y, part,
        counters if counters is not None else part, M, N, K, kps, x.stride(0), m.qweight.stride(0),
        m.scales.stride(0), m.zeros.stride(0), y.stride(0), GROUP=128, SPLIT=split > 1, SERIAL=split > 1,
        PACKED_CVT=cvt, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_M=16, PDL=pdl, num_warps=warps,
        num_stages=stages, **launch_options(pdl))
    return y

SHAPES = {"qkv": (4608, 3584), "o": (3584, 3584), "gate_up": (37888, 3584), "down": (3584, 18944),
          "gate_up05": (9728, 896), "down05": (896, 4864)}
CONFIGS = [dict(), dict(stages=4), dict(stages=2), dict(block_n=128), dict(block_n=128, warps=8),
           dict(cvt=False), dict(block_n=64, warps=8)]

def main():
    torch.manual_seed(0)
    warm_up_clocks()
    bw = memory_bandwidths()[0]
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    print(f"copy {bw/1e12:.2f} TB/s", flush=True)
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        base = quant.GroupwiseLinear.from_float(w, bits=4, group_size=128)
        nbytes = base.weight_bytes()
        copies = copies_needed(nbytes, l2, cap=24)
        sets = [base] + [quant.GroupwiseLinear.from_float(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, bits=4, group_size=128) for _ in range(copies - 1)]
        for rows in (1, 16):
            xs = [torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) for _ in sets]
            ref = xs[0].float() @ base.dequantize_weight(torch.float32).T
            cur = time_calls([lambda s=s, x=x: qm.int4_linear(x, s.qweight, s.scales, s.zeros, 128) for s, x in zip(sets, xs)])[0]
            line = [f"{name} rows={rows} bound {nbytes / bw * 1e6:.1f} current {cur:.1f}"]
            for cfg in CONFIGS:
                for split in ((None, 1, 2, 4, 8) if not cfg else (None,)):
                    try:
                        out = swapped_linear(xs[0], base, split=split, **cfg)
                        err = ((out.float() - ref).norm() / ref.norm()).item()
                        us = time_calls([lambda s=s, x=x: swapped_linear(x, s, split=split, **cfg) for s, x in zip(sets, xs)])[0]
                        line.append(f"{cfg or 'default'}/s{split}: {us:.1f} (err {err:.1e})")
                    except Exception as exc:
                        line.append(f"{cfg}/s{split}: failed {repr(exc)[:120]}")
            print("\n  ".join(line), flush=True)
        del sets, base
        torch.cuda.empty_cache()

main()
