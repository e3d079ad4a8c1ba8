"""One engine step on the device: batch tensors from the schedule, the forward pass, the logits.

On CUDA, pure-decode steps replay CUDA graphs captured for a ladder of batch sizes (a batch is padded
up to the next captured size); padding rows write their K/V into a reserved scratch block, so they never
touch a real sequence's cache. Mixed steps (prompt chunks beside decode rows) of up to
`mixed_graph_max_tokens` tokens replay graphs captured for a ladder of token counts
(MIXED_GRAPH_TOKENS), their attention in kernels.chunked_attention's fixed launches: eagerly, such a step costs
the host ~15 ms on a 7B model whatever its tokens, so a small prompt chunk per step (the prefill cap
that keeps decode flowing) would cost a large step. Larger mixed steps, windowed attention and
quantized KV caches run eagerly. Graphs need the in-place paged decode kernel: without it (CPU, or no
triton package) every step runs eagerly.

A step is first written down as host lists (`HostStep`), then run (`execute`). With tensor parallelism
rank 0's runner hands each HostStep to the other ranks (`send_step`), whose runners execute it too; the
input tokens that only rank 0's device holds are broadcast from it, and the model's all-reduces run
inside the captured decode graphs like any other kernel (untested on GPUs here: no multi-GPU machine).
At tensor_parallel_size 1 there is no group and nothing is sent.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from qwen_triton.engine.graph_inputs import GraphInputs, MixedGraphInputs
from qwen_triton.engine.scheduler import ScheduledSequence
from qwen_triton.layers.attention import AttentionMetadata, cuda_decode_kernel
from qwen_triton.layers.kv_cache import KVCache
from qwen_triton.models.qwen2 import DecoderModel
from qwen_triton.parallel.group import TensorParallelGroup
from qwen_triton.transfer import to_device

# Prompt lengths run once at start-up on CUDA, before serving. The quantized linears' Triton GEMMs
# compile one variant per class of row counts (BLOCK_M 16 / 32 / 64, and Triton specializes M on being
# a multiple of 16), and a first request would wait for those compilations: tens of times a warm
# engine's TTFT for a 512-token prompt. Decode row counts are compiled by the CUDA-graph captures.
PREFILL_WARM_UP_LENGTHS = (24, 32, 40, 64, 512)
# Token counts of the captured mixed-step graphs (up to mixed_graph_max_tokens); a step is padded up to
# the next one.
MIXED_GRAPH_TOKENS = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048)


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor | None  # rows of the flat hidden states whose logits are needed (None: all)


@dataclass
class HostStep:
    """One step's inputs on the host: what every tensor-parallel rank needs to run it (picklable)."""

    input_ids: list[int]  # placeholders at the rows in on_device
    positions: list[int]
    slots: list[int]
    query_lens: list[int]
    context_lens: list[int]
    block_tables: np.ndarray | list[list[int]]  # padded int32 array; per-row lists for a graph replay
    sample_rows: list[int] | None  # None: every row samples
    on_device: list[int]  # rows whose input token is still on rank 0's device (a step launched ahead)
    graph: str  # "decode" / "mixed": replayed through a captured CUDA graph of that kind; "": eager


