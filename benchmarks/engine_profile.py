"""Where does an engine's time go on the GPU? One phase a run, random weights at real Qwen2.5 shapes.

  python benchmarks/engine_profile.py prefill --tokenizer DIR --shape 7b --prompt-tokens 512 [--batch 16]
  python benchmarks/engine_profile.py step    --tokenizer DIR --shape 7b --batch 1 [--quantization int8] [--prompt-tokens 640]
  python benchmarks/engine_profile.py load    --tokenizer DIR --shape 7b --concurrency 64 [--cold] [--prefill-cap 512]

- prefill: wall time of a prefill step against its kernels' GPU time and launch count. Kernels adding up
  to much less than the wall time mean the step is bound by the host launching them; about the wall
  time, the top kernels say which to make faster. ``--batch N`` prefills N prompts in one step (N x
  prompt tokens must fit max_num_batched_tokens, 8192).
- step: one decode step, host (cProfile) against the captured graph's replay and its kernels.
  ``--dense-max-rows 0`` sends every dense linear to cuBLAS (kernels/dense_gemv.py's GEMV off), for a
  before/after of that routing in one session. With programmatic dependent launch (kernels/pdl.py, on by
  default on Hopper) a kernel's programs start early and wait for the one before, so the per-kernel
  durations include that wait; run with QWEN_TRITON_PDL=0 for the per-kernel table (the replay time is
  right either way).
- load: gpu_bench.py's concurrent load (N requests of 512 prompt tokens, 256 generated) step by step:
  the steps that carry prompt tokens against the decode-only ones, the first steps, the slowest steps
  (what an inter-token p99 is made of), and the kernel tables of the first two steps that mix prompt
  chunks with decode rows, so a slow phase can be told from a slow kernel.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import engine_for, make_checkpoint, prompt_ids, run_requests  # noqa: E402

from qwen_triton.engine.sampling_params import SamplingParams  # noqa: E402

GREEDY_FOREVER = dict(temperature=0.0, ignore_eos=True)


def kernel_table(prof, sort_by: str = "self_device_time_total", rows: int = 18) -> str:
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)


# -- prefill ---------------------------------------------------------------------------------------------


def prefill_once(engine, prompts: list[list[int]], name: str) -> float:
    """Seconds from add_request to the first tokens (one engine step while the prompts fit its token budget)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i, ids in enumerate(prompts):
        engine.add_request(f"{name}-{i}", ids, SamplingParams(max_tokens=1, **GREEDY_FOREVER))
    while engine.has_unfinished():
        engine.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def profile_prefill(args, checkpoint: Path) -> None:
    engine = engine_for(checkpoint, max_num_seqs=max(8, args.batch))
    ids = prompt_ids(engine.hf_config.vocab_size, (args.repeat + 3) * args.batch, args.prompt_tokens)
    prompts = [ids[i * args.batch : (i + 1) * args.batch] for i in range(args.repeat + 3)]
    for i in range(2):
        prefill_once(engine, prompts[i], f"warm{i}")
    wall_ms = 1e3 * statistics.median(prefill_once(engine, prompts[2 + i], f"p{i}") for i in range(args.repeat))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prefill_once(engine, prompts[-1], "profiled")
    launches = sum(
        e.count
        for e in prof.key_averages()
        if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch"))
    )
    print(kernel_table(prof))
    print(
        f"{args.shape}, {args.batch} x {args.prompt_tokens}-token prompt: prefill step {wall_ms:.1f} ms wall "
        f"(median of {args.repeat}); {launches} kernel launches (GPU time: 'Self CUDA time total' above)"
    )


# -- step ------------------------------------------------------------------------------------------------


def graph_replay_ms(graph, replays: int) -> float:
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / replays


