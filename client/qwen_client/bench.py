"""Load benchmark: N concurrent streaming requests; TTFT, inter-token latency and tokens/s percentiles.

Prompts are random token ids (sent as `input_ids`) of exactly `prompt_tokens` tokens, distinct per request so
that no prefix cache flatters the numbers, and `ignore_eos` makes every request produce `max_tokens` tokens.

    from qwen_client.bench import run_bench
    result = run_bench("localhost:8001", concurrency=4, num_requests=16, prompt_tokens=128, max_tokens=64)
    print(result.format_table())
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field

from .async_client import AsyncQwenClient
from .errors import InvalidParameterError, QwenClientError
from .params import GenerationParams
from .stats import Summary, summarize

# Prompt token ids are drawn from [max_token_id / 30, max_token_id): the default stays inside every supported
# vocabulary (SmolLM2: 49,152; Qwen2.5: 151,936) and clear of the special tokens at either end. Tiny test
# models with a small vocabulary pass their own bound.
DEFAULT_MAX_TOKEN_ID = 30000
_MAX_ERRORS_KEPT = 5


@dataclass(frozen=True)
class BenchConfig:
    url: str
    concurrency: int
    num_requests: int
    prompt_tokens: int
    max_tokens: int
    protocol: str = "grpc"
    model: str = "qwen"
    timeout: float = 300.0
    seed: int = 0
    max_token_id: int = DEFAULT_MAX_TOKEN_ID

    def __post_init__(self):
        for name in ("concurrency", "num_requests", "prompt_tokens", "max_tokens", "max_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(name, f"must be an integer >= 1, got {value!r}")


@dataclass
class RequestTiming:
    """What one request measured (seconds)."""

    latency_s: float = 0.0
    ttft_s: float | None = None
    inter_token_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        return self.output_tokens / self.latency_s if self.output_tokens and self.latency_s > 0 else None


@dataclass(frozen=True)
class BenchResult:
    config: BenchConfig
    duration_s: float
    completed: int
    failed: int
    output_tokens: int
    ttft_s: Summary
    inter_token_latency_s: Summary
    request_tokens_per_s: Summary  # per request: its output tokens / its latency
    request_latency_s: Summary
    output_tokens_per_s: float  # aggregate over the run
    requests_per_s: float
    errors: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        # NaN (no samples) is not JSON: write null instead.
        return json.dumps(_nan_to_none(self.to_dict()), indent=2)

    def format_table(self) -> str:
        c = self.config
        rows = [
            ("TTFT (ms)", self.ttft_s, 1000.0),
            ("inter-token latency (ms)", self.inter_token_latency_s, 1000.0),
            ("request tokens/s", self.request_tokens_per_s, 1.0),
            ("request latency (s)", self.request_latency_s, 1.0),
        ]
        lines = [
            f"{c.num_requests} requests, concurrency {c.concurrency}, prompt {c.prompt_tokens} tokens, "
            f"max_tokens {c.max_tokens}, {c.protocol}://{c.url} model {c.model}",
            f"completed {self.completed}, failed {self.failed}, in {self.duration_s:.2f} s",
            f"{'metric':<26}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}",
        ]
        for label, summary, scale in rows:
            values = (summary.p50, summary.p90, summary.p99, summary.mean)
            lines.append(f"{label:<26}" + "".join(f"{v * scale:>10.2f}" for v in values))
        lines.append(f"aggregate: {self.output_tokens_per_s:.1f} output tokens/s, {self.requests_per_s:.2f} requests/s")
        lines.extend(f"error: {e}" for e in self.errors)
        return "\n".join(lines)


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def make_prompt(config: BenchConfig, request_index: int) -> list[int]:
    """The prompt of request `request_index`: the same for the same seed, different for every request."""
    rng = random.Random(config.seed * 1_000_003 + request_index)
    low = config.max_token_id // 30
    return [rng.randrange(low, config.max_token_id) for _ in range(config.prompt_tokens)]


async def _timed_request(client: AsyncQwenClient, prompt: list[int], params: GenerationParams) -> RequestTiming:
    timing = RequestTiming()
    start = last = time.perf_counter()
    try:
        async for chunk in client.stream_chunks(prompt, params):
            new_tokens = len(chunk.token_ids)
            if not new_tokens:
                continue
            now = time.perf_counter()
            if timing.ttft_s is None:
                timing.ttft_s = now - start
                # Tokens that came merged with the first one arrived with it: gaps of zero.
                timing.inter_token_s.extend([0.0] * (new_tokens - 1))
            else:
                # A response carrying k tokens spreads its gap over them: k samples of gap / k.
                timing.inter_token_s.extend([(now - last) / new_tokens] * new_tokens)
            last = now
            timing.output_tokens += new_tokens
    except QwenClientError as error:
        timing.error = str(error)
    timing.latency_s = time.perf_counter() - start
    return timing


async def arun_bench(config: BenchConfig) -> BenchResult:
    """Runs the benchmark on the current event loop."""
    params = GenerationParams(max_tokens=config.max_tokens, ignore_eos=True, temperature=0.0)
    timings: list[RequestTiming] = []
    next_index = iter(range(config.num_requests))

    async with AsyncQwenClient(config.url, config.protocol, config.model, timeout=config.timeout) as client:

        async def worker():
            # Workers pull request indices until none are left: `concurrency` requests in flight at all times.
            for index in next_index:
                prompt = make_prompt(config, index)
                timings.append(await _timed_request(client, prompt, params))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(config.concurrency, config.num_requests))))
        duration = time.perf_counter() - start
    return _result(config, timings, duration)


def _result(config: BenchConfig, timings: list[RequestTiming], duration_s: float) -> BenchResult:
    ok = [t for t in timings if t.error is None]
    output_tokens = sum(t.output_tokens for t in ok)
    errors = list(dict.fromkeys(t.error for t in timings if t.error))[:_MAX_ERRORS_KEPT]
    return BenchResult(
        config=config,
        duration_s=duration_s,
        completed=len(ok),
        failed=len(timings) - len(ok),
        output_tokens=output_tokens,
        ttft_s=summarize([t.ttft_s for t in ok if t.ttft_s is not None]),
        inter_token_latency_s=summarize([s for t in ok for s in t.inter_token_s]),
        request_tokens_per_s=summarize([t.tokens_per_s for t in ok if t.tokens_per_s is not None]),
        request_latency_s=summarize([t.latency_s for t in ok]),
        output_tokens_per_s=output_tokens / duration_s if duration_s > 0 else 0.0,
        requests_per_s=len(ok) / duration_s if duration_s > 0 else 0.0,
        errors=errors,
    )


def run_bench(
    url: str,
    concurrency: int,
    num_requests: int,
    prompt_tokens: int,
    max_tokens: int,
    protocol: str = "grpc",
    model: str = "qwen",
    timeout: float = 300.0,
    seed: int = 0,
    max_token_id: int = DEFAULT_MAX_TOKEN_ID,
) -> BenchResult:
    """Runs the benchmark in a fresh event loop (call `arun_bench` from async code instead)."""
    config = BenchConfig(
        url, concurrency, num_requests, prompt_tokens, max_tokens, protocol, model, timeout, seed, max_token_id
    )
    return asyncio.run(arun_bench(config))
