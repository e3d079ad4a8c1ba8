"""Loading a DecoderModel: every tensor streams in one block at a time, already in its final format.

The one table of checkpoint names -> our modules is `DECODER_LINEARS` (plus `LM_HEAD`): which checkpoint
modules stack into which of our fused projections (q, k, v -> qkv_proj; gate, up -> gate_up_proj), in what
order, and the quantization role of each. Everything else (embeddings, norms) keeps the checkpoint's name
less its ``model.`` prefix. GPTQ/AWQ loading (quantization/prequantized.py) and the role lookup
(`module_roles`) read this table.

`load_model` runs in four steps, so that the device never holds more than the final weights plus one block
of source rows (and its quantization temporaries), and the host never more than one block:

1. Build on the meta device (no memory): the model in its dtype, each linear that a quantization rule
   covers replaced by its empty quantized module (quantization/streaming.py), a tied float head tied to
   the embedding (it never gets storage of its own). A GPTQ/AWQ checkpoint's layer linears are left out.
2. Plan (models/memory.py): the meta model's bytes plus the caller's reserve (KV, activations), logged;
   a plan larger than the device's free memory is refused here, before any allocation.
3. Allocate every tensor on the device, uninitialised: the final weights and nothing else.
4. Stream the sources: each checkpoint tensor is read a block of rows at a time from its safetensors file
   (models/checkpoint.py `CheckpointReader`; with load_format=random, each block is generated on the
   device instead), moved to the device, and written where it belongs: copied into its float parameter, or
   quantized on the device into its rows of a quantized module. q/k/v and gate/up land at their row
   offsets inside the fused projection, so no fused float copy ever exists. GPTQ/AWQ: each fused
   projection is read from its packed tensors (one projection on the host at a time) and swapped in.
   A progress line (tensors, GB, GB/s, ETA) goes to this module's logger while it runs.

Tensor-parallel seam: `shard`, optional and duck-typed (models never import parallel/), with
- ``shard.split``: the `TensorSplit` the model is built with (its per-rank head / row counts);
- ``shard.slice_of(name)``: this rank's part of checkpoint tensor `name`: None for the whole tensor, else
  an object with ``dim`` (0: output rows, 1: input columns), ``start`` and ``stop``.
The loader reads only that part (safetensors `get_slice`), checks its shape against the rank's module,
places it at the rank's row offset inside fused projections, and random loads generate the rank's shape.
Default: no sharding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qwen_triton.models.checkpoint import CheckpointReader
from qwen_triton.models.memory import (
    MemoryPlan,
    check_fits,
    free_device_bytes,
    refusal_options,
    tensor_bytes,
)
from qwen_triton.models.qwen2 import DecoderModel, RotaryEmbedding
from qwen_triton.quantization.formats import QuantizedLinear
from qwen_triton.quantization.prequantized import prequantized_config, read_fused_projection
from qwen_triton.quantization.spec import QuantFormat, parse_spec
from qwen_triton.quantization.streaming import empty_quantized_linear, quantize_rows_into

log = logging.getLogger(__name__)

GB = 1e9
# Elements per block of source rows. A block bounds the transient memory of a load: the block in the source
# dtype, its copy in the model dtype, and the float32 temporaries of quantizing it (about 5 x 4 bytes an
# element: 40 MB on the host). A GPU takes blocks 8x larger (320 MB of temporaries against tens of GB of
# weights): 8x fewer kernel launches.
HOST_BLOCK_ELEMENTS = 1 << 21
DEVICE_BLOCK_ELEMENTS = 1 << 24
RANDOM_STD = 0.02  # spread of random weights (load_format=random): the initialiser range of Qwen2.5 configs


# ----------------------------------------------------------------------------------------------------------
# The table: checkpoint modules -> our modules
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusedLinear:
    """One of our linears in each decoder layer, and the checkpoint modules stacked along its output rows."""

    target: str  # under ``layers.{i}.``
    role: str  # its quantization role (quantization/spec.py ROLES)
    sources: tuple[str, ...]  # under ``model.layers.{i}.``, in row order
    part_rows: Callable[[nn.Module], tuple[int, ...]]  # rows of each source, read off our layer module


DECODER_LINEARS = (
    FusedLinear(
        "self_attn.qkv_proj",
        "attention",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        lambda layer: (layer.self_attn.q_size, layer.self_attn.kv_size, layer.self_attn.kv_size),
    ),
    FusedLinear(
        "self_attn.o_proj", "attention", ("self_attn.o_proj",), lambda layer: (layer.self_attn.o_proj.out_features,)
    ),
    FusedLinear(
        "mlp.gate_up_proj",
        "mlp",
        ("mlp.gate_proj", "mlp.up_proj"),
        lambda layer: (layer.mlp.intermediate, layer.mlp.intermediate),
    ),
    FusedLinear("mlp.down_proj", "mlp", ("mlp.down_proj",), lambda layer: (layer.mlp.down_proj.out_features,)),
)
LM_HEAD = "lm_head"  # role and name alike; a tied head reads the embedding's tensor
EMBEDDING_SOURCE = "model.embed_tokens.weight"


def module_roles() -> dict[str, str]:
    """Leaf module name -> quantization role, for our fused modules and the checkpoint's separate ones."""
    roles = {LM_HEAD: "lm_head"}
    for linear in DECODER_LINEARS:
        for name in (linear.target, *linear.sources):
            roles[name.rsplit(".", 1)[-1]] = linear.role
    return roles


