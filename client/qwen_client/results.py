"""What comes back: `Chunk` (one streamed response) and `Completion` (a whole answer)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = Usage()
    logprobs: list[float] | None = None
    is_final: bool = False


@dataclass(frozen=True)
class Completion:
    """A whole answer: all the text and tokens of one request."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    usage: Usage
    logprobs: list[float] | None = None


class CompletionBuilder:
    """Joins the chunks of one request into a `Completion` (deltas when streaming, one chunk otherwise)."""

    def __init__(self):
        self._texts: list[str] = []
        self._token_ids: list[int] = []
        self._logprobs: list[float] = []
        self._has_logprobs = False
        self._finish_reason: str | None = None
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
