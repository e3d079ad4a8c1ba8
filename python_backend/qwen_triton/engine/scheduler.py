"""Iteration-level scheduling: which sequences compute which tokens in the next step.

Every step: running sequences first (oldest first), each asking for its remaining prompt chunk or one
decode token; then waiting sequences join while the token budget, the sequence limit and free KV
blocks allow. Long prompts are cut into chunks so decodes keep flowing. When the pool runs dry, the
newest running sequence is preempted: its blocks are freed and it goes back to the front of the queue,
to be recomputed later (its full blocks usually still sit in the prefix cache, which makes that cheap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from qwen_triton.engine.block_manager import BlockManager
from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_tokens: int  # tokens computed for it in this step
    # Both read by the runner and the engine; fixed when the step is scheduled, before its launch moves
    # seq.num_computed_tokens on.
    samples: bool = field(init=False)  # the chunk reaches the sequence's last token: it yields one
    input_on_device: bool = field(init=False)  # its input is a token of the step in flight, not on the host

    def __post_init__(self):
        seq, end = self.seq, self.seq.num_computed_tokens + self.num_tokens
        self.samples = end == len(seq) + seq.pending_tokens
        self.input_on_device = end > len(seq)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self, sits_out: Callable[[Sequence], bool] | None = None) -> list[ScheduledSequence]:
        """The next step. ``sits_out``: running sequences it names get no tokens this step (the engine's
        step launched ahead leaves out those whose token in flight may be their last)."""
        budget = self.config.max_num_batched_tokens
        prefill_budget = self._prefill_budget(budget)
        scheduled: list[ScheduledSequence] = []
        preempted = False
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or budget == 0 or (sits_out and sits_out(seq)):
                continue  # preempted below as a victim, no budget left this step, or told to wait
            prefill = not _prompt_done(seq)
            if prefill and prefill_budget == 0:
                continue
            num_tokens = min(seq.num_uncomputed_tokens, budget, prefill_budget if prefill else budget)
            while not self.block_manager.can_append(seq, num_tokens):
                self._preempt(self.running[-1])
                preempted = True
                if seq.status is not SequenceStatus.RUNNING:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.append_slots(seq, num_tokens)
                scheduled.append(ScheduledSequence(seq, num_tokens))
                budget -= num_tokens
                if prefill:
                    prefill_budget -= num_tokens
        # Admitting new work right after a preemption would only preempt again.
        while (
            not preempted
            and self.waiting
            and min(budget, prefill_budget) > 0
            and len(self.running) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            if not seq.block_table:
                self.block_manager.match_prefix(seq)
            num_tokens = min(seq.num_uncomputed_tokens, budget, prefill_budget, self._fitting_tokens(seq))
            if num_tokens <= 0:
                self.block_manager.free(seq)  # give back the prefix-cache references until it fits
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self.block_manager.append_slots(seq, num_tokens)
            scheduled.append(ScheduledSequence(seq, num_tokens))
            budget -= num_tokens
            prefill_budget -= num_tokens
        return scheduled

    def _prefill_budget(self, budget: int) -> int:
        """Prompt tokens this step may compute. While sequences decode, at most
        ``max_prefill_tokens_while_decoding`` (0 = no cap): a step's time grows with its prompt tokens,
        and every decoding sequence waits for the whole step, so a cap bounds their inter-token latency
        at the cost of a slower first token for the prompts in line."""
        cap = self.config.max_prefill_tokens_while_decoding
        if cap and any(_prompt_done(seq) for seq in self.running if seq.status is SequenceStatus.RUNNING):
            return min(cap, budget)
        return budget

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.block_manager.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def _fitting_tokens(self, seq: Sequence) -> int:
        """How many more tokens of `seq` fit in its blocks plus the free pool."""
        bm = self.block_manager
        return (len(seq.block_table) + bm.num_free_blocks) * bm.block_size - seq.num_computed_tokens

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)


def _prompt_done(seq: Sequence) -> bool:
    """The sequence decodes: its whole prompt is in the KV cache (a preempted one recomputes it first)."""
    return seq.num_computed_tokens >= len(seq.prompt_token_ids)