def role_of(name: str) -> str | None:
    """Our linear's dotted name (``layers.3.mlp.down_proj``, ``lm_head``) -> its role; None for others."""
    if name == LM_HEAD:
        return "lm_head"
    for linear in DECODER_LINEARS:
        if name.endswith("." + linear.target):
            return linear.role
    return None


# ----------------------------------------------------------------------------------------------------------
# Where each source tensor goes
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Destination:
    """Rows first_row.. of a float tensor, or of a quantized module's stored rows (quantized on arrival)."""

    tensor: torch.Tensor | None
    module: QuantizedLinear | None = None
    fmt: QuantFormat | None = None
    first_row: int = 0

    def write(self, row: int, rows: torch.Tensor) -> None:
        start = self.first_row + row
        if self.module is not None:
            quantize_rows_into(self.module, start, rows, self.fmt)
        else:
            self.tensor[start : start + rows.shape[0]].copy_(rows)


@dataclass
class Expected:
    """A source tensor the model needs: its shape (this rank's part) and every place it goes."""

    shape: tuple[int, ...]
    destinations: list[Destination]
    kind: str  # "weight", "bias" or "norm": what random values it gets


def expected_sources(model: DecoderModel, formats: dict[str, QuantFormat]) -> dict[str, Expected]:
    """Checkpoint tensor name -> Expected, for every float tensor the materialized model needs (a GPTQ/AWQ
    checkpoint's layer linears are not among them: `stream_prequantized` reads those whole)."""
    expected: dict[str, Expected] = {}
    linear_params: set[int] = set()
    for i, layer in enumerate(model.layers):
        for linear in DECODER_LINEARS:
            module = _submodule_or_none(layer, linear.target)
            if module is None:  # left out for a GPTQ/AWQ checkpoint
                continue
            linear_params.update(id(t) for t in [*module.parameters(), *module.buffers()])
            offset = 0
            for source, rows in zip(linear.sources, linear.part_rows(layer)):
                prefix = f"model.layers.{i}.{source}"
                expected[f"{prefix}.weight"] = Expected(
                    (rows, module.in_features), [_weight_destination(module, formats[linear.role], offset)], "weight"
                )
                if module.bias is not None:
                    expected[f"{prefix}.bias"] = Expected((rows,), [Destination(module.bias, first_row=offset)], "bias")
                offset += rows
    head = model.lm_head
    head_quantized = isinstance(head, QuantizedLinear)
    if head_quantized:
        linear_params.update(id(t) for t in head.buffers())
    for name, param in model.named_parameters():
        if id(param) in linear_params:
            continue
        source = name if name.startswith("lm_head.") else f"model.{name}"
        kind = "norm" if name.endswith("norm.weight") else "weight"
        expected[source] = Expected(tuple(param.shape), [Destination(param.data)], kind)
    if head_quantized:
        source = EMBEDDING_SOURCE if model.tie_word_embeddings else "lm_head.weight"
        head_dest = Destination(None, head, formats["lm_head"])
        if source in expected:
            expected[source].destinations.append(head_dest)
        else:
            expected[source] = Expected((head.out_features, head.in_features), [head_dest], "weight")
    return expected


