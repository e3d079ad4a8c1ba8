"""Our engine beside Hugging Face transformers on the same load, in one run (GPU).

Peers: HF eager `generate` at batch 1, and transformers' own continuous batching (`generate_batch` with
paged attention) at 1, 64 and 256 concurrent requests of 512 prompt tokens and 256 output tokens. Ours:
the engine on the same random-weight checkpoint (bf16), the same prompts. Prints one table with the
ratio ours / theirs.

  python benchmarks/hf_peer.py --tokenizer DIR --shape 7b [--concurrency 1,64,256] [--out peer.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import decode_batch1, engine_for, hf_eager, log, make_checkpoint, prompt_ids, release, run_requests

PROMPT_TOKENS, OUTPUT_TOKENS = 512, 256
# The paged-attention implementation's name has changed between transformers releases: the first that
# loads is used, and named in the table.
PAGED_ATTENTION_NAMES = ("paged|sdpa", "sdpa_paged", "paged_attention")


def ours(checkpoint: Path, concurrency: list[int]) -> dict:
    engine = engine_for(checkpoint, max_num_seqs=max(concurrency))
    result = {"batch1_decode_tok_per_s": decode_batch1(engine)}
    vocab = engine.hf_config.vocab_size
    run_requests(engine, prompt_ids(vocab, 2, PROMPT_TOKENS), 8)  # warm-up
    for n in concurrency:
        result[n] = run_requests(engine, prompt_ids(vocab, n, PROMPT_TOKENS), OUTPUT_TOKENS)["output_tok_per_s"]
        log("ours", n, f"{result[n]:.0f} tok/s")
    del engine
    release()
    return result


def hf_continuous_batching(checkpoint: Path, concurrency: list[int]) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.generation import GenerationConfig

    config = AutoConfig.from_pretrained(checkpoint)
    model, used, errors = None, None, []
    for name in PAGED_ATTENTION_NAMES:
        try:
            with torch.device("cuda"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=name)
            used = name
            break
        except Exception as error:  # this release does not know the name: try the next
            errors.append(f"{name}: {error!r}"[:200])
    if model is None:
        return {"error": "; ".join(errors)}
    model.eval()
    generation = GenerationConfig(
        max_new_tokens=OUTPUT_TOKENS, min_new_tokens=OUTPUT_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    result = {"attn_implementation": used}
    for n in concurrency:
        prompts = prompt_ids(config.vocab_size, n, PROMPT_TOKENS)
        try:
            if n == concurrency[0]:
                model.generate_batch(inputs=prompts[:2], generation_config=generation, progress_bar=False)
            torch.cuda.synchronize()
            start = time.perf_counter()
            outputs = model.generate_batch(inputs=prompts, generation_config=generation, progress_bar=False)
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
            tokens = sum(len(o.generated_tokens) for o in outputs.values())
            result[n] = tokens / wall
            log("transformers generate_batch", n, f"{result[n]:.0f} tok/s ({tokens} tokens)")
        except Exception as error:  # report and go on: the engine's figures still stand
            result[n] = None
            result[f"{n}_error"] = repr(error)[:300]
            log("transformers generate_batch", n, "failed:", repr(error)[:300])
    del model
    release()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--concurrency", default="1,64,256")
    parser.add_argument("--out", type=Path, default=Path("hf_peer.json"))
    args = parser.parse_args()
    concurrency = [int(n) for n in args.concurrency.split(",")]
    checkpoint = make_checkpoint(args.shape, args.tokenizer, Path(tempfile.mkdtemp(prefix="qwen-peer-")))
    report = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "shape": args.shape}
    report["ours"] = ours(checkpoint, concurrency)
    report["hf_eager_batch1_tok_per_s"] = hf_eager(checkpoint, 1)
    report["hf_continuous_batching"] = hf_continuous_batching(checkpoint, concurrency)
    args.out.write_text(json.dumps(report, indent=1))
    theirs = report["hf_continuous_batching"]
    log(f"\n{report['device']}, Qwen2.5-{args.shape} shape, bf16, {PROMPT_TOKENS} in / {OUTPUT_TOKENS} out")
    log(f"| load | ours tok/s | transformers generate_batch ({theirs.get('attn_implementation')}) | ours / theirs |")
    log("|---|---|---|---|")
    eager = report["hf_eager_batch1_tok_per_s"]
    b1 = report["ours"]["batch1_decode_tok_per_s"]
    log(f"| batch-1 decode vs HF eager generate | {b1:.0f} | {eager:.0f} (eager) | {b1 / eager:.1f}x |")
    for n in concurrency:
        mine, peer = report["ours"][n], theirs.get(n)
        ratio = f"{mine / peer:.1f}x" if peer else "-"
        log(f"| {n} concurrent | {mine:.0f} | {peer and round(peer) or theirs.get(f'{n}_error', 'failed')} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
