"""The one-byte MLP gate_up at one row on the GPU: the GEMV then the SiLU*up kernel, against
`dense_gemv.byte_gate_up_silu` (SiLU*up in the GEMV's epilogue), under a few launch settings; us per call
(CUDA graphs over enough weight copies to defeat the L2 cache, as kernel_bench.py times) and the fused
result's relative difference from the separate one.

    PYTHONPATH=python_backend python3 benchmarks/gate_up_silu_bench.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_bench as kb  # noqa: E402

from qwen_triton.kernels import dense_gemv, elementwise  # noqa: E402

SHAPES = {"0.5b gate_up": (9728, 896), "7b gate_up": (37888, 3584), "72b gate_up": (59136, 8192)}
SETTINGS = [
    None,  # the default, BYTE_GATED_CONFIG
    dict(BLOCK_N=2, BLOCK_K=1024, num_warps=4),
    dict(BLOCK_N=4, BLOCK_K=1024, num_warps=8),
    dict(BLOCK_N=8, BLOCK_K=512, num_warps=8),
    dict(BLOCK_N=2, BLOCK_K=512, num_warps=2),
    dict(BLOCK_N=4, BLOCK_K=256, num_warps=4),
]


def random_weight(out_f: int, in_f: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if dtype == torch.int8:
        qweight = torch.randint(-127, 128, (out_f, in_f), dtype=torch.int8, device="cuda")
    else:
        qweight = (torch.randn(out_f, in_f, device="cuda") * 50).clamp(-448, 448).to(dtype)
    return qweight, torch.rand(out_f, device="cuda") * 1e-3


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gate_up_silu_bench needs a CUDA GPU")
    kb.warm_up_clocks()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    for name, (out_f, in_f) in SHAPES.items():
        for dtype in (torch.int8, torch.float8_e4m3fn):
            copies = kb.copies_needed(out_f * in_f, l2, cap=8)
            weights = [random_weight(out_f, in_f, dtype) for _ in range(copies)]
            xs = [torch.randn(1, in_f, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
            separate = [
                lambda w=w, x=x: elementwise.silu_and_mul(dense_gemv.byte_linear(x, *w)) for w, x in zip(weights, xs)
            ]
            reference = separate[0]()
            line = f"{name} {dtype}: separate {kb.time_calls(separate)[0]:.1f} us |"
            for config in SETTINGS:
                fused = [
                    lambda w=w, x=x, c=config: dense_gemv.byte_gate_up_silu(x, *w, config=c)
                    for w, x in zip(weights, xs)
                ]
                difference = kb.rel_error(fused[0](), reference)
                label = "default" if config is None else tuple(config.values())
                line += f" {label}: {kb.time_calls(fused)[0]:.1f} us (diff {difference:.1e}) |"
            print(line, flush=True)
            del weights, xs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
