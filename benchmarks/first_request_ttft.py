"""Time to first token of the first requests an engine serves after it starts (CUDA, random weights at
real Qwen2.5 shapes): what a user's first request waits for beyond a warm engine's TTFT.

  python benchmarks/first_request_ttft.py --tokenizer DIR --runs 0.5b:layered,7b:none
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_bench import engine_for, make_checkpoint, prompt_ids, release, run_requests  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--runs", default="0.5b:layered,7b:none", help="shape:format pairs")
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qwen-first-"))
    print("| shape | format | engine start s | TTFT of requests 1, 2, ... ms |\n|---|---|---|---|")
    for run in args.runs.split(","):
        shape, fmt = run.split(":")
        checkpoint = make_checkpoint(shape, args.tokenizer, root)
        start = time.perf_counter()
        engine = engine_for(checkpoint, fmt, max_num_seqs=16)
        built = time.perf_counter() - start
        ttfts = [
            1e3 * run_requests(engine, prompt_ids(engine.hf_config.vocab_size, 1, args.prompt_tokens), 8)["ttft_s"][0]
            for _ in range(args.requests)
        ]
        print(f"| {shape} | {fmt} | {built:.1f} | {' / '.join(f'{t:.1f}' for t in ttfts)} |", flush=True)
        del engine
        release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
