"""Tensor-parallel engine on several GPUs of one host (issue 19): random weights at the Qwen2.5-7B and
-72B shapes, TP = 1 / 2 / 4 as the GPUs allow, every figure beside its bound.

Per (shape, TP size):
  - batch-1 decode tok/s beside the aggregate-bandwidth bound: TP x the measured copy bandwidth of one
    GPU, over the bytes a decode step reads on all ranks together (every rank reads its weight shard);
  - time to first token of one 512-token prompt (median of 5);
  - 64 concurrent requests (512-token prompts, 256 generated): output tok/s, TTFT and inter-token p50.
Peer in the same run: transformers eager `generate` at batch 1 on one GPU (7B: the 72B does not fit
one GPU in bf16), and the engine at TP=1 where the shape fits one GPU.

The engine starts its own rank processes (no torchrun): `EngineConfig(tensor_parallel_size=N)`. NVLink
multicast stays off (NCCL_NVLS_ENABLE=0 and friends, inherited by the ranks), as the device rules ask.

  python benchmarks/tp_bench.py --tokenizer DIR [--shapes 7b,72b] [--tp 1,2,4] [--out tp.json]
"""

from __future__ import annotations

import os

for _name, _value in (
    ("NCCL_NVLS_ENABLE", "0"),
    ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
    ("NVSHMEM_DISABLE_NVLS", "1"),
):
    os.environ[_name] = _value  # before torch / NCCL start, and inherited by the spawned ranks

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import (  # noqa: E402
    SHAPES,
    bytes_read_per_step,
    ceilings,
    decode_batch1,
    engine_for,
    hf_eager,
    make_checkpoint,
    pct,
    prompt_ids,
    release,
    run_requests,
)

ONE_GPU_BYTES = 141e9  # an H200; a shape whose bf16 weights exceed it is not run at TP=1
PROMPT, GENERATED, CONCURRENT = 512, 256, 64


def weight_bytes(shape: str) -> float:
    s = SHAPES[shape]
    hidden, inter, layers, heads, kv = (
        s["hidden_size"],
        s["intermediate_size"],
        s["num_hidden_layers"],
        s["num_attention_heads"],
        s["num_key_value_heads"],
    )
    head_dim = hidden // heads
    per_layer = hidden * (heads + 2 * kv) * head_dim + heads * head_dim * hidden + 3 * hidden * inter
    embeddings = s["vocab_size"] * hidden * (1 if s["tie_word_embeddings"] else 2)
    return 2.0 * (layers * per_layer + embeddings)


def measure(checkpoint: Path, tp: int, copy_bw: float) -> dict:
    engine = engine_for(checkpoint, tensor_parallel_size=tp, max_num_seqs=CONCURRENT, kv_cache_bytes=24 * 2**30)
    try:
        vocab = engine.hf_config.vocab_size
        step_bytes = bytes_read_per_step(engine) * tp  # rank 0's shard; the others read the same amount
        decode = decode_batch1(engine)
        ttfts = [run_requests(engine, prompt_ids(vocab, 1, PROMPT), 1)["ttft_s"][0] for _ in range(5)]
        load = run_requests(engine, prompt_ids(vocab, CONCURRENT, PROMPT), GENERATED)
    finally:
        engine.shutdown()
        del engine
        release()
    return {
        "tp": tp,
        "step_bytes": step_bytes,
        "decode_tok_s": decode,
        "decode_bound_tok_s": tp * copy_bw / step_bytes,
        "ttft_512_ms": 1e3 * statistics.median(ttfts),
        "c64_output_tok_s": load["output_tok_per_s"],
        "c64_ttft_p50_ms": 1e3 * pct(load["ttft_s"], 0.5),
        "c64_itl_p50_ms": 1e3 * pct(load["itl_s"], 0.5),
    }


def print_table(report: dict) -> None:
    print(f"\ncopy bandwidth of one GPU: {report['copy_bytes_per_s'] / 1e12:.2f} TB/s; GPUs: {report['gpus']}")
    print(
        "| shape | TP | batch-1 decode tok/s | bound (TP x copy BW) | % | TTFT 512 ms | 64 conc. out tok/s | "
        "64 conc. TTFT p50 ms | ITL p50 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape, rows in report["shapes"].items():
        for row in rows["engine"]:
            print(
                f"| {shape} | {row['tp']} | {row['decode_tok_s']:.1f} | {row['decode_bound_tok_s']:.1f} | "
                f"{100 * row['decode_tok_s'] / row['decode_bound_tok_s']:.0f} | {row['ttft_512_ms']:.1f} | "
                f"{row['c64_output_tok_s']:.0f} | {row['c64_ttft_p50_ms']:.1f} | {row['c64_itl_p50_ms']:.2f} |"
            )
        if rows.get("hf_eager_b1_tok_s") is not None:
            print(f"| {shape} | HF eager, 1 GPU | {rows['hf_eager_b1_tok_s']:.1f} | | | | | | |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a directory with tokenizer files")
    parser.add_argument("--shapes", default="7b,72b")
    parser.add_argument("--tp", default="1,2,4", help="TP sizes to run (those above the GPU count are skipped)")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    limits = ceilings()
    report = {"gpus": gpus, "copy_bytes_per_s": limits["copy_bytes_per_s"], "shapes": {}}
    with tempfile.TemporaryDirectory() as root:
        for shape in args.shapes.split(","):
            checkpoint = make_checkpoint(shape, args.tokenizer, Path(root))
            rows = report["shapes"][shape] = {"engine": []}
            for tp in (int(t) for t in args.tp.split(",")):
                if tp > gpus or (tp == 1 and weight_bytes(shape) > ONE_GPU_BYTES):
                    print(f"{shape} TP={tp}: skipped ({gpus} GPUs; bf16 weights {weight_bytes(shape) / 1e9:.0f} GB)")
                    continue
                print(f"{shape} TP={tp} ...", flush=True)
                rows["engine"].append(measure(checkpoint, tp, limits["copy_bytes_per_s"]))
                print(json.dumps(rows["engine"][-1]), flush=True)
            if not args.no_hf and weight_bytes(shape) < ONE_GPU_BYTES:
                rows["hf_eager_b1_tok_s"] = hf_eager(checkpoint, batch=1)
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
