"""Paged attention over the KV cache: write new K/V into their slots, then attend.

Three shapes of step:
- decode (every sequence adds one token): a batched read of each sequence's blocks; on CUDA the
  Triton kernel in `kernels.paged_attention` reads the blocks in place, elsewhere a padded gather.
- mixed steps replayed through a CUDA graph (engine/model_runner.py): every row, decode or chunk, in
  one launch of `kernels.chunked_attention`, planned on the host before the replay;
- other prefill / mixed steps (some sequences add a chunk): one-token rows take the decode path, whole fresh prompts
  one causal attention over their own K/V (on CUDA the variable-length flash kernel over the packed
  rows, elsewhere a padded SDPA batch), and continuing chunks gather their context and run SDPA with a
  causal mask that starts at the chunk's offset (see `_mixed`).
An optional StreamingLLM window keeps the first `sinks` and the last `window` positions.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from qwen_triton.layers.kv_cache import gather_blocks, gather_dequantized, write_quantized_kv
from qwen_triton.transfer import to_device


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V goes
    block_tables: torch.Tensor  # [batch, max_blocks] int32, padded with a scratch block
    context_lens: torch.Tensor  # [batch] int32: tokens in cache after this step
    is_decode: bool  # every sequence computes exactly one token
    query_lens: list[int] = field(default_factory=list)  # prefill/mixed: tokens per sequence
    context_lens_cpu: list[int] = field(default_factory=list)
    window: int = 0
    sinks: int = 0
    # A mixed step captured in a CUDA graph: where each sequence's tokens start (int32 [sequences + 1])
    # and the work items of kernels.chunked_attention; set, they replace the host-side plan.
    query_start: torch.Tensor | None = None
    chunk_items: torch.Tensor | None = None
    decode_items: torch.Tensor | None = None
    _plan: MixedPlan | None = None

    _variants: dict = field(default_factory=dict)

    def plan(self) -> MixedPlan:
        if self._plan is None:
            self._plan = build_plan(self)
        return self._plan

    def for_sliding_layer(self, window: int) -> AttentionMetadata:
        """The same step seen by a layer with its own sliding window (Qwen2 `sliding_attention`): the
        narrower of that window and the engine's, built once per step and shared by such layers."""
        if self.window and self.window <= window:
            return self
        if window not in self._variants:
            self._variants[window] = AttentionMetadata(
                slot_mapping=self.slot_mapping,
                block_tables=self.block_tables,
                context_lens=self.context_lens,
                is_decode=self.is_decode,
                query_lens=self.query_lens,
                context_lens_cpu=self.context_lens_cpu,
                window=window,
                sinks=self.sinks if self.window else 0,
            )
        return self._variants[window]


def write_kv(k: torch.Tensor, v: torch.Tensor, cache_layer, slot_mapping: torch.Tensor) -> None:
    k_cache, v_cache, k_scale, v_scale = cache_layer
    if k_scale is None:
        k_cache.view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
        v_cache.view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))
        return
    write_quantized_kv(k_cache, k_scale, k, slot_mapping)
    write_quantized_kv(v_cache, v_scale, v, slot_mapping)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache_layer, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim], k/v: the same tokens' new keys/values (already in the cache)."""
    if meta.is_decode:
        return _decode(q, cache_layer, meta, scale)
    if meta.chunk_items is not None:
        return _chunked(q, cache_layer, meta, scale)
    return _mixed(q, k, v, cache_layer, meta, scale)