def _weight_destination(module: nn.Module, fmt: QuantFormat, offset: int) -> Destination:
    if isinstance(module, QuantizedLinear):
        return Destination(None, module, fmt, offset)
    return Destination(module.weight.data, first_row=offset)


# ----------------------------------------------------------------------------------------------------------
# Building on meta, planning, allocating
# ----------------------------------------------------------------------------------------------------------


def build_on_meta(
    hf_config, max_model_len: int, dtype: torch.dtype, formats: dict[str, QuantFormat], shard, prequantized: bool
) -> DecoderModel:
    with torch.device("meta"):
        model = (
            DecoderModel(hf_config, max_model_len, shard.split)
            if shard is not None
            else DecoderModel(hf_config, max_model_len)
        )
    model = model.to(dtype)
    for name, module in list(model.named_modules()):
        role = role_of(name)
        if role is None:
            continue
        if prequantized and role != "lm_head":
            _set_submodule(model, name, None)  # comes whole from the checkpoint's packed tensors
        elif formats[role].kind != "none":
            quantized = empty_quantized_linear(
                formats[role],
                module.in_features,
                module.out_features,
                module.bias is not None,
                torch.device("meta"),
                dtype,
            )
            _set_submodule(model, name, quantized)
    if model.tie_word_embeddings and not isinstance(model.lm_head, QuantizedLinear):
        model.lm_head.weight = model.embed_tokens.weight
    return model


def materialize(model: DecoderModel, device: torch.device) -> None:
    """Allocate (uninitialised) every tensor still on meta, and move the real ones to `device`. A tied
    float head is skipped and tied again after: it shares the embedding's storage, never a copy."""
    tied_head = model.tie_word_embeddings and not isinstance(model.lm_head, QuantizedLinear)
    for module in model.modules():
        if tied_head and module is model.lm_head:
            continue
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.is_meta for t in tensors):
            module.to_empty(device=device, recurse=False)  # a GroupwiseLinear takes the device's layout
    if tied_head:
        model.lm_head.weight = model.embed_tokens.weight
    model.to(device)


def plan_memory(
    hf_config,
    model: DecoderModel,
    extra_weight_bytes: int,
    spec: str,
    dtype: torch.dtype,
    device: torch.device,
    reserve,
) -> MemoryPlan:
    """The plan of `model` (on meta) plus `reserve` = (KV bytes, activation bytes); refused when too big."""
    kv_bytes, act_bytes = reserve
    described = f" ({spec})" if spec not in ("", "none") else f" ({str(dtype).removeprefix('torch.')})"
    plan = MemoryPlan(
        tensor_bytes(model) + extra_weight_bytes, kv_bytes, act_bytes, free_device_bytes(device), described
    )
    log.info("%s", plan)
    if plan.free_bytes is not None and plan.needed_bytes > plan.free_bytes:
        with torch.device("meta"):
            float_model = DecoderModel(hf_config, 16).to(dtype)
        if float_model.tie_word_embeddings:
            float_model.lm_head.weight = float_model.embed_tokens.weight
        check_fits(plan, refusal_options(float_model, role_of, dtype.itemsize, spec))
    return plan


# ----------------------------------------------------------------------------------------------------------
# Sources: checkpoint tensors or random ones, read a block of rows at a time
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Source:
    name: str
    shape: tuple[int, ...]  # this rank's part
    nbytes: int  # bytes read from the checkpoint (or generated) for it
    read_rows: Callable[[int, int], torch.Tensor]  # rows start:stop of this rank's part


def checkpoint_sources(reader: CheckpointReader, expected: Mapping[str, Expected], shard) -> list[Source]:
    sources = []
    for name in reader.names():
        if name not in expected:
            continue  # rotary tables, a tied checkpoint's lm_head copy, a GPTQ/AWQ checkpoint's packed tensors
        info = reader.tensors[name]
        piece = shard.slice_of(name) if shard is not None else None
        shape = list(info.shape)
        if piece is not None:
            shape[piece.dim] = piece.stop - piece.start
        if tuple(shape) != expected[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(shape)} != model {expected[name].shape}")
        nbytes = info.nbytes * _numel(shape) // max(_numel(info.shape), 1)
        sources.append(Source(name, tuple(shape), nbytes, _row_reader(reader, name, piece)))
    missing = sorted(set(expected) - {s.name for s in sources})
    if missing:
        raise ValueError(f"checkpoint lacks tensors for: {missing[:8]}")
    return sources


