"""Where does the time of a prefill step go? Wall time of the engine step against the GPU's kernel time.

If the kernels add up to much less than the wall time, the step is bound by the host launching them (many
small eager ops); if they add up to about the wall time, the top kernels below say which to make faster.

  python benchmarks/profile_prefill.py --tokenizer DIR --shape 7b --prompt-tokens 512 [--batch 16]

--batch N prefills N prompts in one step (N x prompt-tokens must fit max_num_batched_tokens, 8192).
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
from gpu_bench import engine_for, make_checkpoint, prompt_ids  # noqa: E402

from qwen_triton.engine.sampling_params import SamplingParams  # noqa: E402


def prefill_once(engine, prompts: list[list[int]], name: str) -> float:
    """Seconds from add_request to the first tokens (one engine step while the prompts fit its token budget)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i, ids in enumerate(prompts):
        engine.add_request(f"{name}-{i}", ids, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    checkpoint = make_checkpoint(args.shape, args.tokenizer, Path(tempfile.mkdtemp()))
    engine = engine_for(checkpoint, max_num_seqs=max(8, args.batch))
    ids = prompt_ids(engine.hf_config.vocab_size, (args.repeat + 3) * args.batch, args.prompt_tokens)
    prompts = [ids[i * args.batch : (i + 1) * args.batch] for i in range(args.repeat + 3)]
    for i in range(2):
        prefill_once(engine, prompts[i], f"warm{i}")
    times = [prefill_once(engine, prompts[2 + i], f"p{i}") for i in range(args.repeat)]
    wall_ms = 1e3 * statistics.median(times)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prefill_once(engine, prompts[-1], "profiled")
    events = prof.key_averages()
    launches = sum(
        e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch"))
    )
    print(events.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=60))
    print(
        f"{args.shape}, {args.batch} x {args.prompt_tokens}-token prompt: prefill step {wall_ms:.1f} ms wall (median of "
        f"{args.repeat}); {launches} kernel launches (GPU time: 'Self CUDA time total' above)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
