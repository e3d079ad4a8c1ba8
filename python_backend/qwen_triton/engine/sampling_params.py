"""Per-request generation parameters and their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from qwen_triton.errors import InvalidRequestError


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output (HF rule)
    presence_penalty: float = 0.0  # OpenAI rule, over output tokens
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    # Dynamic temperature: T = min_temperature + (max_temperature - min_temperature) * H(p) / log(V),
    # H the entropy of the step's distribution at temperature 1, V the vocabulary size: confident steps
    # sample cold, uncertain ones warm.
    dynamic_temperature: bool = False
    min_temperature: float = 0.0
    max_temperature: float = 1.5

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise InvalidRequestError(key, f"unknown parameter; known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 and not self.dynamic_temperature

    def validate(self, max_model_len: int, prompt_len: int, vocab_size: int) -> None:
        _check(self.max_tokens, "max_tokens", int, lambda v: v >= 1, "must be an integer >= 1")
        if prompt_len + self.max_tokens > max_model_len:
            raise InvalidRequestError(
                "max_tokens",
                f"prompt ({prompt_len} tokens) + max_tokens ({self.max_tokens}) exceeds the model "
                f"length {max_model_len}; lower max_tokens or shorten the prompt",
            )
        _check(self.temperature, "temperature", float, lambda v: v >= 0, "must be >= 0 (0 = greedy)")
        _check(self.top_p, "top_p", float, lambda v: 0 < v <= 1, "must be in (0, 1]")
        _check(self.top_k, "top_k", int, lambda v: v >= 0, "must be >= 0 (0 = off)")
        _check(self.min_p, "min_p", float, lambda v: 0 <= v <= 1, "must be in [0, 1]")
        _check(self.repetition_penalty, "repetition_penalty", float, lambda v: v > 0, "must be > 0 (1 = off)")
        _check(self.presence_penalty, "presence_penalty", float, lambda v: -2 <= v <= 2, "must be in [-2, 2]")
        _check(self.frequency_penalty, "frequency_penalty", float, lambda v: -2 <= v <= 2, "must be in [-2, 2]")
        _check(self.min_temperature, "min_temperature", float, lambda v: v >= 0, "must be >= 0")
        _check(
            self.max_temperature,
            "max_temperature",
            float,
            lambda v: v >= self.min_temperature,
            "must be >= min_temperature",
        )
        if self.seed is not None:
            _check(self.seed, "seed", int, lambda v: 0 <= v < 2**63, "must be in [0, 2^63)")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop", "must be a list of non-empty strings")
        if len(self.stop) > 16:
            raise InvalidRequestError("stop", "at most 16 stop strings")
        for token in self.stop_token_ids:
            if not isinstance(token, int) or not 0 <= token < vocab_size:
                raise InvalidRequestError("stop_token_ids", f"{token!r} is not a token id in [0, {vocab_size})")


def _check(value, name: str, kind: type, ok, message: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise InvalidRequestError(name, f"expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(name, f"must be finite, got {value!r}")
    if not ok(value):
        raise InvalidRequestError(name, f"{message}, got {value!r}")
