"""Qwen2 / Llama decoder forward over a flat batch of tokens and the paged KV cache.

The two architectures differ only in QKV bias (Qwen2 has it) and tied embeddings (small Qwen2.5 and
SmolLM2 tie them). Q, K and V are one fused matmul, gate and up another: fewer, larger reads of the
weights. Tokens of all sequences in a step are concatenated ([num_tokens, hidden]); attention splits
them again by the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qwen_triton.layers.attention import AttentionMetadata, paged_attention, write_kv
from qwen_triton.layers.ops import FusedOps, fused_ops

SUPPORTED_ARCHITECTURES = {"qwen2", "llama"}


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"rope_type {kind!r} is not supported yet (only the default rotary embedding)")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


@dataclass(frozen=True)
class TensorSplit:
    """This process's share of a tensor-parallel model: rank `rank` of `world`. Each rank holds
    1/world of the attention heads and of the KV heads (its KV cache holds only those), of the MLP's
    intermediate rows and of the vocabulary; the row-parallel sums and the gathers that join the parts
    are installed over the model by qwen_triton.parallel. KV heads are split, never replicated: a KV
    head count that does not divide by the world size is refused (`check`)."""

    rank: int = 0
    world: int = 1

    def check(self, config) -> None:
        """Refuse a split the checkpoint's shapes cannot take, naming the config field and the sizes that work."""
        if self.world == 1:
            return
        for field in _SPLIT_FIELDS:
            total = getattr(config, field)
            if total % self.world:
                sizes = [n for n in (1, 2, 4, 8) if all(getattr(config, f) % n == 0 for f in _SPLIT_FIELDS)]
                raise ValueError(
                    f"tensor_parallel_size: {self.world} does not divide the checkpoint's {field} ({total}); "
                    f"KV heads are split across ranks, not replicated: use tensor_parallel_size "
                    f"{' or '.join(map(str, sizes))}"
                )

    def part(self, total: int) -> int:
        return total // self.world


_SPLIT_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")
NO_SPLIT = TensorSplit()


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, ops: FusedOps):
        """(norm(x + residual), x + residual): the residual add rides along with the norm."""
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps), x
        return ops.add_rms_norm(x, residual, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        self.theta = theta
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, ops: FusedOps):
        return ops.rotary(q, k, self.cos, self.sin, positions)


class Attention(nn.Module):
    def __init__(self, config, layer_index: int, split: TensorSplit = NO_SPLIT):
        super().__init__()
        self.num_heads = split.part(config.num_attention_heads)  # this rank's heads
        self.num_kv_heads = split.part(config.num_key_value_heads)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.layer_index = layer_index
        bias = getattr(config, "model_type", "") == "qwen2" or getattr(config, "attention_bias", False)
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.scale = self.head_dim**-0.5
        # Qwen2 checkpoints with use_sliding_window mark some layers "sliding_attention": those attend to
        # the last `sliding_window` positions only (the cache still holds everything for the others).
        layer_types = getattr(config, "layer_types", None) or []
        sliding = layer_index < len(layer_types) and layer_types[layer_index] == "sliding_attention"
        self.sliding_window = int(getattr(config, "sliding_window", 0) or 0) if sliding else 0

    def forward(self, x, positions, rotary: RotaryEmbedding, meta: AttentionMetadata, kv_cache, ops: FusedOps):
        qkv = ops.linear(self.qkv_proj, x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        cache_layer = kv_cache.layer(self.layer_index)
        k_cache, v_cache, k_scale, _ = cache_layer
        if k_scale is None:
            # A float cache: the rotation and the K/V write are one kernel launch on CUDA.
            q, k = ops.rotary_and_write_kv(
                q, k, v, rotary.cos, rotary.sin, positions, k_cache, v_cache, meta.slot_mapping
            )
        else:
            q, k = rotary(positions, q, k, ops)
            write_kv(k, v, cache_layer, meta.slot_mapping)
        if self.sliding_window:
            meta = meta.for_sliding_layer(self.sliding_window)
        out = paged_attention(q, k, v, cache_layer, meta, self.scale)
        return ops.linear(self.o_proj, out.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, config, split: TensorSplit = NO_SPLIT):
        super().__init__()
        self.intermediate = split.part(config.intermediate_size)
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate, bias=False)
        self.down_proj = nn.Linear(self.intermediate, config.hidden_size, bias=False)

    def forward(self, x, ops: FusedOps):
        # One call for gate_up and SiLU*up: at decode sizes on CUDA, one kernel (layers/ops.py).
        return ops.linear(self.down_proj, ops.gate_up_silu(self.gate_up_proj, x))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_index: int, split: TensorSplit = NO_SPLIT):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index, split)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, split)

    def forward(self, x, residual, positions, rotary, meta, kv_cache, ops: FusedOps):
        """Pre-norm block; returns (this layer's MLP output, the residual stream before it)."""
        h, residual = self.input_layernorm(x, residual, ops)
        h = self.self_attn(h, positions, rotary, meta, kv_cache, ops)
        h, residual = self.post_attention_layernorm(h, residual, ops)
        return self.mlp(h, ops), residual


class DecoderModel(nn.Module):
    def __init__(self, config, max_positions: int, split: TensorSplit = NO_SPLIT):
        super().__init__()
        if config.model_type not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"model_type {config.model_type!r} is not supported; supported: "
                f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        split.check(config)
        self.config = config
        self.split = split
        vocab = split.part(config.vocab_size)  # this rank's rows of the vocabulary
        self.embed_tokens = nn.Embedding(vocab, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, split) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, vocab, bias=False)
        head_dim = self.layers[0].self_attn.head_dim
        self.rotary = RotaryEmbedding(head_dim, max_positions, rope_theta(config))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_cache) -> torch.Tensor:
        # One Triton kernel per element-wise part on CUDA, prefill and decode alike (layers/ops.py).
        ops = fused_ops(input_ids.device)
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, self.rotary, meta, kv_cache, ops)
        return self.norm(x, residual, ops)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # Through fused_ops' linear: a plain bf16 / fp16 head (tied or not) at decode row counts takes
        # the dense GEMV on CUDA (the 7B head is 1.09 GB, 7 % of a batch-1 step's bytes); quantized
        # heads, float32 ones, more rows and the CPU keep lm_head(hidden).
        return fused_ops(hidden.device).linear(self.lm_head, hidden).float()

    # -- weights ---------------------------------------------------------------------------------

    @torch.no_grad()
    def init_random_weights(self, std: float = 0.02, seed: int = 0) -> None:
        """Weights of the right shapes without a checkpoint: for timing, where the text does not matter."""
        generator = torch.Generator(device=self.embed_tokens.weight.device).manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=generator)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