def profile_step(args, checkpoint: Path) -> None:
    if args.dense_max_rows is not None:
        from qwen_triton.kernels import dense_gemv

        dense_gemv.ROUTE_MAX_ROWS = args.dense_max_rows
    engine = engine_for(checkpoint, args.quantization, max_num_seqs=max(8, args.batch))
    for i, ids in enumerate(prompt_ids(engine.hf_config.vocab_size, args.batch, args.prompt_tokens)):
        engine.add_request(f"r{i}", ids, SamplingParams(max_tokens=10**4 // 8, **GREEDY_FOREVER))
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    step_ms = (time.perf_counter() - start) / args.steps * 1e3
    size = min(s for s in engine.runner.graph_sizes if s >= args.batch)
    graph = engine.runner.graphs[size][0]
    replay_ms = graph_replay_ms(graph, args.steps)
    host = cProfile.Profile()
    host.enable()
    for _ in range(args.steps):
        engine.step()
    host.disable()
    print(
        f"{args.shape} {args.quantization} batch {args.batch}: step {step_ms:.3f} ms, graph replay alone {replay_ms:.3f} ms"
    )
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
    print("kernels of 10 graph replays:")
    print(kernel_table(prof, rows=20))
    pstats.Stats(host).sort_stats("tottime").print_stats(18)


# -- load ------------------------------------------------------------------------------------------------


def record_schedules(engine) -> list[tuple[int, int]]:
    """Wrap the scheduler so every step it decides leaves (decode rows, prompt tokens) in the list."""
    log: list[tuple[int, int]] = []
    schedule = engine.scheduler.schedule

    def recorded(*args, **kwargs):
        scheduled = schedule(*args, **kwargs)
        if not scheduled:
            return scheduled
        decode = sum(
            1
            for item in scheduled
            if item.num_tokens == 1 and item.seq.num_computed_tokens >= len(item.seq.prompt_token_ids)
        )
        log.append((decode, sum(item.num_tokens for item in scheduled) - decode))
        return scheduled

    engine.scheduler.schedule = recorded
    return log


def timed_load(engine, prompts: list[list[int]], max_tokens: int, profile_decode_rows: int = 0):
    """Run the load step by step: [(decode rows, prompt tokens, seconds)] per engine.step() call, each
    labelled with the step it completed (with overlapped steps, the call also queues the next one: its time
    is the wait for the step it completes). With `profile_decode_rows`, overlap is switched off for the
    run and the result also holds the kernel tables of the first two steps that carry prompt tokens and
    at least that many decode rows (a prompt's first chunk and a continuing one, under a prefill cap)."""
    log = record_schedules(engine)
    overlap = engine.config.overlap_steps
    engine.config.overlap_steps = overlap and not profile_decode_rows
    params = SamplingParams(max_tokens=max_tokens, **GREEDY_FOREVER)
    for i, ids in enumerate(prompts):
        engine.add_request(f"load-{i}", ids, params)
    steps, tables = [], []
    while engine.has_unfinished():
        start = time.perf_counter()
        mixed_next = (
            profile_decode_rows
            and len(tables) < 2
            and len(engine.scheduler.running) >= profile_decode_rows
            and engine.scheduler.waiting
        )
        if mixed_next:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                engine.step()
                torch.cuda.synchronize()
        else:
            engine.step()
        elapsed = time.perf_counter() - start
        decode, prompt = log[len(steps)] if len(steps) < len(log) else (None, None)
        if mixed_next and decode >= profile_decode_rows and prompt:
            tables.append(
                f"step of {decode} decode rows and {prompt} prompt tokens, {1e3 * elapsed:.1f} ms wall\n"
                + kernel_table(prof, rows=14)
                + kernel_table(prof, sort_by="cpu_time_total", rows=14)
            )
        steps.append((decode, prompt, elapsed))
    engine.config.overlap_steps = overlap
    del engine.scheduler.schedule  # the wrapper above: back to the class's method
    return steps, "\n".join(tables)


def summarize_load(steps) -> None:
    phases = {"with prompt tokens": [s for s in steps if s[1]], "decode only": [s for s in steps if not s[1]]}
    print(f"{len(steps)} steps, {sum(s[2] for s in steps):.3f} s")
    print("| phase | steps | seconds | mean ms | median ms | prompt tokens |")
    print("|---|---|---|---|---|---|")
    for name, group in phases.items():
        if group:
            times = [1e3 * s[2] for s in group]
            print(
                f"| {name} | {len(group)} | {sum(times) / 1e3:.3f} | {statistics.mean(times):.1f} | "
                f"{statistics.median(times):.1f} | {sum(s[1] or 0 for s in group)} |"
            )
    print("first 12 steps (decode rows, prompt tokens, ms):", [(d, p, round(1e3 * t, 1)) for d, p, t in steps[:12]])
    # The tail of a load's inter-token latency is its slowest steps: where they fall and what they carry.
    slowest = sorted(range(len(steps)), key=lambda i: steps[i][2], reverse=True)[:8]
    print(
        "slowest 8 steps (index, decode rows, prompt tokens, ms):",
        [(i, steps[i][0], steps[i][1], round(1e3 * steps[i][2], 1)) for i in sorted(slowest)],
    )


def profile_load(args, checkpoint: Path) -> None:
    engine = engine_for(
        checkpoint,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_prefill_tokens_while_decoding=args.prefill_cap,
        mixed_graph_max_tokens=args.mixed_graph_max_tokens,
    )
    vocab = engine.hf_config.vocab_size
    run_requests(engine, prompt_ids(vocab, 1 if args.cold else args.concurrency, args.prompt_tokens), 4)
    prompts = prompt_ids(vocab, args.concurrency, args.prompt_tokens)
    steps, _ = timed_load(engine, prompts, args.max_tokens)
    print(
        f"{args.shape}, {args.concurrency} x ({args.prompt_tokens} + {args.max_tokens}), "
        f"max_num_batched_tokens {args.max_num_batched_tokens}, prefill cap {args.prefill_cap or 'none'}, "
        f"mixed graphs up to {args.mixed_graph_max_tokens} tokens"
        f"{', cold' if args.cold else ''}:"
    )
    summarize_load(steps)
    _, table = timed_load(engine, prompts, 8, args.profile_decode_rows)
    print(table or f"no step had prompt tokens and {args.profile_decode_rows} decode rows")


# -- command line ----------------------------------------------------------------------------------------

PHASES = {"prefill": profile_prefill, "step": profile_step, "load": profile_load}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tokenizer", type=Path, required=True, help="a directory with tokenizer.json")
    common.add_argument("--shape", default="7b", help="a Qwen2.5 shape of gpu_bench.py (0.5b, 7b, ...)")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phases = parser.add_subparsers(dest="phase", required=True)
    prefill = phases.add_parser("prefill", parents=[common])
    prefill.add_argument("--prompt-tokens", type=int, default=512)
    prefill.add_argument("--batch", type=int, default=1)
    prefill.add_argument("--repeat", type=int, default=10)
    step = phases.add_parser("step", parents=[common])
    step.add_argument("--batch", type=int, default=1)
    step.add_argument("--steps", type=int, default=100)
    step.add_argument(
        "--prompt-tokens", type=int, default=128, help="context of every row (gpu_bench's loads decode at 512-768)"
    )
    step.add_argument("--quantization", default="none", help="weight format: none, int8, int4, fp8, layered")
    step.add_argument(
        "--dense-max-rows", type=int, help="rows up to which dense linears take the Triton GEMV (default: the module's)"
    )
    load = phases.add_parser("load", parents=[common])
    load.add_argument("--concurrency", type=int, default=64)
    load.add_argument("--prompt-tokens", type=int, default=512)
    load.add_argument("--max-tokens", type=int, default=256)
    load.add_argument("--max-num-batched-tokens", type=int, default=8192)
    load.add_argument(
        "--prefill-cap", type=int, default=0, help="max_prefill_tokens_while_decoding (0: no cap, the default)"
    )
    load.add_argument(
        "--mixed-graph-max-tokens", type=int, default=1024, help="mixed_graph_max_tokens (0: mixed steps eager)"
    )
    load.add_argument(
        "--profile-decode-rows",
        type=int,
        default=24,
        help="profile the first step with prompt tokens and at least this many decode rows",
    )
    load.add_argument(
        "--cold", action="store_true", help="warm up with one short request only (first sight of each step shape)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = make_checkpoint(args.shape, args.tokenizer, Path(tempfile.mkdtemp()))
    PHASES[args.phase](args, checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
