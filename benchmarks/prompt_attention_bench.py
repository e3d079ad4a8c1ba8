"""Prompt attention of a prefill step, three ways, on the GPU: which one should whole fresh prompts take?

- padded: the prompts copied into a zero-padded [prompts, longest] batch, one SDPA call, copied back;
- varlen: one variable-length flash call over the packed rows (cumulative lengths mark the prompts);
- grid: prompts of one length seen as a [prompts, length] grid of the same rows, the fixed-length
  flash call.

q, k and v are views into one fused QKV output, as the model passes them (rows strided by the three
heads' width). Qwen2.5-7B heads: 28 query heads, 4 K/V heads, dimension 128, bf16.

  python benchmarks/prompt_attention_bench.py [--lengths 512x1,512x16,mixed16]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))
from qwen_triton.layers import attention  # noqa: E402
from qwen_triton.layers.attention import AttentionMetadata  # noqa: E402

HEADS, KV_HEADS, DIM = 28, 4, 128


def prompt_lengths(spec: str) -> list[int]:
    """'512x16' -> sixteen prompts of 512 tokens; 'mixed16' -> sixteen of 64..512 (seeded)."""
    if spec.startswith("mixed"):
        rng = random.Random(0)
        return [rng.randint(64, 512) for _ in range(int(spec[5:]))]
    length, count = spec.split("x")
    return [int(length)] * int(count)


def step_inputs(lengths: list[int]):
    tokens = sum(lengths)
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * DIM, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.split([HEADS * DIM, KV_HEADS * DIM, KV_HEADS * DIM], dim=1)
    q, k, v = q.view(tokens, HEADS, DIM), k.view(tokens, KV_HEADS, DIM), v.view(tokens, KV_HEADS, DIM)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(tokens, dtype=torch.long, device="cuda"),
        block_tables=torch.zeros(len(lengths), 1, dtype=torch.int32, device="cuda"),
        context_lens=torch.tensor(lengths, dtype=torch.int32, device="cuda"),
        is_decode=False,
        query_lens=lengths,
        context_lens_cpu=lengths,
    )
    return q, k, v, meta.plan()


def variants(plan):
    scale = DIM**-0.5
    found = {
        "padded": lambda q, k, v: attention._fresh_prompts_padded(q, k, v, plan, scale),
        "varlen": lambda q, k, v: attention._flash(q, k, v, plan.fresh_cu_seqlens, plan.fresh_shape[1], scale),
    }
    if plan.fresh_uniform:
        batch, length = plan.fresh_shape
        found["grid"] = lambda q, k, v: attention._flash(
            *(x.unflatten(0, (batch, length)) for x in (q, k, v)), None, length, scale
        ).flatten(0, 1)
    return found


def time_us(fn, repeat: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="512x1,512x16,mixed16")
    args = parser.parse_args()
    rows = []
    for spec in args.lengths.split(","):
        q, k, v, plan = step_inputs(prompt_lengths(spec))
        outputs = {name: fn(q, k, v) for name, fn in variants(plan).items()}
        reference = outputs["padded"].float()
        for name, fn in variants(plan).items():
            error = ((outputs[name].float() - reference).norm() / reference.norm()).item()
            rows.append((spec, name, time_us(lambda: fn(q, k, v)), error))
    print("| prompts | variant | median us | rel. difference to padded |")
    print("|---|---|---|---|")
    for spec, name, us, error in rows:
        print(f"| {spec} | {name} | {us:.1f} | {error:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
