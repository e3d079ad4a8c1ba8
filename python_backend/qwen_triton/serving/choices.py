"""Several choices for one prompt (`n`, TensorRT-LLM's `num_return_sequences`) and the output tensors of a
request that needs more than the lean path: its choices labelled, log-probabilities cumulated, the best
alternatives of each token, the prompt echoed in front of the text.

Each choice is its own engine request on the same prompt token ids. Choice 0 starts first and the others
once it has produced its first token: by then the prompt's full KV blocks are registered in the prefix
cache, so the other choices reuse them instead of computing the prompt again.

No Triton import: outputs are numpy arrays by output name, each with the leading batch dimension of 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from qwen_triton.engine.sampling_params import SamplingParams

SEED_SPACE = 2**63


def engine_request_ids(request_id: str, n: int) -> list[str]:
    """The engine request id of each choice (one request keeps its own id)."""
    return [request_id] if n == 1 else [f"{request_id}-{index}" for index in range(n)]


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """A seeded request gives choice i the seed + i: reproducible, and the choices differ."""
    seed = None if params.seed is None else (params.seed + index) % SEED_SPACE
    return dataclasses.replace(params, n=1, seed=seed)


async def choice_outputs(
    engine, engine_ids: list[str], prompt_ids: list[int], params: SamplingParams, timeout: float | None = None
) -> AsyncIterator[tuple[int, object]]:
    """(choice index, RequestOutput) in arrival order until every choice has finished. Leaving early
    (cancel, error) cancels the choices, which aborts their engine requests. `timeout`: each choice's
    deadline in seconds (the request's)."""
    queue: asyncio.Queue = asyncio.Queue()
    tasks: list[asyncio.Future] = []

    async def run(index: int) -> None:
        try:
            async for output in engine.generate(
                engine_ids[index], prompt_token_ids=prompt_ids, params=choice_params(params, index), timeout=timeout
            ):
                if index == 0 and len(tasks) == 1:
                    tasks.extend(asyncio.ensure_future(run(i)) for i in range(1, len(engine_ids)))
                queue.put_nowait((index, output))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # handed to the consumer, which reports it to the client
            queue.put_nowait((index, error))

    tasks.append(asyncio.ensure_future(run(0)))
    try:
        unfinished = len(engine_ids)
        while unfinished:
            index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            unfinished -= item.finished
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list = field(default_factory=list)
    finish_reason: str = ""
    completion_tokens: int = 0
    finished: bool = False


class ChoiceSet:
    """What the choices of one request have produced, and the response tensors built from it."""

    def __init__(self, n: int, params: SamplingParams, decode_token: Callable[[int], str]):
        self.choices = [Choice() for _ in range(n)]
        self.params = params
        self.decode_token = decode_token
        self.prompt_tokens = 0

    @property
    def all_finished(self) -> bool:
        return all(choice.finished for choice in self.choices)

    def add(self, index: int, output) -> None:
        choice = self.choices[index]
        choice.text.append(output.text)
        choice.token_ids.extend(output.token_ids)
        choice.logprobs.extend(output.logprobs or [])
        choice.top_logprobs.extend(output.top_logprobs or [])
        choice.finish_reason = output.finish_reason or ""
        choice.completion_tokens = output.completion_tokens
        choice.finished = output.finished
        self.prompt_tokens = output.prompt_tokens

    def delta_tensors(self, index: int, output) -> dict[str, np.ndarray]:
        """One streamed delta of choice `index`; `cum_log_probs` is the choice's total so far."""
        choice = self.choices[index]
        tensors = _common_tensors(output.text, output.token_ids, self.prompt_tokens)
        tensors["finish_reason"] = _bytes_row([choice.finish_reason])
        tensors["completion_tokens"] = np.array([[choice.completion_tokens]], dtype=np.int32)
        if self.params.logprobs:
            tensors.update(_logprob_tensors(output.logprobs or [], [sum(choice.logprobs)]))
        if self.params.top_logprobs:
            tensors["top_logprobs"] = _bytes_row([self._top_json(output.top_logprobs or [])])
        if len(self.choices) > 1:
            tensors["sequence_index"] = np.array([[index]], dtype=np.int32)
        return tensors

    def final_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The single response of a non-streaming request: with n choices, text_output, finish_reason,
        completion_tokens, cum_log_probs and top_logprobs hold n items, in choice order (output_ids and the
        per-token logprobs, which would be ragged, come only with one choice)."""
        choices = self.choices
        texts = [prefix + "".join(choice.text) for choice in choices]
        if len(choices) == 1:
            tensors = _common_tensors(texts[0], choices[0].token_ids, self.prompt_tokens)
        else:
            tensors = {"text_output": _bytes_row(texts), "prompt_tokens": np.array([[self.prompt_tokens]], np.int32)}
        tensors["finish_reason"] = _bytes_row([choice.finish_reason for choice in choices])
        tensors["completion_tokens"] = np.array([[choice.completion_tokens for choice in choices]], dtype=np.int32)
        if self.params.logprobs:
            per_token = choices[0].logprobs if len(choices) == 1 else None
            tensors.update(_logprob_tensors(per_token, [sum(choice.logprobs) for choice in choices]))
        if self.params.top_logprobs:
            tensors["top_logprobs"] = _bytes_row([self._top_json(choice.top_logprobs) for choice in choices])
        return tensors

    def _top_json(self, per_token: list) -> str:
        """Per generated token, its best alternatives best first: [[{"id", "token", "logprob"}, ...], ...]."""
        return json.dumps(
            [
                [{"id": token, "token": self.decode_token(token), "logprob": logprob} for token, logprob in best]
                for best in per_token
            ]
        )


def _common_tensors(text: str, token_ids: list[int], prompt_tokens: int) -> dict[str, np.ndarray]:
    return {
        "text_output": _bytes_row([text]),
        "output_ids": np.array([token_ids], dtype=np.int64).reshape(1, -1),
        "prompt_tokens": np.array([[prompt_tokens]], dtype=np.int32),
    }


def _logprob_tensors(per_token: list[float] | None, cumulative: list[float]) -> dict[str, np.ndarray]:
    tensors = {"cum_log_probs": np.array([cumulative], dtype=np.float32)}
    if per_token is not None:
        values = np.array([per_token], dtype=np.float32).reshape(1, -1)
        tensors["logprobs"] = values
        tensors["output_log_probs"] = values  # TensorRT-LLM's name for the same values
    return tensors


def _bytes_row(texts: list[str]) -> np.ndarray:
    return np.array([[text.encode("utf-8") for text in texts]], dtype=np.object_)
