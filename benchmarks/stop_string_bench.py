"""Engine-thread cost of stop strings per decode step: the stop-string search and the held-back tail.

A step appends one token's text (4 characters here) to a request's output; the detokenizer must then say
whether a stop string completed and how much of the tail could still become one. This times that per
step at growing output lengths, for the engine's matcher (tokenizer/stop_strings.py, linear) and, as the
peer in the same run, the per-step rescan it replaced (str.find over the last max-stop-length characters
plus `text.endswith(stop[:n])` for every n: quadratic in the stop length). The bound: a decode step of the
demo model on this CPU is ~50 ms, so anything near it doubles inter-token latency for the whole batch.

  OMP_NUM_THREADS=1 python benchmarks/stop_string_bench.py --stops 16 --stop-chars 100000
  OMP_NUM_THREADS=1 python benchmarks/stop_string_bench.py --stops 16 --stop-chars 512   # the request cap
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_backend"))

from qwen_triton.tokenizer.stop_strings import StopStringMatcher  # noqa: E402

CHARS_PER_TOKEN = 4


def rescan_step(text: str, stops: list[str], search_from: int) -> tuple[int, int]:
    """The replaced per-step check: search the new region, then the longest held-back prefix."""
    hits = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return (min(hits) if hits else -1), longest


def time_rescan(text: str, stops: list[str], repeats: int) -> float:
    longest_stop = max(len(s) for s in stops)
    start = time.perf_counter()
    for _ in range(repeats):
        rescan_step(text, stops, max(0, len(text) - CHARS_PER_TOKEN - longest_stop + 1))
    return (time.perf_counter() - start) / repeats


def time_matcher(text: str, stops: list[str], repeats: int) -> float:
    """Per-step time of the matcher: feed the whole text once, then time single-token feeds."""
    matcher = StopStringMatcher(stops)
    matcher.feed(text)
    piece = text[-CHARS_PER_TOKEN:]
    start = time.perf_counter()
    for _ in range(repeats):
        matcher.feed(piece)
        matcher.held_back()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=16)
    parser.add_argument("--stop-chars", type=int, default=100_000)
    parser.add_argument("--output-chars", default="1000,8000,30000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(0)
    letters = string.ascii_lowercase
    # Stops and text share an alphabet but never line up: every prefix length is tried and fails.
    stops = ["z" + "".join(rng.choices(letters[:-1], k=args.stop_chars - 1)) for _ in range(args.stops)]
    build = time.perf_counter()
    StopStringMatcher(stops)
    build = time.perf_counter() - build
    print(
        f"{args.stops} stop strings of {args.stop_chars} characters; matcher set-up once per request: "
        f"{build * 1e3:.1f} ms"
    )
    print(f"{'output chars':>12} | {'rescan (replaced) ms/step':>25} | {'matcher ms/step':>15}")
    for output_chars in (int(n) for n in args.output_chars.split(",")):
        text = "".join(rng.choices(letters[:-1], k=output_chars))
        rescan = time_rescan(text, stops, args.repeats)
        matcher = time_matcher(text, stops, args.repeats * 20)
        print(f"{output_chars:>12} | {rescan * 1e3:>25.2f} | {matcher * 1e3:>15.4f}")


if __name__ == "__main__":
    main()
