"""`GenerationParams`: the optional inputs of the Triton model `qwen`, checked before anything is sent.

Field names are the Triton input names (docs/CONTRACTS.md), so a field maps one to one onto a tensor
(gRPC) or a JSON key (HTTP generate). `None` means "not sent": the server's default applies.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameterError

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class InputSpec:
    """How one input travels: its Triton datatype and whether it is a list (dims [-1]) or a scalar ([1])."""

    datatype: str
    is_list: bool = False


# Every input of the model, prompt inputs included. `stream` is set by the method called, not by params.
INPUT_SPECS: dict[str, InputSpec] = {
    "text_input": InputSpec("BYTES"),
    "messages": InputSpec("BYTES"),
    "input_ids": InputSpec("INT64", is_list=True),
    "stream": InputSpec("BOOL"),
    "max_tokens": InputSpec("INT32"),
    "temperature": InputSpec("FP32"),
    "top_p": InputSpec("FP32"),
    "top_k": InputSpec("INT32"),
    "min_p": InputSpec("FP32"),
    "repetition_penalty": InputSpec("FP32"),
    "presence_penalty": InputSpec("FP32"),
    "frequency_penalty": InputSpec("FP32"),
    "seed": InputSpec("INT64"),
    "stop": InputSpec("BYTES", is_list=True),
    "stop_token_ids": InputSpec("INT64", is_list=True),
    "ignore_eos": InputSpec("BOOL"),
    "return_logprobs": InputSpec("BOOL"),
    "dynamic_temperature": InputSpec("BOOL"),
    "min_temperature": InputSpec("FP32"),
    "max_temperature": InputSpec("FP32"),
    "min_tokens": InputSpec("INT32"),
    "bad_words": InputSpec("BYTES", is_list=True),
    "logit_bias": InputSpec("BYTES"),  # JSON object {"token id": bias}
    "top_logprobs": InputSpec("INT32"),
    "num_return_sequences": InputSpec("INT32"),
    "tools": InputSpec("BYTES"),  # JSON list of OpenAI tools
    "exclude_input_in_output": InputSpec("BOOL"),
    "guided_decoding_guide_type": InputSpec("BYTES"),
    "guided_decoding_guide": InputSpec("BYTES"),
    "timeout": InputSpec("FP32"),  # seconds from arrival; then finish_reason "timeout"
    # The TensorRT-LLM ensemble's names for some of the above (the server takes either, never both).
    "min_length": InputSpec("INT32"),
    "random_seed": InputSpec("UINT64"),
    "stop_words": InputSpec("BYTES", is_list=True),
    "end_id": InputSpec("INT32"),
    "pad_id": InputSpec("INT32"),
    "return_log_probs": InputSpec("BOOL"),
    "beam_width": InputSpec("INT32"),
}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and stopping settings for one request; invalid values raise `InvalidParameterError`."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    ignore_eos: bool | None = None
    return_logprobs: bool | None = None
    dynamic_temperature: bool | None = None
    min_temperature: float | None = None
    max_temperature: float | None = None
    min_tokens: int | None = None
    bad_words: Sequence[str] | None = None
    logit_bias: dict[int, float] | None = None  # sent as the JSON text the server reads
    top_logprobs: int | None = None

    def __post_init__(self):
        # Normalise first (a single stop string becomes a list), then check every field.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", [self.stop])
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check(name, value))
        _check_temperature_bounds(self.min_temperature, self.max_temperature)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> GenerationParams:
        """Build from keyword arguments, naming any unknown one (with the closest known name)."""
        for name in kwargs:
            if name not in _FIELD_NAMES:
                raise InvalidParameterError(name, _unknown_field_hint(name))
        return cls(**kwargs)

    def replace(self, **changes: Any) -> GenerationParams:
        """A copy with some fields changed (validated like a new instance)."""
        for name in changes:
            if name not in _FIELD_NAMES:
                raise InvalidParameterError(name, _unknown_field_hint(name))
        return dataclasses.replace(self, **changes)

    def to_inputs(self) -> dict[str, Any]:
        """The fields that are set, by Triton input name, as plain Python values (lists for list inputs)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(GenerationParams))