def _decode(q, cache_layer, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    kernel = cuda_decode_kernel() if q.is_cuda else None
    if kernel is not None:
        k_cache, v_cache, k_scale, v_scale = cache_layer
        return kernel(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.context_lens,
            scale,
            k_scale=k_scale,
            v_scale=v_scale,
            window=meta.window,
            sinks=meta.sinks,
        )
    return _decode_gather(q, cache_layer, meta, scale)


def _chunked(q, cache_layer, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """A mixed step in one kernel launch over the cache (its launch is fixed: a CUDA graph holds it)."""
    from qwen_triton.kernels.chunked_attention import chunked_attention

    k_cache, v_cache, _, _ = cache_layer
    return chunked_attention(
        q,
        k_cache,
        v_cache,
        meta.block_tables,
        meta.context_lens,
        meta.query_start,
        meta.chunk_items,
        meta.decode_items,
        scale,
    )


@functools.cache
def cuda_decode_kernel():
    """The Triton decode kernel, when the triton package is importable (GPU machines)."""
    try:
        from qwen_triton.kernels.paged_attention import paged_decode_attention
    except ImportError:
        return None
    return paged_decode_attention


def visible_keys(query_pos: torch.Tensor, key_pos: torch.Tensor, context_len, window: int, sinks: int) -> torch.Tensor:
    """Which keys a query sees (broadcast over the positions given): causal, inside the context, and with
    a StreamingLLM window (``window`` > 0) only the last ``window`` positions up to the query plus the
    first ``sinks``. The decode kernel (kernels/paged_attention.py) applies the same rule."""
    mask = (key_pos <= query_pos) & (key_pos < context_len)
    if window:
        mask &= (key_pos > query_pos - window) | (key_pos < sinks)
    return mask


def _decode_gather(q, cache_layer, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Reference decode: gather every sequence's blocks (padded to the longest) and attend."""
    k_cache, v_cache, k_scale, v_scale = cache_layer
    batch, heads, dim = q.shape
    k = gather_blocks(k_cache, k_scale, meta.block_tables, q.dtype)  # [batch, L, kv_heads, dim]
    v = gather_blocks(v_cache, v_scale, meta.block_tables, q.dtype)
    kv_heads = k.shape[2]
    key_pos = torch.arange(k.shape[1], device=q.device)
    query_pos = (meta.context_lens.long() - 1).unsqueeze(1)
    mask = visible_keys(query_pos, key_pos.unsqueeze(0), meta.context_lens.long().unsqueeze(1), meta.window, meta.sinks)
    qg = q.view(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k.float()) * scale
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = torch.einsum("bhgl,blhd->bhgd", scores.softmax(dim=-1), v.float())
    return out.reshape(batch, heads, dim).to(q.dtype)


def _mixed(q, k, v, cache_layer, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """A step with prompt chunks. Rows are served in three groups, each batched where it can be:
    one-token rows by the decode path; whole fresh prompts by one causal attention call over their own
    K/V (no cache read at all; see `_fresh_prompts`); continuing chunks (after a cached prefix or an
    earlier chunk) one by one over their gathered context."""
    plan = meta.plan()
    if plan.fresh_range == (0, q.shape[0]):
        return _fresh_prompts(q, k, v, plan, scale)  # a step of fresh prompts alone (a lone request's TTFT)
    out = torch.empty_like(q)
    if plan.decode_tokens is not None:
        tokens = plan.decode_tokens
        out[tokens] = _decode(q[tokens].contiguous(), cache_layer, plan.decode_meta, scale)
    if plan.fresh:
        out[plan.fresh_rows] = _fresh_prompts(q, k, v, plan, scale)
    k_cache, v_cache, k_scale, v_scale = cache_layer
    for start, query_len, context_len, row in plan.chunks:
        k_ctx = gather_dequantized(k_cache, k_scale, meta.block_tables[row], context_len, q.dtype)
        v_ctx = gather_dequantized(v_cache, v_scale, meta.block_tables[row], context_len, q.dtype)
        out[start : start + query_len] = _sdpa(q[start : start + query_len], k_ctx, v_ctx, context_len, meta, scale)
    return out


# Prompt attention runs on the flash or memory-efficient kernels, not cuDNN's: cuDNN builds an execution
# plan for every new (batch, length) shape, and prompt batches come in ever new shapes, so each first
# sight of one would stall the whole step (in the 64- and 256-concurrent loads of gpu_bench.py). Math
# stays as the fallback (CPU, float32).
PROMPT_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _attend(q, k, v, *, attn_mask=None, is_causal=False, scale: float) -> torch.Tensor:
    """[batch, heads, length, dim] attention over grouped K/V heads on the prompt backends."""
    with sdpa_kernel(PROMPT_BACKENDS):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=True
        )


def _fresh_prompts(q, k, v, plan: MixedPlan, scale: float) -> torch.Tensor:
    """Causal attention of whole prompts over their own K/V, rows in the order of plan.fresh_tokens."""
    if not _flash_usable(q):
        return _fresh_prompts_padded(q, k, v, plan, scale)
    q, k, v = (x[plan.fresh_rows] for x in (q, k, v))
    batch, longest = plan.fresh_shape
    if plan.fresh_uniform and batch > 1:
        # Prompts of one length are a [batch, length] grid of the same rows, for the fixed-length kernel,
        # which is faster than the variable-length one at several prompts of 7B's heads. One prompt stays
        # varlen: there the grid views' host cost outweighs it (a lone prompt's step is bound by the host).
        q, k, v = (x.unflatten(0, (batch, longest)) for x in (q, k, v))
        return _flash(q, k, v, None, longest, scale).flatten(0, 1)
    return _flash(q, k, v, plan.fresh_cu_seqlens, longest, scale)


def _flash(q, k, v, cu_seqlens: torch.Tensor | None, longest: int, scale: float) -> torch.Tensor:
    """Causal flash attention over q [tokens, heads, dim] (or [batch, length, heads, dim]) and K/V of
    fewer heads (grouped-query attention is native to the kernel); with ``cu_seqlens`` (int32, where
    each sequence starts, then the total) the variable-length form over packed rows: no padding, no
    copies. Measured on an H100 (7B, 256 concurrent): the padded batch cost ~10 ms of copies per
    8192-token step."""
    return torch.ops.aten._flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, longest, longest, 0.0, True, False, scale=scale
    )[0]


def _fresh_prompts_padded(q, k, v, plan: MixedPlan, scale: float) -> torch.Tensor:
    """Whole prompts, padded at the end into one batch: under a causal mask no real query sees padding."""
    batch, width = plan.fresh_shape

    def padded(x):
        buffer = x.new_zeros(batch * width, *x.shape[1:])
        buffer[plan.fresh_slots] = x[plan.fresh_tokens]
        return buffer.view(batch, width, *x.shape[1:]).transpose(1, 2)

    result = _attend(padded(q), padded(k), padded(v), is_causal=True, scale=scale)
    return result.transpose(1, 2).reshape(batch * width, *q.shape[1:])[plan.fresh_slots]


def _flash_usable(q: torch.Tensor) -> bool:
    """The flash kernel's limits: a CUDA build that has it, compute capability 8.0+, fp16/bf16, head
    dimension a multiple of 8 up to 256."""
    head_dim = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and head_dim % 8 == 0
        and head_dim <= 256
        and _flash_available(q.device.index or 0)
    )


@functools.cache
def _flash_available(device_index: int) -> bool:
    built = getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)()
    return built and torch.cuda.get_device_capability(device_index) >= (8, 0)


