"""Per-request generation parameters and their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qwen_triton.errors import InvalidRequestError
from qwen_triton.structured.guide import GuidedDecoding

# Stop strings are checked against every request's output on the engine thread: bounded in count and
# length so that no request can buy itself a slow step for everyone (docs/reliability.md).
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512


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
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many tokens are out
    bad_words: list[str] = field(default_factory=list)  # never produced, as any of their tokenizations
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI rule)
    n: int = 1  # independent choices for one prompt (the serving layer fans them out)
    top_logprobs: int = 0  # k best alternatives per token, with their log-probabilities
    # The grammar the output must follow (JSON schema, regex, EBNF, choice); see qwen_triton.structured.
    guided_decoding: GuidedDecoding | None = None

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def reads_token_history(self) -> bool:
        """True when sampling reads the output so far on the host (the engine cannot launch a step ahead)."""
        return self.has_penalties or bool(self.bad_words) or self.min_tokens > 0 or self.guided_decoding is not None

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
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        longest = max((len(s) for s in self.stop), default=0)
        if longest > MAX_STOP_CHARS:
            raise InvalidRequestError(
                "stop", f"a stop string has {longest} characters; at most {MAX_STOP_CHARS} each, shorten it"
            )
        for token in self.stop_token_ids:
            if not isinstance(token, int) or not 0 <= token < vocab_size:
                raise InvalidRequestError("stop_token_ids", f"{token!r} is not a token id in [0, {vocab_size})")
        self._validate_choices_and_masks(vocab_size)
        if self.guided_decoding is not None and not isinstance(self.guided_decoding, GuidedDecoding):
            raise InvalidRequestError(
                "guided_decoding", "must be a GuidedDecoding (build it with GuidedDecoding.from_vllm)"
            )

    def _validate_choices_and_masks(self, vocab_size: int) -> None:
        """min_tokens, bad_words, logit_bias, n, top_logprobs: bounded so no request can cost much."""
        _check(self.min_tokens, "min_tokens", int, lambda v: 0 <= v <= self.max_tokens, "must be in [0, max_tokens]")
        _check(self.n, "n", int, lambda v: 1 <= v <= MAX_CHOICES, f"must be in [1, {MAX_CHOICES}]")
        _check(
            self.top_logprobs,
            "top_logprobs",
            int,
            lambda v: 0 <= v <= MAX_TOP_LOGPROBS,
            f"must be in [0, {MAX_TOP_LOGPROBS}]",
        )
        if not isinstance(self.bad_words, list) or not all(isinstance(w, str) and w for w in self.bad_words):
            raise InvalidRequestError("bad_words", "must be a list of non-empty strings")
        if len(self.bad_words) > MAX_BAD_WORDS or any(len(w) > MAX_BAD_WORD_CHARS for w in self.bad_words):
            raise InvalidRequestError(
                "bad_words", f"at most {MAX_BAD_WORDS} words of at most {MAX_BAD_WORD_CHARS} characters each"
            )
        if not isinstance(self.logit_bias, dict) or len(self.logit_bias) > MAX_LOGIT_BIAS_TOKENS:
            raise InvalidRequestError(
                "logit_bias", f"must be an object of at most {MAX_LOGIT_BIAS_TOKENS} token id -> bias entries"
            )
        for token, bias in self.logit_bias.items():
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
                raise InvalidRequestError("logit_bias", f"{token!r} is not a token id in [0, {vocab_size})")
            _check(
                bias,
                "logit_bias",
                float,
                lambda v: -100 <= v <= 100,
                f"the bias of token {token} must be in [-100, 100]",
            )


MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
MAX_BAD_WORDS = 64
MAX_BAD_WORD_CHARS = 256
MAX_LOGIT_BIAS_TOKENS = 1024


def _check(value, name: str, kind: type, ok, message: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise InvalidRequestError(name, f"expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(name, f"must be finite, got {value!r}")
    if not ok(value):
        raise InvalidRequestError(name, f"{message}, got {value!r}")