class ModelRunner:
    def __init__(
        self,
        model: DecoderModel,
        kv_cache: KVCache,
        scratch_block: int,
        max_model_len: int,
        max_num_seqs: int,
        window: int = 0,
        sinks: int = 0,
        cuda_graphs: bool = True,
        max_num_batched_tokens: int | None = None,
        mixed_graph_max_tokens: int = 0,
        group: TensorParallelGroup | None = None,
        send_step: Callable[[HostStep], None] | None = None,
    ):
        self.model = model
        self.group = group  # None: a single device
        self.send_step = send_step  # rank 0 of a tensor-parallel engine: hands each step to the others
        self.kv_cache = kv_cache
        self.block_size = kv_cache.spec.block_size
        self.scratch_block = scratch_block
        self.max_blocks = -(-max_model_len // self.block_size)
        self.window, self.sinks = window, sinks
        self.device = next(model.parameters()).device
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, GraphInputs]] = {}
        self.graph_sizes: list[int] = []
        self.mixed_graphs: list[tuple[torch.cuda.CUDAGraph, torch.Tensor, MixedGraphInputs]] = []
        if self.device.type == "cuda" and cuda_decode_kernel() is not None:
            self._compile_decode_variants()
            self._warm_up_prefill(min(max_model_len, max_num_batched_tokens or max_model_len))
            if cuda_graphs:
                self._capture_graphs(max_num_seqs)
                if self._mixed_graphs_apply():
                    limit = min(mixed_graph_max_tokens, max_num_batched_tokens or mixed_graph_max_tokens)
                    self._capture_mixed_graphs([n for n in MIXED_GRAPH_TOKENS if n <= limit], max_num_seqs)

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSequence], device_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [number of sampling sequences, vocab] in float32.

        `device_ids`: for a step launched before the host has read the previous step's tokens, a device tensor
        with one token per scheduled row: the input of each row whose input is still on the device
        (`ScheduledSequence.input_on_device`); other rows' entries are not read.
        """
        step = self._host_step(scheduled, device_ids)
        if self.send_step is not None:
            self.send_step(step)
        return self.execute(step, device_ids)

    @torch.inference_mode()
    def execute(self, step: HostStep, device_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run a step written down by `_host_step` (on rank 0, or on another rank that received it)."""
        if step.graph == "decode":
            hidden, sample_rows = self._replay(step, device_ids)
        elif step.graph == "mixed":
            hidden, sample_rows = self._replay_mixed(step, device_ids)
        else:
            inputs = self._prepare(step, device_ids)
            hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta, self.kv_cache)
            sample_rows = inputs.sample_rows
        if sample_rows is not None:
            hidden = hidden[sample_rows]
        return self.model.compute_logits(hidden)

    def _host_step(self, scheduled: list[ScheduledSequence], device_ids: torch.Tensor | None) -> HostStep:
        batch = len(scheduled)
        decode = all(item.num_tokens == 1 for item in scheduled)
        on_device = self._rows_on_device(scheduled, device_ids)
        if decode:
            graph = "decode" if self.graph_sizes and batch <= self.graph_sizes[-1] else ""
            host_ids, positions, slots, context_lens = self._decode_rows(scheduled)
            query_lens = [1] * batch
            sample_rows = self._decode_sample_rows(scheduled)
        else:
            host_ids, positions, slots, query_lens, context_lens, sample_rows = self._chunk_rows(scheduled)
            fits = self.mixed_graphs and self.mixed_graphs[-1][2].fits(len(positions), batch)
            graph = "mixed" if fits else ""
        tables = [item.seq.block_table for item in scheduled] if graph else self._block_tables(scheduled)
        return HostStep(host_ids, positions, slots, query_lens, context_lens, tables, sample_rows, on_device, graph)

    def _prepare(self, step: HostStep, device_ids: torch.Tensor | None) -> StepInputs:
        meta = AttentionMetadata(
            slot_mapping=to_device(step.slots, torch.long, self.device),
            block_tables=to_device(step.block_tables, torch.int32, self.device),
            context_lens=to_device(step.context_lens, torch.int32, self.device),
            is_decode=len(step.positions) == len(step.query_lens),
            query_lens=step.query_lens,
            context_lens_cpu=step.context_lens,
            window=self.window,
            sinks=self.sinks,
        )
        input_ids = self._input_ids(step.input_ids, step.on_device, device_ids, step.query_lens)
        if step.on_device and self.group is not None:
            self.group.broadcast(input_ids)  # rank 0 holds those tokens; the other ranks have placeholders
        return StepInputs(
            input_ids,
            to_device(step.positions, torch.long, self.device),
            meta,
            None if step.sample_rows is None else to_device(step.sample_rows, torch.long, self.device),
        )

    def _input_ids(
        self, host_ids: list[int], on_device: list[int], device_ids: torch.Tensor | None, query_lens: list[int]
    ) -> torch.Tensor:
        """The step's input tokens: the host's, with the rows in `on_device` (one token each, the last of
        their row) taken from `device_ids` (None on a tensor-parallel rank other than 0: placeholders stay,
        for the broadcast to overwrite)."""
        if device_ids is None:
            return to_device(host_ids, torch.long, self.device)
        if on_device and len(on_device) == len(host_ids):
            return device_ids  # a decode step continuing every row of the step in flight
        input_ids = to_device(host_ids, torch.long, self.device)
        if on_device:
            ends = list(itertools.accumulate(query_lens))
            flat = to_device([ends[row] - 1 for row in on_device], torch.long, self.device)
            rows = to_device(on_device, torch.long, self.device)
            input_ids.index_copy_(0, flat, device_ids.index_select(0, rows))
        return input_ids

    @staticmethod
    def _rows_on_device(scheduled: list[ScheduledSequence], device_ids: torch.Tensor | None) -> list[int]:
        """Rows whose input token is still on the device (none when the step was not launched ahead)."""
        if device_ids is None:
            return []
        return [row for row, item in enumerate(scheduled) if item.input_on_device]

    @staticmethod
    def _decode_sample_rows(scheduled: list[ScheduledSequence]) -> list[int] | None:
        """Rows of a decode step to sample: None for all, as usual (no gather needed); a prompt's 1-token
        chunk that is not its last does not sample."""
        sampling = [row for row, item in enumerate(scheduled) if item.samples]
        return None if len(sampling) == len(scheduled) else sampling

    def _decode_rows(self, scheduled: list[ScheduledSequence]):
        """One new token per sequence: the common step, kept to a few list operations per row. A row whose
        input is still on the device gets a placeholder id (see _input_ids)."""
        bs = self.block_size
        input_ids, positions, slots = [], [], []
        for item in scheduled:
            seq = item.seq
            pos = seq.num_computed_tokens
            input_ids.append(seq.token_ids[pos] if pos < len(seq.token_ids) else 0)
            positions.append(pos)
            slots.append(seq.block_table[pos // bs] * bs + pos % bs)
        return input_ids, positions, slots, [p + 1 for p in positions]

    def _chunk_rows(self, scheduled: list[ScheduledSequence]):
        input_ids, positions, slots, query_lens, context_lens, sample_rows = [], [], [], [], [], []
        for item in scheduled:
            seq, start = item.seq, item.seq.num_computed_tokens
            end = start + item.num_tokens
            input_ids += seq.token_ids[start:end]
            if end > len(seq.token_ids):  # its last input is still on the device (see _input_ids)
                input_ids.append(0)
            positions += range(start, end)
            slots += [
                seq.block_table[p // self.block_size] * self.block_size + p % self.block_size for p in range(start, end)
            ]
            query_lens.append(item.num_tokens)
            context_lens.append(end)
            if item.samples:
                sample_rows.append(len(input_ids) - 1)
        return input_ids, positions, slots, query_lens, context_lens, sample_rows

    def _block_tables(self, scheduled: list[ScheduledSequence]) -> np.ndarray:
        """[batch, longest table] int32. Holes (blocks released by the attention window) and padding point
        at the scratch block: always a valid address, and masked out of attention by position."""
        width = max(len(item.seq.block_table) for item in scheduled)
        tables = np.full((len(scheduled), width), self.scratch_block, dtype=np.int32)
        for row, item in enumerate(scheduled):
            tables[row, : len(item.seq.block_table)] = item.seq.block_table
        tables[tables < 0] = self.scratch_block
        return tables

    def _compile_decode_variants(self) -> None:
        """Decode rows of mixed steps run the paged kernel outside graphs, with split counts and table
        widths that vary: compile them all now, not in the middle of serving (measured on an H100:
        seconds of stalled TTFT at 64 concurrent requests when they compiled on first use)."""
        from qwen_triton.kernels.paged_attention import warm_up_variants

        k_cache, v_cache, k_scale, v_scale = self.kv_cache.layer(0)
        attn = self.model.layers[0].self_attn
        warm_up_variants(
            k_cache,
            v_cache,
            k_scale,
            v_scale,
            self.window,
            self.sinks,
            num_heads=attn.num_heads,
            dtype=next(self.model.parameters()).dtype,
        )

    @torch.inference_mode()
    def _warm_up_prefill(self, max_tokens: int) -> None:
        """One fresh prompt of each PREFILL_WARM_UP_LENGTHS length (up to `max_tokens`) through the model
        and the LM head. Its K/V go to the scratch block, which no sequence owns (tokens sharing a slot
        there is fine: nothing reads it back)."""
        bs = self.block_size
        for length in (n for n in PREFILL_WARM_UP_LENGTHS if n <= max_tokens):
            meta = AttentionMetadata(
                slot_mapping=to_device(
                    [self.scratch_block * bs + i % bs for i in range(length)], torch.long, self.device
                ),
                block_tables=to_device(
                    np.full((1, -(-length // bs)), self.scratch_block, dtype=np.int32), torch.int32, self.device
                ),
                context_lens=to_device([length], torch.int32, self.device),
                is_decode=False,
                query_lens=[length],
                context_lens_cpu=[length],
                window=self.window,
                sinks=self.sinks,
            )
            hidden = self.model(
                to_device([0] * length, torch.long, self.device),
                to_device(list(range(length)), torch.long, self.device),
                meta,
                self.kv_cache,
            )
            self.model.compute_logits(hidden[-1:])
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    # -- CUDA graphs -----------------------------------------------------------------------------

    def _capture_graphs(self, max_num_seqs: int) -> None:
        sizes = [1, 2, 4, 8] + list(range(16, max_num_seqs + 1, 16))
        self.graph_sizes = sorted({s for s in sizes if s <= max_num_seqs} | {max_num_seqs})
        pool = None
        for size in reversed(self.graph_sizes):  # largest first, so smaller graphs reuse its memory pool
            inputs = GraphInputs(
                size, self.max_blocks, self.block_size, self.scratch_block, self.device, self.window, self.sinks
            )
            graph, out = self._capture(inputs, pool)
            self.graphs[size] = (graph, out, inputs)
            pool = graph.pool()

    def _capture(self, inputs: GraphInputs | MixedGraphInputs, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """The model's forward over `inputs`, captured (memory from `pool`, None: a new one): (graph, output)."""
        args = (inputs.input_ids, inputs.positions, inputs.meta, self.kv_cache)
        self.model(*args)  # warm up (kernel compilation, autotuning) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self.model(*args)
        return graph, out

    def _mixed_graphs_apply(self) -> bool:
        """Mixed graphs hold kernels.chunked_attention, which attends to whole contexts in float caches."""
        windowed = self.window or any(getattr(layer.self_attn, "sliding_window", 0) for layer in self.model.layers)
        return not windowed and self.kv_cache.layer(0)[2] is None

    def _capture_mixed_graphs(self, token_counts: list[int], max_num_seqs: int) -> None:
        from qwen_triton.kernels.chunked_attention import tokens_per_item

        attn = self.model.layers[0].self_attn
        block_q = tokens_per_item(attn.num_heads, attn.num_kv_heads)
        pool = self.graphs[self.graph_sizes[-1]][0].pool() if self.graphs else None
        captured = []
        for tokens in reversed(token_counts):  # largest first, so smaller graphs reuse its memory pool
            inputs = MixedGraphInputs(
                tokens, max_num_seqs, self.max_blocks, self.block_size, self.scratch_block, self.device, block_q
            )
            graph, out = self._capture(inputs, pool)
            captured.append((graph, out, inputs))
            pool = graph.pool()
        self.mixed_graphs = captured[::-1]

    def _replay_mixed(self, step: HostStep, device_ids: torch.Tensor | None):
        """A mixed step through the graph of the next captured token count: (hidden states of its tokens,
        rows to sample)."""
        num_tokens = len(step.positions)
        graph, out, inputs = next(g for g in self.mixed_graphs if g[2].fits(num_tokens, len(step.query_lens)))
        inputs.upload(step.input_ids, step.positions, step.slots, step.query_lens, step.context_lens, step.block_tables)
        self._tokens_from_device(inputs.input_ids[:num_tokens], step, device_ids)
        graph.replay()
        return out[:num_tokens], to_device(step.sample_rows, torch.long, self.device)

    def _replay(self, step: HostStep, device_ids: torch.Tensor | None):
        """A decode step through the graph of the next captured size: (hidden states of its rows, rows to
        sample or None). One copy moves the host's inputs; rows whose input token is still on the device
        (a step launched ahead) then take it from `device_ids` (other tensor-parallel ranks: from rank 0's
        broadcast)."""
        batch = len(step.positions)
        graph, out, inputs = self.graphs[self.graph_sizes[bisect.bisect_left(self.graph_sizes, batch)]]
        inputs.upload(step.input_ids, step.positions, step.slots, step.context_lens, step.block_tables)
        self._tokens_from_device(inputs.input_ids[:batch], step, device_ids)
        graph.replay()
        sample_rows = step.sample_rows
        return out[:batch], None if sample_rows is None else to_device(sample_rows, torch.long, self.device)

    def _tokens_from_device(self, input_ids: torch.Tensor, step: HostStep, device_ids: torch.Tensor | None) -> None:
        """Into a graph's uploaded token ids, the rows' inputs still on the device (a step launched ahead):
        from `device_ids` on rank 0, from rank 0's broadcast on the other tensor-parallel ranks."""
        if step.on_device and device_ids is not None:
            input_ids.copy_(self._input_ids(step.input_ids, step.on_device, device_ids, step.query_lens))
        if step.on_device and self.group is not None:
            self.group.broadcast(input_ids)