def _row_reader(reader: CheckpointReader, name: str, piece) -> Callable[[int, int], torch.Tensor]:
    if piece is None:
        return lambda start, stop: reader.read(name, rows=(start, stop))
    if piece.dim == 0:
        return lambda start, stop: reader.read(name, rows=(piece.start + start, piece.start + stop))
    return lambda start, stop: reader.read(name, rows=(start, stop), cols=(piece.start, piece.stop))


def random_sources(
    expected: Mapping[str, Expected], device: torch.device, dtype: torch.dtype, seed: int = 0
) -> list[Source]:
    """Sources of random values generated on the device: normal(0, RANDOM_STD) weights, unit norms, zero
    biases. Timings are true, text is not."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def reader(shape, kind):
        def read_rows(start: int, stop: int) -> torch.Tensor:
            block = torch.empty((stop - start, *shape[1:]), dtype=dtype, device=device)
            if kind == "norm":
                return block.fill_(1.0)
            if kind == "bias":
                return block.zero_()
            return block.normal_(0.0, RANDOM_STD, generator=generator)

        return read_rows

    return [
        Source(name, e.shape, _numel(e.shape) * dtype.itemsize, reader(e.shape, e.kind)) for name, e in expected.items()
    ]


def row_blocks(shape: tuple[int, ...], block_elements: int) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges of at most `block_elements` elements each (at least one row)."""
    rows = shape[0]
    per_row = max(_numel(shape[1:]), 1)
    step = max(1, block_elements // per_row)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _numel(shape) -> int:
    total = 1
    for n in shape:
        total *= n
    return total


# ----------------------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------------------


class LoadProgress:
    """Tensors and bytes done, rate and time left, logged every `interval_s` seconds and once at the end:
    a large model takes minutes, and a server that says nothing for minutes looks dead."""

    def __init__(self, total_tensors: int, total_bytes: int, interval_s: float = 5.0, clock=time.monotonic, emit=None):
        self.total_tensors, self.total_bytes = total_tensors, total_bytes
        self.tensors = self.bytes = 0
        self.interval_s, self.clock = interval_s, clock
        self.emit = emit or (lambda line: log.info("%s", line))
        self.started = self.last_emit = clock()

    def advance(self, nbytes: int, tensors: int = 1) -> None:
        self.tensors += tensors
        self.bytes += nbytes
        now = self.clock()
        if now - self.last_emit >= self.interval_s:
            self.last_emit = now
            self.emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or self.clock()) - self.started, 1e-9)
        rate = self.bytes / elapsed
        eta = (self.total_bytes - self.bytes) / rate if rate > 0 else float("inf")
        return (
            f"loading weights: {self.tensors}/{self.total_tensors} tensors, {self.bytes / GB:.2f}/"
            f"{self.total_bytes / GB:.2f} GB, {rate / GB:.2f} GB/s, ETA {eta:.0f} s"
        )

    def finish(self) -> None:
        elapsed = max(self.clock() - self.started, 1e-9)
        self.emit(
            f"loaded weights: {self.tensors} tensors, {self.bytes / GB:.2f} GB in {elapsed:.1f} s "
            f"({self.bytes / elapsed / GB:.2f} GB/s)"
        )


# ----------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def stream_sources(
    sources: list[Source],
    expected: Mapping[str, Expected],
    device: torch.device,
    dtype: torch.dtype,
    progress: LoadProgress,
) -> None:
    for source in sources:
        destinations = expected[source.name].destinations
        block_elements = HOST_BLOCK_ELEMENTS if device.type == "cpu" else DEVICE_BLOCK_ELEMENTS
        for start, stop in row_blocks(source.shape, block_elements):
            block = source.read_rows(start, stop).to(device=device, dtype=dtype)
            for destination in destinations:
                destination.write(start, block)
            del block  # freed before the next block is read
        progress.advance(source.nbytes)


