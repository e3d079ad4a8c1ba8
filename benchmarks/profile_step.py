"""Where does one decode step's time go? Host (Python) versus the GPU work of the captured graph.

  python benchmarks/profile_step.py --tokenizer DIR --shape 7b --batch 1

``--dense-max-rows 0`` sends every dense linear to cuBLAS (kernels/dense_gemv.py's GEMV off), for a
before/after of that routing in one session.

With programmatic dependent launch (kernels/pdl.py, on by default on Hopper) a kernel's programs start
early and wait for the one before, so the profiler's per-kernel durations include that wait and do not
add up to the step; run with QWEN_TRITON_PDL=0 for the per-kernel table (the graph replay time is right
either way).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import engine_for, make_checkpoint, prompt_ids  # noqa: E402

from qwen_triton.engine.sampling_params import SamplingParams  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--dense-max-rows",
        type=int,
        default=None,
        help="rows up to which dense linears take the Triton GEMV (default: the module's)",
    )
    args = parser.parse_args()
    if args.dense_max_rows is not None:
        from qwen_triton.kernels import dense_gemv

        dense_gemv.ROUTE_MAX_ROWS = args.dense_max_rows
    checkpoint = make_checkpoint(args.shape, args.tokenizer, Path(tempfile.mkdtemp()))
    engine = engine_for(checkpoint, max_num_seqs=max(8, args.batch))
    for i, ids in enumerate(prompt_ids(engine.hf_config.vocab_size, args.batch, 128)):
        engine.add_request(f"r{i}", ids, SamplingParams(max_tokens=10**4 // 8, temperature=0.0, ignore_eos=True))
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    step_ms = (time.perf_counter() - start) / args.steps * 1e3
    size = min(s for s in engine.runner.graph_sizes if s >= args.batch)
    graph = engine.runner.graphs[size][0]
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(args.steps):
        graph.replay()
    end.record()
    end.synchronize()
    replay_ms = begin.elapsed_time(end) / args.steps
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        engine.step()
    profile.disable()
    print(f"{args.shape} batch {args.batch}: step {step_ms:.3f} ms, graph replay alone {replay_ms:.3f} ms")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as kernels:
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
    print("kernels of 10 graph replays:")
    print(kernels.key_averages().table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=70))
    pstats.Stats(profile).sort_stats("tottime").print_stats(18)
    return 0


if __name__ == "__main__":
    sys.exit(main())
