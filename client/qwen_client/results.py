"""What comes back: `Chunk` (one streamed response) and `Completion` (a whole answer)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Chunk:
    """One response of the decoupled model: new text and tokens since the previous chunk.

    `finish_reason` is None while the request runs, then "stop", "length" or "abort".
    `is_final` marks the last response of the request (it may carry no text).
    """

    text: str = ""
    token_ids: List[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    usage: Usage = Usage()
    logprobs: Optional[List[float]] = None
    is_final: bool = False


@dataclass(frozen=True)
class Completion:
    """A whole answer: all the text and tokens of one request."""

    text: str
    token_ids: List[int]
    finish_reason: Optional[str]
    usage: Usage
    logprobs: Optional[List[float]] = None


class CompletionBuilder:
    """Joins the chunks of one request into a `Completion` (deltas when streaming, one chunk otherwise)."""

    def __init__(self):
        self._texts: List[str] = []
        self._token_ids: List[int] = []
        self._logprobs: List[float] = []
        self._has_logprobs = False
        self._finish_reason: Optional[str] = None
        self._usage = Usage()

    def add(self, chunk: Chunk) -> None:
        self._texts.append(chunk.text)
        self._token_ids.extend(chunk.token_ids)
        if chunk.logprobs is not None:
            self._has_logprobs = True
            self._logprobs.extend(chunk.logprobs)
        if chunk.finish_reason:
            self._finish_reason = chunk.finish_reason
        # Usage is cumulative on the server: the latest non-empty figure is the right one.
        if chunk.usage.prompt_tokens or chunk.usage.completion_tokens:
            self._usage = chunk.usage

    def build(self) -> Completion:
        return Completion(
            text="".join(self._texts),
            token_ids=list(self._token_ids),
            finish_reason=self._finish_reason,
            usage=self._usage,
            logprobs=list(self._logprobs) if self._has_logprobs else None,
        )
