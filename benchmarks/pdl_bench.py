"""Batch-1 decode with programmatic dependent launch off and on (kernels/pdl.py), on one CUDA GPU.

The decode graphs are captured when an engine is built, with the launch mode of that moment, so each
setting gets engines of its own; they alternate (off, on, off, on) so that drift of the card shows as
the spread between runs of one setting (--rounds). Random weights at real Qwen2.5 shapes, as gpu_bench.py.

  python benchmarks/pdl_bench.py --tokenizer DIR --shapes 0.5b,7b --formats none,int8,int4,fp8,layered
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_bench import FORMATS, bytes_read_per_step, ceilings, decode_batch1, engine_for, log, make_checkpoint, release  # noqa: E402


def measure(checkpoint: Path, fmt: str, pdl: str) -> tuple[float, int]:
    os.environ["QWEN_TRITON_PDL"] = pdl
    engine = engine_for(checkpoint, fmt, max_num_seqs=1)  # one captured graph: batch 1
    try:
        return decode_batch1(engine), bytes_read_per_step(engine)
    finally:
        del engine
        release()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shapes", default="0.5b,7b")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, alternating off / on")
    parser.add_argument("--settings", default="0,1", help="QWEN_TRITON_PDL values to run each round ('1': on only)")
    parser.add_argument("--out", type=Path, default=Path("pdl_bench.json"))
    args = parser.parse_args()
    bounds = ceilings()
    log("ceilings:", bounds)
    root = Path(tempfile.mkdtemp(prefix="qwen-pdl-"))
    rows = []
    for shape in args.shapes.split(","):
        checkpoint = make_checkpoint(shape, args.tokenizer, root)
        for fmt in args.formats.split(","):
            runs = {"0": [], "1": []}  # off, on
            weight_bytes = 0
            for pdl in args.settings.split(",") * args.rounds:
                tok_s, weight_bytes = measure(checkpoint, fmt, pdl)
                runs[pdl].append(tok_s)
                log(f"{shape} {fmt} PDL={pdl}: {tok_s:.1f} tok/s")
            bound = bounds["copy_bytes_per_s"] / weight_bytes
            rows.append({"shape": shape, "format": fmt, "bound_tok_per_s": bound, "off": runs["0"], "on": runs["1"]})
            args.out.write_text(
                json.dumps({"device": torch.cuda.get_device_name(), "ceilings": bounds, "rows": rows}, indent=1)
            )
    log(f"\nDevice: {torch.cuda.get_device_name()}; copy {bounds['copy_bytes_per_s'] / 1e12:.2f} TB/s")
    log(
        "\n| shape | format | PDL off tok/s (each run) | PDL on tok/s (each run) | gain | bound tok/s | % of bound off / on |"
    )
    log("|---|---|---|---|---|---|---|")
    for r in rows:
        off, on = max(r["off"], default=float("nan")), max(r["on"], default=float("nan"))
        log(
            f"| {r['shape']} | {r['format']} | {' / '.join(f'{v:.1f}' for v in r['off'])} | "
            f"{' / '.join(f'{v:.1f}' for v in r['on'])} | {on / off:.3f}x | {r['bound_tok_per_s']:.1f} | "
            f"{100 * off / r['bound_tok_per_s']:.0f} % / {100 * on / r['bound_tok_per_s']:.0f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