def _unknown_field_hint(name: str) -> str:
    close = difflib.get_close_matches(name, _FIELD_NAMES, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown generation parameter; {hint}known ones: {', '.join(_FIELD_NAMES)}"


# --- per-field checks: each returns the value normalised (e.g. int -> float) or raises, naming the field.


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidParameterError(name, f"must be in [{low}, {high}], got {value}")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(name, f"must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise InvalidParameterError(name, f"must be a finite number, got {value}")
    return float(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameterError(name, f"must be true or false, got {type(value).__name__} {value!r}")
    return value


def _max_tokens(name, value):
    return _int(name, value, 1, INT32_MAX)


def _non_negative(name, value):
    value = _float(name, value)
    if value < 0:
        raise InvalidParameterError(name, f"must be >= 0, got {value}")
    return value


def _top_p(name, value):
    value = _float(name, value)
    if not 0 < value <= 1:
        raise InvalidParameterError(name, f"must be in (0, 1], got {value} (1 disables top-p)")
    return value


def _top_k(name, value):
    return _int(name, value, 0, INT32_MAX)  # 0 disables top-k


def _probability(name, value):
    value = _float(name, value)
    if not 0 <= value <= 1:
        raise InvalidParameterError(name, f"must be in [0, 1], got {value}")
    return value


def _repetition_penalty(name, value):
    value = _float(name, value)
    if value <= 0:
        raise InvalidParameterError(name, f"must be > 0, got {value} (1 disables it)")
    return value


def _additive_penalty(name, value):
    value = _float(name, value)
    if not -2 <= value <= 2:
        raise InvalidParameterError(name, f"must be in [-2, 2], got {value} (0 disables it)")
    return value


def _seed(name, value):
    return _int(name, value, 0, INT64_MAX)


def _stop(name, value) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise InvalidParameterError(name, f"must be a string or a list of strings, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise InvalidParameterError(name, f"every stop string must be a non-empty string, got {item!r}")
    return list(value)


def _token_ids(name, value) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidParameterError(name, f"must be a list of token ids, got {type(value).__name__}")
    return [_int(name, item, 0, INT64_MAX) for item in value]


def _bad_words(name, value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise InvalidParameterError(name, "must be a list of non-empty strings")
    return list(value)


def _min_tokens(name, value):
    return _int(name, value, 0, INT32_MAX)


def _top_logprobs(name, value):
    return _int(name, value, 0, 20)


def _logit_bias(name, value) -> str:
    """{token id: bias in [-100, 100]} (or its JSON text) -> the JSON text of the `logit_bias` input."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise InvalidParameterError(name, f"is not valid JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise InvalidParameterError(name, f"must be a mapping of token id to bias, got {type(value).__name__}")
    bias = {}
    for token, number in value.items():
        token_id = _int(name, int(token) if isinstance(token, str) and token.isdigit() else token, 0, INT64_MAX)
        number = _float(name, number)
        if not -100 <= number <= 100:
            raise InvalidParameterError(name, f"the bias of token {token_id} must be in [-100, 100], got {number}")
        bias[str(token_id)] = number
    return json.dumps(bias)


def _check_temperature_bounds(low: float | None, high: float | None) -> None:
    if low is not None and high is not None and low > high:
        raise InvalidParameterError("min_temperature", f"must be <= max_temperature ({low} > {high})")


_CHECKS = {
    "max_tokens": _max_tokens,
    "temperature": _non_negative,
    "top_p": _top_p,
    "top_k": _top_k,
    "min_p": _probability,
    "repetition_penalty": _repetition_penalty,
    "presence_penalty": _additive_penalty,
    "frequency_penalty": _additive_penalty,
    "seed": _seed,
    "stop": _stop,
    "stop_token_ids": _token_ids,
    "ignore_eos": _bool,
    "return_logprobs": _bool,
    "dynamic_temperature": _bool,
    "min_temperature": _non_negative,
    "max_temperature": _non_negative,
    "min_tokens": _min_tokens,
    "bad_words": _bad_words,
    "logit_bias": _logit_bias,
    "top_logprobs": _top_logprobs,
}
assert set(_CHECKS) == set(_FIELD_NAMES), "every GenerationParams field needs a check"
