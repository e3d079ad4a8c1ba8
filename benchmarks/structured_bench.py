"""Per-token cost of structured output: constrained vs unconstrained decoding in the engine, at batch 1
and 64, beside the step's memory-bandwidth bound; then the host time of one step's token bitmask for the
grammar libraries installed (xgrammar, which the engine uses, and the peers it was chosen over).

  OMP_NUM_THREADS=2 python benchmarks/structured_bench.py                    # CPU, the demo model
  python benchmarks/structured_bench.py --batches 1,64 --tokens 128         # a CUDA machine, unchanged

The constrained requests follow a JSON schema (an array of at least 1000 objects with integers, bounded
strings, enum arrays and numbers in a range) that cannot complete within --tokens, so both runs produce
exactly batch * tokens tokens and differ only by the guide. Unconstrained steps are launched one ahead of
the host (overlap_steps); guided steps wait for their tokens (the next mask needs them), which is part of
the cost measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python_backend"))

from qwen_triton.engine.config import EngineConfig  # noqa: E402
from qwen_triton.engine.llm_engine import LLMEngine  # noqa: E402
from qwen_triton.engine.sampling_params import SamplingParams  # noqa: E402
from qwen_triton.structured.guide import GuidedDecoding  # noqa: E402

ITEM = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 100000},
        "name": {"type": "string", "maxLength": 24},
        "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["red", "green", "blue"]}},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["id", "name", "tags", "score"],
    "additionalProperties": False,
}
ENDLESS_SCHEMA = {"type": "array", "items": ITEM, "minItems": 1000}
PROMPT = [{"role": "user", "content": "List inventory records as a JSON array of objects."}]
# A short record, tokenized, drives the mask-only timings (the same tokens for every library).
RECORD = {"id": 42, "name": "Ada Lovelace", "tags": ["red", "blue"], "score": 0.9}


def memory_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large on-device copy (read + write), the bound of a decode step's weight reads."""
    src = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, repeats = time.perf_counter(), 5
    for _ in range(repeats):
        dst.copy_(src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * src.numel() * src.element_size() * repeats / (time.perf_counter() - start)


def weight_bytes(engine: LLMEngine) -> int:
    seen, total = set(), 0
    for tensor in [*engine.model.parameters(), *engine.model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def decode_run(engine: LLMEngine, batch: int, tokens: int, guided: GuidedDecoding | None) -> tuple[float, int]:
    """(seconds of the steps in which every request decodes, tokens they produced)."""
    prompt = engine.tokenizer.encode(messages=PROMPT)
    for i in range(batch):
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, guided_decoding=guided)
        engine.add_request(f"r{i}", prompt, params)
    seconds, produced, started = 0.0, 0, 0
    while engine.has_unfinished():
        start = time.perf_counter()
        outputs = engine.step()
        elapsed = time.perf_counter() - start
        new = sum(len(out.token_ids) for out in outputs)
        if started >= batch and len(outputs) == batch:  # every request past its prompt and still running
            seconds, produced = seconds + elapsed, produced + new
        started += sum(1 for out in outputs if len(out.token_ids) == out.completion_tokens)
    return seconds, produced


def engine_table(args) -> None:
    config = EngineConfig(
        model=args.model,
        load_format=args.load_format,
        device=args.device,
        dtype=args.dtype,
        max_model_len=2048,
        max_num_seqs=max(args.batches),
    )
    engine = LLMEngine(config)
    guide = GuidedDecoding.from_vllm({"json": ENDLESS_SCHEMA})
    engine.grammar_compiler.compile(guide)  # compiled once, outside the timings (cached per guide)
    bound_ms = weight_bytes(engine) / memory_bandwidth(engine.device) * 1e3
    print(
        f"\nEngine decode, {args.model} ({args.load_format} weights) on {engine.device} ({engine.dtype}), "
        f"{args.tokens} tokens per request"
    )
    print(f"step bound (weights once at the copy bandwidth measured now): {bound_ms:.2f} ms")
    print(
        "| batch | unconstrained ms/step | constrained ms/step | unconstrained ms/token | constrained ms/token "
        "| overhead ms/token | overhead % |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        decode_run(engine, batch, 4, None)  # warm-up: allocator, kernels
        decode_run(engine, batch, 4, guide)
        plain_s, plain_n = decode_run(engine, batch, args.tokens, None)
        guided_s, guided_n = decode_run(engine, batch, args.tokens, guide)
        plain_step, guided_step = plain_s / max(1, plain_n / batch), guided_s / max(1, guided_n / batch)
        per_plain, per_guided = plain_s / max(1, plain_n), guided_s / max(1, guided_n)
        print(
            f"| {batch} | {plain_step * 1e3:.2f} | {guided_step * 1e3:.2f} | {per_plain * 1e3:.3f} | "
            f"{per_guided * 1e3:.3f} | {(per_guided - per_plain) * 1e3:.3f} | {100 * (per_guided / per_plain - 1):.1f} |"
        )


def mask_table(args) -> None:
    """Host time to fill one step's bitmask, per library, over the record's tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    vocab = len(tokenizer)
    schema = json.dumps(ITEM)
    tokens = tokenizer.encode(json.dumps(RECORD, separators=(",", ":")), add_special_tokens=False)
    print(f"\nBitmask fill on the host, one step (mean over the {len(tokens)} tokens of a record), vocab {vocab}")
    print("| library | compile ms | " + " | ".join(f"batch {b} ms/step" for b in args.batches) + " |")
    print("|---|---:|" + "---:|" * len(args.batches))
    for name, make in (("xgrammar (engine)", _xgrammar), ("llguidance", _llguidance), ("outlines-core", _outlines)):
        try:
            compile_s, step_s = make(tokenizer, vocab, schema, tokens, args.batches)
        except ImportError:
            print(f"| {name} | not installed | | |")
            continue
        print(f"| {name} | {compile_s * 1e3:.1f} | " + " | ".join(f"{s * 1e3:.3f}" for s in step_s) + " |")


def _time_steps(fill, advance, matchers, tokens) -> float:
    times = []
    for token in tokens:
        start = time.perf_counter()
        fill(matchers)
        times.append(time.perf_counter() - start)
        for matcher in matchers:
            advance(matcher, token)
    return statistics.mean(times)


def _xgrammar(tokenizer, vocab, schema, tokens, batches):
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
    start = time.perf_counter()
    compiled = compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))
    compile_s = time.perf_counter() - start
    batch_matcher = xgrammar.BatchGrammarMatcher()
    results = []
    for batch in batches:
        bitmask = xgrammar.allocate_token_bitmask(batch, vocab)
        matchers = [xgrammar.GrammarMatcher(compiled) for _ in range(batch)]
        if batch == 1:  # as the engine does (matcher.BitmaskFiller): one row needs no thread pool
            fill = lambda ms: ms[0].fill_next_token_bitmask(bitmask, 0)
        else:
            fill = lambda ms: batch_matcher.batch_fill_next_token_bitmask(ms, bitmask)
        results.append(_time_steps(fill, lambda m, t: m.accept_token(t), matchers, tokens))
    return compile_s, results


def _llguidance(tokenizer, vocab, schema, tokens, batches):
    import llguidance
    import llguidance.hf
    import llguidance.torch

    lltokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    defaults = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=defaults)
    start = time.perf_counter()
    llguidance.LLMatcher(lltokenizer, grammar)  # compiles lazily: the first masks pay the rest
    compile_s = time.perf_counter() - start
    executor = llguidance.LLExecutor()
    results = []
    for batch in batches:
        bitmask = llguidance.torch.allocate_token_bitmask(batch, vocab)
        matchers = [llguidance.LLMatcher(lltokenizer, grammar) for _ in range(batch)]
        fill = lambda ms: llguidance.torch.fill_next_token_bitmask_par(
            executor, [(m, i) for i, m in enumerate(ms)], bitmask
        )
        results.append(_time_steps(fill, lambda m, t: m.consume_token(t), matchers, tokens))
    return compile_s, results


def _outlines(tokenizer, vocab, schema, tokens, batches):
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    eos = tokenizer.eos_token_id
    strings: dict[str, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        if token_id != eos:
            strings.setdefault(tokenizer.convert_tokens_to_string([token]), []).append(token_id)
    vocabulary = outlines_core.Vocabulary(eos, strings)
    start = time.perf_counter()
    index = outlines_core.Index(build_regex_from_schema(schema), vocabulary)
    compile_s = time.perf_counter() - start
    results = []
    for batch in batches:
        words = (vocab + 31) // 32
        bitmask = torch.zeros((batch, words), dtype=torch.int32)
        guides = [outlines_core.Guide(index) for _ in range(batch)]
        fill = lambda gs: [g.write_mask_into(bitmask[i].data_ptr(), words, 4) for i, g in enumerate(gs)]
        results.append(_time_steps(fill, lambda g, t: g.advance(t), guides, tokens))
    return compile_s, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--load-format", default="auto", help="random: random weights of the config's shapes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batches", default="1,64", type=lambda text: [int(b) for b in text.split(",")])
    parser.add_argument("--tokens", type=int, default=32, help="decoded tokens per request")
    parser.add_argument("--skip-engine", action="store_true", help="only the bitmask table")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_engine:
        engine_table(args)
    mask_table(args)


if __name__ == "__main__":
    main()
