"""Vocabulary-parallel embedding and LM head: each rank holds vocab_size / world rows of both.

Embedding: a rank looks up the ids in its range, writes zeros for the others, and one all-reduce sums
the ranks' rows (exactly one rank contributes each token's row, so the sum is exact in any dtype).
LM head: each rank computes the logits of its vocabulary slice; one all-gather joins them, so every
rank holds the whole [rows, vocab] logits. The sampler runs on rank 0 only (the engine process, which
owns the requests, their generators and the host copy of the tokens); the other ranks drop their copy.
Tied embeddings share one Parameter as on a single device, since both split the vocabulary alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwen_triton.layers.ops import fused_ops
from qwen_triton.parallel.group import TensorParallelGroup


class VocabParallelEmbedding(nn.Module):
    def __init__(self, local: nn.Embedding, group: TensorParallelGroup):
        super().__init__()
        self.weight = local.weight  # [vocab / world, hidden]: this rank's rows
        self.group = group
        self.start = group.rank * self.weight.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        # No data-dependent shapes: the same ops run inside a captured decode graph.
        rows = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.group.all_reduce(rows.masked_fill(outside.unsqueeze(-1), 0))


class VocabParallelHead(nn.Module):
    """This rank's slice of the LM head (`inner`, plain or quantized), then the gather over ranks."""

    def __init__(self, inner: nn.Module, group: TensorParallelGroup):
        super().__init__()
        self.inner = inner
        self.group = group

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather_last_dim(fused_ops(hidden.device).linear(self.inner, hidden))


def install_vocab_parallel(model: nn.Module, group: TensorParallelGroup) -> None:
    """Swap the model's embedding and head for their vocabulary-parallel forms (after loading and
    quantization: the loader and quantize_model see the plain local modules)."""
    model.embed_tokens = VocabParallelEmbedding(model.embed_tokens, group)
    model.lm_head = VocabParallelHead(model.lm_head, group)