class _PackedView(Mapping):
    """The checkpoint's tensors, read on access: what the GPTQ/AWQ readers see. Counts bytes read."""

    def __init__(self, reader: CheckpointReader, progress: LoadProgress):
        self.reader, self.progress = reader, progress

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.reader.tensors:
            raise KeyError(name)
        self.progress.advance(self.reader.tensors[name].nbytes)
        return self.reader.read(name)

    def __contains__(self, name) -> bool:
        return name in self.reader.tensors

    def __iter__(self):
        return iter(self.reader.tensors)

    def __len__(self) -> int:
        return len(self.reader.tensors)


@torch.no_grad()
def stream_prequantized(
    model: DecoderModel, reader: CheckpointReader, quant_config: dict, device, dtype, progress: LoadProgress
) -> None:
    """Each fused projection of each layer built from its packed tensors on the host, then moved in (which
    stores it in the layout the device's kernels read)."""
    view = _PackedView(reader, progress)
    for i, layer in enumerate(model.layers):
        for linear in DECODER_LINEARS:
            prefixes = [f"model.layers.{i}.{source}" for source in linear.sources]
            module = read_fused_projection(view, prefixes, quant_config, dtype)
            _set_submodule(layer, linear.target, module.to(device))


def _packed_layer_bytes(reader: CheckpointReader, num_layers: int) -> tuple[int, int]:
    """(tensor count, bytes) of the checkpoint tensors under the layers' linears (GPTQ/AWQ packed ones)."""
    prefixes = tuple(
        f"model.layers.{i}.{s}." for i in range(num_layers) for linear in DECODER_LINEARS for s in linear.sources
    )
    infos = [info for name, info in reader.tensors.items() if name.startswith(prefixes)]
    return len(infos), sum(info.nbytes for info in infos)


# ----------------------------------------------------------------------------------------------------------
# The whole load
# ----------------------------------------------------------------------------------------------------------


def load_model(
    hf_config,
    checkpoint: Path | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    max_model_len: int,
    load_format: str = "auto",
    quantization: str = "none",
    reserve: tuple[int, int] = (0, 0),
    shard=None,
    progress_interval_s: float = 5.0,
) -> DecoderModel:
    """The model of `hf_config` on `device`, its weights from `checkpoint` (load_format auto) or random
    (load_format random), each linear in the format `quantization` gives its role. `reserve`: (KV bytes,
    activation bytes) the memory plan adds to the weights before checking the device can hold them."""
    quant_config = prequantized_config(hf_config) if load_format == "auto" else None
    spec = quantization if quantization not in ("", "none") else "none"
    if quant_config is not None and spec != "none":
        raise ValueError(
            f"quantization: the checkpoint is already {quant_config['quant_method']}; leave quantization at none"
        )
    if quant_config is not None and shard is not None:
        raise ValueError("tensor_parallel_size: GPTQ/AWQ checkpoints are read on one device only; use 1")
    formats = parse_spec(spec)
    reader = CheckpointReader(checkpoint) if load_format == "auto" else None
    model = build_on_meta(hf_config, max_model_len, dtype, formats, shard, prequantized=quant_config is not None)
    packed_tensors, packed_bytes = _packed_layer_bytes(reader, len(model.layers)) if quant_config else (0, 0)
    plan_memory(
        hf_config,
        model,
        packed_bytes,
        spec if quant_config is None else quant_config["quant_method"],
        dtype,
        device,
        reserve,
    )

    # The rotary tables are computed, not loaded: built for real, so materialize leaves them alone.
    model.rotary = RotaryEmbedding(model.layers[0].self_attn.head_dim, max_model_len, model.rotary.theta).to(device)
    materialize(model, device)
    expected = expected_sources(model, formats)
    sources = (
        checkpoint_sources(reader, expected, shard) if reader is not None else random_sources(expected, device, dtype)
    )
    progress = LoadProgress(
        len(sources) + packed_tensors, sum(s.nbytes for s in sources) + packed_bytes, interval_s=progress_interval_s
    )
    if quant_config is not None:
        stream_prequantized(model, reader, quant_config, device, dtype, progress)
    stream_sources(sources, expected, device, dtype, progress)
    progress.finish()
    return model.eval()


def _submodule_or_none(root: nn.Module, name: str) -> nn.Module | None:
    """root's submodule `name`, or None where it was left out (get_submodule refuses a None slot)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    return getattr(parent, leaf)


def _set_submodule(root: nn.Module, name: str, module: nn.Module | None) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)
