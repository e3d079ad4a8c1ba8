"""What weight and KV-cache quantization cost in quality, and what they save in bytes.

On the real demo model (SmolLM2-135M-Instruct, CPU, fp32), through Hugging Face transformers with its
nn.Linear modules swapped for qwen_triton's quantized linears, and its K/V sent through qwen_triton's
quantized paged KV blocks (kv_quant.py: written token by token while decoding, as the engine will):

- perplexity on a fixed ~1900-token English text (benchmarks/data/quant_eval_text.txt);
- greedy-token agreement with the unquantized model over 64 tokens from each of 8 chat prompts, both
  teacher-forced (same prefix, does the argmax agree?) and free-running (token-by-token equality);
- bytes of weights and of K/V per token for each format, measured here and computed for Qwen2.5 shapes.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/quant_quality.py [--write-docs]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python_backend"))

from qwen_triton.layers.kv_cache import (  # noqa: E402
    allocate_quantized_kv,
    dequantize_kv,
    kv_bytes_per_token,
    write_quantized_kv,
)
from qwen_triton.quantization.formats import QuantizedLinear
from qwen_triton.quantization.quantize import quantize_model  # noqa: E402
from qwen_triton.quantization.spec import linear_weight_bytes, parse_spec

DEMO_MODEL = ROOT / "models" / "smollm2-135m-instruct"
EVAL_TEXT = ROOT / "benchmarks" / "data" / "quant_eval_text.txt"
DOCS = ROOT / "docs" / "benchmarks.md"
KV_BLOCK_SIZE = 16

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning a new language.",
    "What is 17 times 23? Show your steps.",
    "Describe a cat to someone who has never seen one.",
    "List the planets of the solar system in order.",
    "Why do people keep diaries?",
]

# (label, weight spec, KV kind); "none"/"auto" = the unquantized reference.
CONFIGS = [
    ("fp32 (reference)", "none", "auto"),
    ("int8", "int8", "auto"),
    ("int4 g128", "int4", "auto"),
    ("int4 g64", "int4:g64", "auto"),
    ("int4 g32", "int4:g32", "auto"),
    ("fp8", "fp8", "auto"),
    ("layered", "layered", "auto"),
    ("int8 KV", "none", "int8"),
    ("fp8 KV", "none", "fp8"),
]


# ------------------------------------------------------------------------------------------------------
# Model shapes (from the public config.json of each checkpoint)
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = [
    ModelShape("SmolLM2-135M", 576, 30, 9, 3, 1536, 49152, tied=True, qkv_bias=False),
    ModelShape("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, tied=True, qkv_bias=True),
    ModelShape("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, tied=False, qkv_bias=True),
    ModelShape("Qwen2.5-72B", 8192, 80, 64, 8, 29568, 152064, tied=False, qkv_bias=True),
]


def weight_bytes(shape: ModelShape, spec: str, float_bytes: int = 2) -> int:
    """Resident weight bytes of `shape` with `spec` applied, float parts in `float_bytes`."""
    formats = parse_spec(spec)
    h, d = shape.hidden, shape.head_dim
    qkv_out = (shape.heads + 2 * shape.kv_heads) * d
    per_layer = (
        linear_weight_bytes(h, qkv_out, formats["attention"], float_bytes)
        + linear_weight_bytes(shape.heads * d, h, formats["attention"], float_bytes)
        + linear_weight_bytes(h, 2 * shape.intermediate, formats["mlp"], float_bytes)
        + linear_weight_bytes(shape.intermediate, h, formats["mlp"], float_bytes)
        + (qkv_out if shape.qkv_bias else 0) * float_bytes
        + 2 * h * float_bytes  # the two RMSNorm weights
    )
    embed = shape.vocab * h * float_bytes
    lm_head_fmt = formats["lm_head"]
    lm_head = (
        0
        if (shape.tied and lm_head_fmt.kind == "none")
        else linear_weight_bytes(h, shape.vocab, lm_head_fmt, float_bytes)
    )
    return shape.layers * per_layer + embed + lm_head + h * float_bytes


# ------------------------------------------------------------------------------------------------------
# Quantized KV for a Hugging Face model: K/V (after RoPE) go through real quantized paged blocks
# ------------------------------------------------------------------------------------------------------


def _through_quantized_blocks(module, name: str, states: torch.Tensor, kind: str) -> torch.Tensor:
    """states [batch, kv_heads, seq, head_dim] (all positions so far) -> the same, as read back from an
    int8/fp8 paged cache into which positions not yet written are written now (token by token in decode).
    `reset_quantized_kv` must run before each new sequence."""
    batch, heads, seq, head_dim = states.shape
    caches = module.__dict__.setdefault("_kv_quant_caches", {})
    cache = caches.get(name)
    if cache is not None and (seq <= cache["written"] or batch != cache["batch"] or seq > cache["capacity"]):
        raise RuntimeError("quantized KV emulation: a new sequence began without reset_quantized_kv(model)")
    if cache is None:
        blocks_per_row = -(-(seq + 128) // KV_BLOCK_SIZE)
        k, s = allocate_quantized_kv(batch * blocks_per_row, KV_BLOCK_SIZE, heads, head_dim, kind)
        cache = caches[name] = dict(
            cache=k,
            scale=s,
            written=0,
            batch=batch,
            blocks_per_row=blocks_per_row,
            capacity=blocks_per_row * KV_BLOCK_SIZE,
        )
    start = cache["written"]
    new = states[:, :, start:].permute(0, 2, 1, 3).reshape(-1, heads, head_dim)
    rows = torch.arange(batch)[:, None] * cache["capacity"]
    slots = (rows + torch.arange(start, seq)[None, :]).flatten()
    write_quantized_kv(cache["cache"], cache["scale"], new, slots)
    cache["written"] = seq
    all_blocks = torch.arange(batch * cache["blocks_per_row"])
    read = dequantize_kv(cache["cache"][all_blocks], cache["scale"][all_blocks], states.dtype)
    read = read.view(batch, cache["capacity"], heads, head_dim)[:, :seq]
    return read.permute(0, 2, 1, 3)


def reset_quantized_kv(model) -> None:
    """Forget every layer's quantized K/V (call before each new sequence)."""
    for module in model.modules():
        module.__dict__.pop("_kv_quant_caches", None)


