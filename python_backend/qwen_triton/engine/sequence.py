"""One request's state inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.structured.matcher import GuideMatcher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # when params.top_logprobs
    status: SequenceStatus = SequenceStatus.WAITING
    # Physical KV blocks, one per block_size tokens. With an attention window, blocks that fell out of
    # the window are released and their entries become -1.
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # prefix-cache hash of each full block
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    # Sampled on the device by a launched step, not yet appended by the host (at most two: the engine
    # launches one step ahead). A step launched meanwhile takes them as its inputs from the device.
    pending_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # of those, reused from the prefix cache
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    bad_word_token_ids: list[list[int]] = field(default_factory=list)  # params.bad_words, tokenized
    # params.guided_decoding's state: has accepted exactly output_token_ids (dropped when the sequence ends).
    matcher: GuideMatcher | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    num_preemptions: int = 0

    def __post_init__(self):
        # Prompt and output in one list, kept up to date by append_token: the hot loop reads it every
        # step and must not rebuild it.
        self.token_ids: list[int] = self.prompt_token_ids + self.output_token_ids

    def append_token(self, token: int, logprob: float) -> None:
        self.token_ids.append(token)
        self.output_token_ids.append(token)
        self.output_logprobs.append(logprob)

    @property
    def all_token_ids(self) -> list[int]:
        return self.token_ids

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self) + self.pending_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
