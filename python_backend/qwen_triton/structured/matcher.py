"""Per-sequence grammar state and the batched token bitmask.

A `GuideMatcher` has accepted exactly the sequence's output tokens. `sync(tokens)` brings it there from
wherever it is (rolls back what is not in `tokens`, accepts what is new), so a sequence preempted and
recomputed from its tokens, or one whose tokens changed under it, never samples with a stale mask.

The bitmask: one int32 word per 32 vocabulary ids, bit set = token allowed (the library's layout). It is
filled on the host for every guided row of a step, while the step's forward runs on the device, then
copied without a sync and applied to the logits there.
"""

from __future__ import annotations

import os

import torch
import xgrammar

_BATCH_FILL_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))


class GuideMatcher:
    def __init__(self, compiled: xgrammar.CompiledGrammar, stop_token_ids: list[int]):
        self._matcher = xgrammar.GrammarMatcher(compiled, override_stop_tokens=list(stop_token_ids))
        self.accepted: list[int] = []

    @property
    def is_terminated(self) -> bool:
        """The guide is complete and a stop token was accepted: nothing more may follow."""
        return self._matcher.is_terminated()

    def accept(self, token: int) -> bool:
        """Advance by one sampled token; False if the grammar refuses it (the matcher stays put)."""
        if not self._matcher.accept_token(token):
            return False
        self.accepted.append(token)
        return True

    def sync(self, tokens: list[int]) -> bool:
        """Make the accepted tokens equal `tokens`; False if the grammar refuses one of them."""
        if len(self.accepted) == len(tokens) and (not tokens or self.accepted[-1] == tokens[-1]):
            return True  # the usual case, every step: the engine accepted the last token already
        common = 0
        for mine, theirs in zip(self.accepted, tokens):
            if mine != theirs:
                break
            common += 1
        if common < len(self.accepted):
            self._matcher.rollback(len(self.accepted) - common)
            del self.accepted[common:]
        return all(self.accept(token) for token in tokens[common:])

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    @property
    def library_matcher(self) -> xgrammar.GrammarMatcher:
        return self._matcher


class BitmaskFiller:
    """Fills the bitmask rows of many matchers at once on a small thread pool (the library's batch call)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._batch = xgrammar.BatchGrammarMatcher(max_threads=_BATCH_FILL_THREADS)

    def fill(self, matchers: list[GuideMatcher | None], pin: bool) -> torch.Tensor | None:
        """A host bitmask [len(matchers), words] (pinned when `pin`) with the rows of the guided entries
        filled; None when no entry is guided. Unguided rows stay all-allowed, so the whole bitmask applies
        to the whole batch (no row index list to copy to the device)."""
        rows = [row for row, matcher in enumerate(matchers) if matcher is not None]
        if not rows:
            return None
        shape = xgrammar.get_bitmask_shape(len(matchers), self.vocab_size)
        bitmask = torch.full(shape, -1, dtype=xgrammar.bitmask_dtype, pin_memory=pin)
        if len(rows) == 1:
            matchers[rows[0]].fill(bitmask, rows[0])
        else:
            self._batch.batch_fill_next_token_bitmask([matchers[r].library_matcher for r in rows], bitmask, rows)
        return bitmask


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """`logits` [rows, vocab] with the tokens the bitmask forbids set to -inf, in a new tensor (the
    caller's logits may be a view of a CUDA graph's output buffer). The copy to the device is queued
    without waiting; the library's kernel applies it (Triton on CUDA, vectorised C++ on the CPU)."""
    masked = logits.clone(memory_format=torch.contiguous_format)
    device_mask = bitmask.to(masked.device, non_blocking=True)
    xgrammar.apply_token_bitmask_inplace(masked, device_mask, vocab_size=masked.shape[1])
    return masked