def use_quantized_kv(model, kind: str) -> None:
    """Route the model's attention through quantized K/V of `kind` ('auto' restores plain sdpa)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if kind == "auto":
        model.set_attn_implementation("sdpa")
        return
    name = f"qwen_triton_kv_{kind}"

    def attention(module, query, key, value, attention_mask, **kwargs):
        key = _through_quantized_blocks(module, "k", key, kind)
        value = _through_quantized_blocks(module, "v", value, kind)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    model.set_attn_implementation(name)


# ------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------


def load_model(path: Path = DEMO_MODEL):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise SystemExit(f"{path} is missing: run `make model` first")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def perplexity(model, token_ids: torch.Tensor) -> float:
    reset_quantized_kv(model)
    logits = model(token_ids[None]).logits[0, :-1].float()
    return float(torch.exp(F.cross_entropy(logits, token_ids[1:])))


class DequantizedOnce(torch.nn.Module):
    """A quantized linear with its weight dequantized once. Numerically identical to its forward on CPU
    (which is F.linear of the dequantized weight; tests/quant/test_linears.py checks that bit for bit),
    but it skips re-dequantizing every weight at every decode step, which this CPU cannot afford."""

    def __init__(self, module: QuantizedLinear):
        super().__init__()
        self.weight = module.dequantize_weight(torch.float32)
        self.bias = module.bias

    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def dequantize_once(model) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLinear):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, DequantizedOnce(module))


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    return list(ids if isinstance(ids, list) else ids["input_ids"])


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@torch.no_grad()
def greedy(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> torch.Tensor:
    """Greedy continuations [len(prompts), new_tokens] of a left-padded batch, EOS ignored so every run
    compares the same number of tokens."""
    reset_quantized_kv(model)
    ids, mask = left_padded(prompts, pad_id)
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
    return out[:, ids.shape[1] :]


@torch.no_grad()
def teacher_forced_agreement(model, prompt_ids: list[int], reference: torch.Tensor, eos_id: int | None) -> int:
    """How many of the reference's greedy tokens are also the argmax here, given the reference prefix
    (EOS excluded from the argmax, as min_new_tokens excludes it from the reference)."""
    reset_quantized_kv(model)
    ids = torch.cat([torch.tensor(prompt_ids), reference])
    logits = model(ids[None]).logits[0, len(prompt_ids) - 1 : -1]
    if eos_id is not None:
        logits[:, eos_id] = float("-inf")
    return int((logits.argmax(-1) == reference).sum())


def common_prefix_fraction(generated: torch.Tensor, references: torch.Tensor) -> float:
    """Mean over prompts of (tokens before the first difference) / tokens: free-running agreement."""
    differs = generated != references
    first = torch.where(differs.any(1), differs.float().argmax(1), torch.tensor(references.shape[1]))
    return float(first.float().mean() / references.shape[1])


def measure(base_model, spec, kv_kind, text_ids, prompts, references, args, pad_id, eos_id):
    model = copy.deepcopy(base_model)
    report = quantize_model(model, spec)
    dequantize_once(model)
    use_quantized_kv(model, kv_kind)
    started = time.perf_counter()
    ppl = perplexity(model, text_ids)
    forced = sum(teacher_forced_agreement(model, p, r, eos_id) for p, r in zip(prompts, references))
    free = (
        None
        if args.no_free_run
        else common_prefix_fraction(greedy(model, prompts, args.new_tokens, pad_id), references)
    )
    return dict(
        ppl=ppl,
        forced=forced / references.numel(),
        free=free,
        model_bytes=report.model_bytes_after,
        seconds=time.perf_counter() - started,
    )


def run(args) -> str:
    torch.manual_seed(0)
    model, tokenizer = load_model()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    text_ids = torch.tensor(tokenizer(EVAL_TEXT.read_text()).input_ids)[: args.text_tokens]
    prompts = [chat_prompt_ids(tokenizer, p) for p in PROMPTS[: args.prompts]]
    references = greedy(model, prompts, args.new_tokens, pad_id)

    rows = []
    for label, spec, kv_kind in CONFIGS:
        result = measure(model, spec, kv_kind, text_ids, prompts, references, args, pad_id, tokenizer.eos_token_id)
        rows.append((label, spec, kv_kind, result))
        print(
            f"{label:24s} ppl {result['ppl']:.3f}  forced {result['forced']:.3f}  "
            f"free {result['free']}  {result['seconds']:.0f}s",
            flush=True,
        )
    return render(rows, len(text_ids), args)


def render(rows, text_tokens: int, args) -> str:
    base_ppl = rows[0][3]["ppl"]
    base_bytes = rows[0][3]["model_bytes"]
    lines = [
        f"SmolLM2-135M-Instruct (fp32, CPU), perplexity over {text_tokens} tokens of "
        f"`benchmarks/data/quant_eval_text.txt`, greedy agreement over {args.new_tokens} tokens x "
        f"{args.prompts} chat prompts, KV blocks of {KV_BLOCK_SIZE}. *top-1 agree*: share of the reference's "
        "greedy tokens that are also this model's argmax after the same prefix. *identical prefix*: mean share "
        "of the free-running greedy continuation that equals the reference's before the first difference.",
        "",
        "| config | weights | KV | perplexity | vs fp32 | top-1 agree | identical prefix | model MiB (fp32 base) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, spec, kv_kind, r in rows:
        free = "-" if r["free"] is None else f"{r['free']:.1%}"
        lines.append(
            f"| {label} | `{spec}` | {kv_kind} | {r['ppl']:.3f} | {r['ppl'] / base_ppl - 1:+.2%} | "
            f"{r['forced']:.1%} | {free} | {r['model_bytes'] / 2**20:.1f} ({r['model_bytes'] / base_bytes:.0%}) |"
        )
    lines += ["", "Weight bytes by format (bf16 baseline; embeddings stay bf16; GiB = 2^30 bytes):", ""]
    specs = [
        ("bf16", "none"),
        ("int8", "int8"),
        ("int4 g128", "int4"),
        ("int4 g64", "int4:g64"),
        ("fp8", "fp8"),
        ("layered", "layered"),
    ]
    lines.append("| model | " + " | ".join(name for name, _ in specs) + " |")
    lines.append("| --- |" + " --- |" * len(specs))
    for shape in SHAPES:
        base = weight_bytes(shape, "none")
        cells = [
            f"{weight_bytes(shape, spec) / 2**30:.3f} ({weight_bytes(shape, spec) / base:.0%})" for _, spec in specs
        ]
        lines.append(f"| {shape.name} | " + " | ".join(cells) + " |")
    lines += ["", "KV bytes per token (all layers, K+V; int8/fp8 include the fp32 scale per token and head):", ""]
    lines.append("| model | bf16 | int8 | fp8 | tokens per GiB bf16 -> int8 |")
    lines.append("| --- | --- | --- | --- | --- |")
    for shape in SHAPES:
        per = {k: kv_bytes_per_token(shape.layers, shape.kv_heads, shape.head_dim, k) for k in ("auto", "int8", "fp8")}
        lines.append(
            f"| {shape.name} | {per['auto']:,.0f} | {per['int8']:,.0f} | {per['fp8']:,.0f} | "
            f"{2**30 / per['auto']:,.0f} -> {2**30 / per['int8']:,.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"


def write_docs(table: str, command: str) -> None:
    """Replace (or add) the generated block inside the "Quantization" section of docs/benchmarks.md."""
    begin, end = "<!-- quant_quality:begin -->", "<!-- quant_quality:end -->"
    block = (
        f"{begin}\n_Generated {datetime.date.today().isoformat()} on {machine()} by:_\n\n"
        f"```\n{command}\n```\n\n{table}\n{end}"
    )
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif "## Quantization" in text:
        head, rest = text.split("## Quantization", 1)
        text = head + "## Quantization" + rest.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = text.rstrip("\n") + "\n\n## Quantization\n\n" + block + "\n"
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--text-tokens", type=int, default=4096, help="cap on the perplexity text's tokens")
    parser.add_argument("--no-free-run", action="store_true", help="skip free-running greedy generation")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    table = run(args)
    print(table)
    if args.write_docs:
        command = (
            "OMP_NUM_THREADS="
            + os.environ.get("OMP_NUM_THREADS", "")
            + " .venv/bin/python "
            + " ".join(["benchmarks/quant_quality.py"] + sys.argv[1:])
        )
        write_docs(table, command)


if __name__ == "__main__":
    main()