@dataclass
class MixedPlan:
    """How a mixed step's rows are grouped; built once per step, used by every layer."""

    device: torch.device
    decode_tokens: torch.Tensor | None = None
    decode_meta: AttentionMetadata | None = None
    fresh: list[tuple[int, int]] = field(default_factory=list)  # (first token, length) of each fresh prompt
    fresh_range: tuple[int, int] | None = None  # (start, end) when their tokens are one run
    fresh_uniform: bool = False  # one run, and every prompt of the same length
    fresh_cu_seqlens: torch.Tensor | None = None  # int32 [prompts + 1]: where each prompt starts
    chunks: list[tuple[int, int, int, int]] = field(default_factory=list)  # (start, query_len, context, row)

    @property
    def fresh_shape(self) -> tuple[int, int]:
        """(prompts, longest prompt)."""
        return len(self.fresh), max(n for _, n in self.fresh)

    @property
    def fresh_rows(self) -> slice | torch.Tensor:
        """The fresh prompts' rows of a step's [tokens, ...] tensors, to read or to write: a slice (views,
        no copies) when they are one run, as the scheduler puts new prompts last; else their indices."""
        return slice(*self.fresh_range) if self.fresh_range is not None else self.fresh_tokens

    # Index tensors only the gathering paths need (built on first use, then shared by every layer).
    @functools.cached_property
    def fresh_tokens(self) -> torch.Tensor:
        """Flat token index of each fresh-prompt token."""
        return to_device([s + i for s, n in self.fresh for i in range(n)], torch.long, self.device)

    @functools.cached_property
    def fresh_slots(self) -> torch.Tensor:
        """Each fresh-prompt token's index in the padded [prompts * longest] layout."""
        width = self.fresh_shape[1]
        return to_device(
            [row * width + i for row, (_, n) in enumerate(self.fresh) for i in range(n)], torch.long, self.device
        )


def build_plan(meta: AttentionMetadata) -> MixedPlan:
    device = meta.slot_mapping.device
    plan = MixedPlan(device)
    start = 0
    decode_rows, decode_tokens, fresh = [], [], []
    for row, (n, context) in enumerate(zip(meta.query_lens, meta.context_lens_cpu)):
        if n == 1:
            decode_rows.append(row)
            decode_tokens.append(start)
        elif n == context and not meta.window:
            fresh.append((start, n))
        else:
            plan.chunks.append((start, n, context, row))
        start += n
    if decode_rows:
        rows = to_device(decode_rows, torch.long, device)
        plan.decode_tokens = to_device(decode_tokens, torch.long, device)
        plan.decode_meta = AttentionMetadata(
            slot_mapping=meta.slot_mapping,
            block_tables=meta.block_tables[rows].contiguous(),
            context_lens=meta.context_lens[rows].contiguous(),
            is_decode=True,
            window=meta.window,
            sinks=meta.sinks,
        )
    if fresh:
        plan.fresh = fresh
        if all(s + n == following for (s, n), (following, _) in zip(fresh, fresh[1:])):
            plan.fresh_range = (fresh[0][0], fresh[-1][0] + fresh[-1][1])
            plan.fresh_uniform = len({n for _, n in fresh}) == 1
        plan.fresh_cu_seqlens = to_device([0, *itertools.accumulate(n for _, n in fresh)], torch.int32, device)
    return plan


def _sdpa(q, k, v, context_len: int, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """One chunk's queries (the last `query_len` positions of its context) over its whole context."""
    query_len = q.shape[0]
    if meta.window:
        query_pos = torch.arange(context_len - query_len, context_len, device=q.device).unsqueeze(1)
        key_pos = torch.arange(context_len, device=q.device).unsqueeze(0)
        mask = visible_keys(query_pos, key_pos, context_len, meta.window, meta.sinks)
    else:
        # Causal with the diagonal at the bottom right: the flash kernel does it without a mask tensor.
        mask = causal_lower_right(query_len, context_len)
    out = _attend(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        scale=scale,
    )
    return out[0].transpose(0, 1)
