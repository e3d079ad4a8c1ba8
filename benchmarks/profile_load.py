"""Where does the time of a concurrent load go? Per engine step: what it computed and how long it took.

The throughput runs of gpu_bench.py (N requests of 512 prompt tokens, 256 generated) spend their time in
two phases: steps that carry prompt tokens (prefill, possibly mixed with decode rows) and decode-only
steps. This prints both phases' step counts and times, the first steps, and a kernel table of the
first step that mixes prompt chunks with decode rows, so a slow phase can be told from a slow kernel.

  python benchmarks/profile_load.py --tokenizer DIR --shape 7b --concurrency 64
"""

from __future__ import annotations

import argparse
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
    run and the result also holds the kernel table of the first step that carries prompt tokens and at
    least that many decode rows."""
    log = record_schedules(engine)
    overlap = engine.config.overlap_steps
    engine.config.overlap_steps = overlap and not profile_decode_rows
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i, ids in enumerate(prompts):
        engine.add_request(f"load-{i}", ids, params)
    steps, table = [], None
    while engine.has_unfinished():
        start = time.perf_counter()
        mixed_next = (
            profile_decode_rows
            and table is None
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
            events = prof.key_averages()
            table = (
                f"step of {decode} decode rows and {prompt} prompt tokens, {1e3 * elapsed:.1f} ms wall\n"
                + events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60)
                + events.table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=60)
            )
        steps.append((decode, prompt, elapsed))
    engine.config.overlap_steps = overlap
    del engine.scheduler.schedule  # the wrapper above: back to the class's method
    return steps, table


def summarize(steps) -> None:
    phases = {"with prompt tokens": [s for s in steps if s[1]], "decode only": [s for s in steps if not s[1]]}
    total = sum(s[2] for s in steps)
    print(f"{len(steps)} steps, {total:.3f} s")
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument(
        "--profile-decode-rows",
        type=int,
        default=24,
        help="profile the first step with prompt tokens and at least this many decode rows",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="warm up with one short request only (first sight of each step shape is timed)",
    )
    args = parser.parse_args()
    checkpoint = make_checkpoint(args.shape, args.tokenizer, Path(tempfile.mkdtemp()))
    engine = engine_for(checkpoint, max_num_batched_tokens=args.max_num_batched_tokens)
    vocab = engine.hf_config.vocab_size
    warm_up = 1 if args.cold else args.concurrency
    run_requests(engine, prompt_ids(vocab, warm_up, args.prompt_tokens), 4)
    prompts = prompt_ids(vocab, args.concurrency, args.prompt_tokens)
    steps, _ = timed_load(engine, prompts, args.max_tokens)
    print(
        f"{args.shape}, {args.concurrency} x ({args.prompt_tokens} + {args.max_tokens}), "
        f"max_num_batched_tokens {args.max_num_batched_tokens}{', cold' if args.cold else ''}:"
    )
    summarize(steps)
    _, table = timed_load(engine, prompts, 8, args.profile_decode_rows)
    print(table or f"no step had prompt tokens and {args.profile_decode_rows} decode rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
