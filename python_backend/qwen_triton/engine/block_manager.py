"""Paged KV-cache bookkeeping: which physical block holds which tokens of which sequence.

Blocks live in one pool. A sequence owns a list of block ids (its block table). With prefix caching,
every *full* block is also indexed by a hash of its tokens chained with the hash of all blocks before
it, so a later request with the same prefix (a shared system prompt) points its table at the same
physical blocks instead of recomputing them. Blocks are reference counted; a block whose count drops to
zero goes back to the free list but keeps its hash until it is handed out again, so it can still be hit
(least recently freed blocks are reused first).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from qwen_triton.engine.sequence import Sequence


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


@dataclass
class PrefixCacheCounters:
    queries: int = 0  # full prompt blocks looked up
    hits: int = 0  # of those, found in the cache


def chain_hash(prev_hash: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((prev_hash, token_ids))


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = True
    counters: PrefixCacheCounters = field(default_factory=PrefixCacheCounters)

    def __post_init__(self):
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free_ids: deque[int] = deque(range(self.num_blocks))
        self.hash_to_block: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks to add so that `num_new_tokens` more tokens of `seq` fit."""
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give `seq` the blocks for its next `num_new_tokens` tokens (caller checked can_append)."""
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._take_free_block())

    def match_prefix(self, seq: Sequence) -> None:
        """Point a new sequence's table at cached blocks holding its leading full blocks.

        The last token is always recomputed (its logits are needed), so at most
        (len - 1) // block_size blocks are reused.
        """
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return
        # After a preemption the sequence's output tokens are recomputed too: match over all of them.
        token_ids = seq.all_token_ids
        prev_hash = None
        for i in range((len(token_ids) - 1) // self.block_size):
            tokens = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            prev_hash = chain_hash(prev_hash, tokens)
            self.counters.queries += 1
            block_id = self.hash_to_block.get(prev_hash)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            self.counters.hits += 1
            self._share(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(prev_hash)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        seq.num_cached_prompt_tokens = min(seq.num_computed_tokens, len(seq.prompt_token_ids))

    def register_full_blocks(self, seq: Sequence) -> None:
        """Index the sequence's blocks that became full (their K/V computed) so others can reuse them."""
        if not self.enable_prefix_caching:
            return
        tokens = seq.all_token_ids
        # Only blocks whose tokens the host has: a token still on the device (see Sequence.pending_tokens)
        # is computed but cannot be hashed yet; the engine registers its block once it is appended.
        for i in range(len(seq.block_hashes), min(seq.num_computed_tokens, len(tokens)) // self.block_size):
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            block_hash = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, chunk)
            seq.block_hashes.append(block_hash)
            block_id = seq.block_table[i]
            if block_id < 0:
                continue  # released by the attention window
            block = self.blocks[block_id]
            if block.hash is None:
                block.hash, block.token_ids = block_hash, chunk
                self.hash_to_block.setdefault(block_hash, block_id)

    def release_outside_window(self, seq: Sequence, sinks: int, window: int) -> None:
        """Free blocks holding only tokens that no future query can attend to (StreamingLLM window)."""
        first_kept = seq.num_computed_tokens - window  # future queries see positions >= this (plus sinks)
        first_sink_free_block = -(-sinks // self.block_size)
        for i in range(first_sink_free_block, max(0, first_kept // self.block_size)):
            if seq.block_table[i] >= 0:
                self._release(seq.block_table[i])
                seq.block_table[i] = -1

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            if block_id >= 0:
                self._release(block_id)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

    # -- internals -------------------------------------------------------------------------------

    def _take_free_block(self) -> int:
        block_id = self.free_ids.popleft()
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]  # evict: its contents are about to be overwritten
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block_id

    def _share(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.free_ids.remove(block_id)
        block.ref_count += 1

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        assert block.ref_count >= 0, f"block {block_id} released twice"
        if block.ref_count == 0:
            self.free_ids.append(block_id)
