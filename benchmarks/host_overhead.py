"""Host (Python) time of one engine step, the part a GPU cannot hide: scheduling, batch tensors,
sampling bookkeeping, detokenization, outputs. Measured on CPU with a model so small that its forward is
a fraction of the step, and reported without it (the forward is timed separately and subtracted).

  OMP_NUM_THREADS=1 python benchmarks/host_overhead.py --batch 64,256 --steps 50

--gc also times one full garbage collection with the engine loaded, before and after
async_engine.freeze_startup_objects (what the server does once its engine is up).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python_backend"))

from qwen_triton.engine.config import EngineConfig  # noqa: E402
from qwen_triton.engine.llm_engine import LLMEngine  # noqa: E402
from qwen_triton.engine.sampling_params import SamplingParams  # noqa: E402


def tiny_checkpoint(tokenizer_dir: Path) -> Path:
    from transformers import Qwen2Config

    out = Path(tempfile.mkdtemp(prefix="host-overhead-"))
    Qwen2Config(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


def measure(checkpoint: Path, batch: int, steps: int) -> dict:
    engine = LLMEngine(
        EngineConfig(
            model=str(checkpoint),
            load_format="random",
            device="cpu",
            dtype="float32",
            max_model_len=2048,
            max_num_seqs=batch,
            max_num_batched_tokens=batch * 512,
        )
    )
    for i in range(batch):
        engine.add_request(
            f"r{i}",
            [(7 * i + j) % 30000 for j in range(512)],
            SamplingParams(max_tokens=steps + 5, temperature=0.0, ignore_eos=True),
        )
    engine.step()  # every prompt's prefill; decode steps follow
    forward_s, prepare_s, schedule_s, complete_s = [], [], [], []
    run, prepare = engine.runner.run, engine.runner._prepare

    def timed(fn, record):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            record.append(time.perf_counter() - start)
            return out

        return wrapper

    engine.runner.run = timed(run, forward_s)
    engine.runner._prepare = timed(prepare, prepare_s)
    engine.scheduler.schedule = timed(engine.scheduler.schedule, schedule_s)
    engine._complete = timed(engine._complete, complete_s)
    steps_s = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        steps_s.append(time.perf_counter() - start)
    step, runner, prep, sched, complete = (
        statistics.median(x) for x in (steps_s, forward_s, prepare_s, schedule_s, complete_s)
    )
    return {
        "batch": batch,
        "step_ms": 1e3 * step,
        "prepare_ms": 1e3 * prep,
        "forward_ms": 1e3 * (runner - prep),
        "rest_ms": 1e3 * (step - runner),
        "schedule_ms": 1e3 * sched,
        "complete_ms": 1e3 * complete,
    }


def full_collection_ms(checkpoint: Path) -> tuple[float, float, int]:
    """A full collection's time with an engine loaded: (before the freeze, after it, objects frozen)."""
    from qwen_triton.engine.async_engine import freeze_startup_objects

    engine = LLMEngine(
        EngineConfig(model=str(checkpoint), load_format="random", device="cpu", dtype="float32", max_model_len=2048)
    )
    timings = []
    for freeze in (False, True):
        frozen = freeze_startup_objects() if freeze else 0
        start = time.perf_counter()
        gc.collect()
        timings.append(1e3 * (time.perf_counter() - start))
    gc.unfreeze()
    del engine
    return timings[0], timings[1], frozen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=REPO / "models" / "smollm2-135m-instruct")
    parser.add_argument("--batch", default="64,256")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--gc", action="store_true", help="time a full garbage collection, unfrozen and frozen")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = tiny_checkpoint(args.tokenizer)
    if args.gc:
        before, after, frozen = full_collection_ms(checkpoint)
        print(
            f"full gc.collect() with an engine loaded: {before:.1f} ms; after freezing {frozen} objects: {after:.2f} ms"
        )
    print(
        "| batch | step ms | batch tensors ms | forward + logits ms (CPU, tiny model) | host rest of the step ms "
        "| of which schedule ms | of which tokens to outputs (_complete) ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batch.split(",")):
        r = measure(checkpoint, batch, args.steps)
        print(
            f"| {r['batch']} | {r['step_ms']:.2f} | {r['prepare_ms']:.2f} | {r['forward_ms']:.2f} | {r['rest_ms']:.2f} "
            f"| {r['schedule_ms']:.2f} | {r['complete_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
