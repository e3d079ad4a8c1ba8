"""The synchronous engine: add requests, step, read deltas. One thread owns it (see async_engine)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property

import torch

from qwen_triton.engine.block_manager import BlockManager
from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.model_runner import ModelRunner
from qwen_triton.engine.sampler import SampledTokens, Sampler
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.engine.scheduler import ScheduledSequence, Scheduler
from qwen_triton.engine.sequence import Sequence, SequenceStatus
from qwen_triton.errors import InvalidRequestError
from qwen_triton.layers.kv_cache import KVCache, KVCacheSpec, storage_dtype
from qwen_triton.models.checkpoint import load_config, resolve_checkpoint
from qwen_triton.models.loader import load_model
from qwen_triton.models.memory import StepShape, activation_bytes
from qwen_triton.models.qwen2 import DecoderModel, TensorSplit
from qwen_triton.parallel.embedding import install_vocab_parallel
from qwen_triton.parallel.group import TensorParallelGroup
from qwen_triton.parallel.linears import check_row_parallel_groups, install_row_parallel
from qwen_triton.parallel.shard_plan import ShardPlan
from qwen_triton.parallel.workers import RankContext, RankProcesses, rank_device
from qwen_triton.quantization.prequantized import prequantized_config
from qwen_triton.structured.compiler import GrammarCompiler
from qwen_triton.structured.matcher import GuideMatcher
from qwen_triton.tokenizer.detokenizer import IncrementalDetokenizer
from qwen_triton.tokenizer.prompt import PromptTokenizer
from qwen_triton.transfer import to_device

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 32768  # cap for checkpoints that advertise more than a default pool holds


@dataclass
class RequestOutput:
    request_id: str
    text: str  # new text since the previous output
    token_ids: list[int]  # new tokens since the previous output
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    logprobs: list[float] = field(default_factory=list)
    # per new token, its best alternatives [(token id, log-probability)], when params.top_logprobs
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


def merge_outputs(first: RequestOutput, then: RequestOutput) -> RequestOutput:
    """Two consecutive deltas of one request as one: what a consumer that fell behind receives."""
    return RequestOutput(
        first.request_id,
        first.text + then.text,
        first.token_ids + then.token_ids,
        then.finished,
        then.finish_reason,
        then.prompt_tokens,
        then.completion_tokens,
        then.cached_tokens,
        first.logprobs + then.logprobs,
        first.top_logprobs + then.top_logprobs,
    )


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_total: int
    kv_blocks_free: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    steps_launched_ahead: int = 0  # steps queued before the previous step's tokens were read


@dataclass
class _LaunchedStep:
    """A step queued on the device whose sampled tokens the host has not read yet."""

    seqs: list[Sequence]  # the sequences that sample in it, in the order of its rows
    sampled: SampledTokens | None  # None: no sequence samples (prompt chunks only)


@dataclass(eq=False)
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    reported_tokens: int = 0


class LLMEngine:
    """`rank`: None for the engine itself (rank 0 when tensor_parallel_size > 1: it starts the other ranks);
    a worker process passes its RankContext (see serve_rank) and builds its shard through this same code."""

    def __init__(self, config: EngineConfig, rank: RankContext | None = None):
        self.config = config
        self.device, self.dtype = config.torch_device, config.torch_dtype
        if rank is not None:
            self.device = rank_device(self.device, rank.rank)
        checkpoint = resolve_checkpoint(config.model)
        self.hf_config = load_config(checkpoint)
        self.max_model_len = self._max_model_len()
        self.tokenizer = PromptTokenizer(checkpoint, self.hf_config, self.max_model_len)
        self.workers: RankProcesses | None = None  # rank 0 of a tensor-parallel engine: the other ranks
        self.tp: TensorParallelGroup | None = None  # None: one device, no process group, no collectives
        if config.tensor_parallel_size > 1:
            self._start_tensor_parallel(rank)
        try:
            self._build(checkpoint)
        except BaseException:
            self.shutdown()
            raise

    def _build(self, checkpoint) -> None:
        config = self.config
        self.model = self._load_model(checkpoint)
        self.kv_cache, num_blocks = self._allocate_kv_cache()
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.runner = ModelRunner(
            self.model,
            self.kv_cache,
            scratch_block=num_blocks,
            max_model_len=self.max_model_len,
            max_num_seqs=config.max_num_seqs,
            window=config.attention_window,
            sinks=config.attention_sinks,
            cuda_graphs=config.cuda_graphs,
            mixed_graph_max_tokens=config.mixed_graph_max_tokens,
            max_num_batched_tokens=config.max_num_batched_tokens,
            group=self.tp,
            send_step=None if self.workers is None else self.workers.send_step,
        )
        self.sampler = Sampler(self.hf_config.vocab_size, frozenset(self.tokenizer.eos_token_ids))
        self.requests: dict[str, _Request] = {}
        self._in_flight: _LaunchedStep | None = None  # a step launched ahead (see step())
        self.steps_launched_ahead = 0
        self.prompt_tokens_total = self.generation_tokens_total = 0
        torch.manual_seed(config.seed)  # the shared stream of unseeded requests
        log.info(
            "engine ready: %s, %s on %s, %d KV blocks of %d tokens",
            checkpoint,
            self.dtype,
            self.device,
            num_blocks,
            config.block_size,
        )

    # -- building --------------------------------------------------------------------------------

    def _start_tensor_parallel(self, rank: RankContext | None) -> None:
        """Check that the checkpoint splits, then (rank 0) start the other ranks and join their group.
        Everything refusable is refused here, before a process is started."""
        world = self.config.tensor_parallel_size
        TensorSplit(0, world).check(self.hf_config)
        check_row_parallel_groups(self.hf_config, self.config.quantization, world)
        if self.config.load_format == "auto" and prequantized_config(self.hf_config) is not None:
            raise ValueError(
                "tensor_parallel_size: pre-quantized (GPTQ / AWQ) checkpoints load on one device only; "
                "use tensor_parallel_size 1, or the float checkpoint with quantization=int4 / int8"
            )
        last_gpu = (self.device.index or 0) + world - 1  # rank r runs on rank 0's GPU + r
        if rank is None and self.device.type == "cuda" and last_gpu >= torch.cuda.device_count():
            raise ValueError(
                f"tensor_parallel_size: {world} ranks from {self.device} need GPUs up to cuda:{last_gpu}; "
                f"this process sees {torch.cuda.device_count()}"
            )
        if rank is not None:
            self.tp = rank.join(self.device)
            return
        self.workers = RankProcesses(world, serve_rank, self.config)
        try:
            self.tp = self.workers.join(self.device)
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        """Stop the other tensor-parallel ranks (if any) and leave the process group; idempotent."""
        if self.workers is not None:
            self.workers.stop()
        if self.tp is not None:
            self.tp.destroy()
        self.workers = self.tp = None

    def _max_model_len(self) -> int:
        limit = getattr(self.hf_config, "max_position_embeddings", DEFAULT_MAX_MODEL_LEN)
        if self.config.max_model_len:
            if self.config.max_model_len > limit:
                raise ValueError(f"max_model_len: {self.config.max_model_len} exceeds the checkpoint's {limit}")
            return self.config.max_model_len
        return min(limit, DEFAULT_MAX_MODEL_LEN)

    def _load_model(self, checkpoint) -> DecoderModel:
        """Streamed, quantized as it arrives (models/loader.py); refused up front when it cannot fit. With
        tensor parallelism, this rank's slices only (parallel/shard_plan.py), then the collectives that join
        the ranks' parts are wrapped around the row-parallel and vocabulary-parallel modules."""
        shard = None if self.tp is None else ShardPlan(self.hf_config, TensorSplit(self.tp.rank, self.tp.world_size))
        model = load_model(
            self.hf_config,
            checkpoint,
            device=self.device,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            load_format=self.config.load_format,
            quantization=self.config.quantization,
            reserve=self._memory_reserve(),
            shard=shard,
        )
        if self.tp is not None:
            install_row_parallel(model, self.tp)
            install_vocab_parallel(model, self.tp)
        return model

    def _memory_reserve(self) -> tuple[int, int]:
        """(KV bytes of one sequence at max_model_len, activation bytes of the largest step): what the memory
        plan adds to the weights before loading, so a model that leaves no room to serve is refused early."""
        hf = self.hf_config
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        dtype, quantized = storage_dtype(self.config.kv_cache_dtype, self.dtype)
        kv_heads = hf.num_key_value_heads // self.config.tensor_parallel_size  # this rank's share
        spec = KVCacheSpec(hf.num_hidden_layers, kv_heads, head_dim, self.config.block_size, dtype, quantized)
        step = StepShape(self.config.max_num_batched_tokens, self.config.max_num_seqs)
        weights_quantized = self.config.quantization not in ("", "none") or prequantized_config(hf) is not None
        return int(spec.bytes_per_token() * self.max_model_len), activation_bytes(
            hf, step, self.dtype, quantized=weights_quantized
        )

    def _kv_spec(self) -> KVCacheSpec:
        attn = self.model.layers[0].self_attn
        dtype, quantized = storage_dtype(self.config.kv_cache_dtype, self.dtype)
        return KVCacheSpec(
            len(self.model.layers), attn.num_kv_heads, attn.head_dim, self.config.block_size, dtype, quantized
        )

    def _allocate_kv_cache(self) -> tuple[KVCache, int]:
        spec = self._kv_spec()
        num_blocks = self.config.num_kv_blocks or self._blocks_for_budget(spec)
        if self.tp is not None:  # one block table for all ranks: the smallest pool sets the count
            num_blocks = self.tp.min_over_ranks(num_blocks)
        if num_blocks < 2:
            raise ValueError(
                f"num_kv_blocks: the KV budget holds {num_blocks} blocks; raise kv_memory_fraction "
                "or kv_cache_bytes, or lower max_model_len"
            )
        # One extra block at the end: the scratch target of padding rows in CUDA-graph batches.
        return KVCache(spec, num_blocks + 1, self.device), num_blocks

    def _blocks_for_budget(self, spec: KVCacheSpec) -> int:
        if self.config.kv_cache_bytes:
            budget = self.config.kv_cache_bytes
        elif self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * self.config.kv_memory_fraction) - 2 * 2**30  # room for activations, graphs
        else:
            # CPU: enough for every sequence at full length, bounded to 2 GiB by default.
            wanted = self.config.max_num_seqs * self.max_model_len * spec.bytes_per_token()
            budget = int(min(wanted, 2 * 2**30))
        return max(0, budget // spec.bytes_per_block())

    # -- requests --------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise InvalidRequestError("request_id", f"{request_id!r} is already in flight")
        self.validate(prompt_token_ids, params)
        # Only seeded requests carry a generator of their own; the rest share the device's default one.
        generator = None if params.seed is None else torch.Generator(device=self.device).manual_seed(params.seed)
        seq = Sequence(request_id, list(prompt_token_ids), params, generator=generator)
        seq.bad_word_token_ids = self.tokenizer.bad_word_token_ids(params.bad_words)
        if params.guided_decoding is not None:
            compiled = self.grammar_compiler.compile(params.guided_decoding)  # cached: validate compiled it
            seq.matcher = GuideMatcher(compiled, sorted(self.tokenizer.eos_token_ids))
        stops = list(params.stop)
        self.requests[request_id] = _Request(seq, IncrementalDetokenizer(self.tokenizer.tokenizer, stop=stops))
        self.scheduler.add(seq)
        self.prompt_tokens_total += len(prompt_token_ids)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        params.validate(self.max_model_len, len(prompt_token_ids), self.hf_config.vocab_size)
        if params.guided_decoding is not None:
            self.grammar_compiler.compile(params.guided_decoding)  # a guide the library rejects fails here
        if not self.config.attention_window:
            needed = -(-(len(prompt_token_ids) + params.max_tokens) // self.config.block_size)
            if needed > self.block_manager.num_blocks:
                raise InvalidRequestError(
                    "max_tokens",
                    f"prompt + max_tokens needs {needed} KV blocks but the pool "
                    f"has {self.block_manager.num_blocks}; lower max_tokens",
                )

    @cached_property
    def grammar_compiler(self) -> GrammarCompiler:
        """Built on the first guided request: it indexes the whole vocabulary, which unguided serving never needs."""
        return GrammarCompiler(
            self.tokenizer.tokenizer, self.hf_config.vocab_size, sorted(self.tokenizer.eos_token_ids)
        )

    def abort(self, request_id: str, reason: str = "abort") -> RequestOutput | None:
        """End a request now (freeing its blocks); its final output carries `reason` as finish_reason."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.finish(request.seq, reason)
        request.seq.matcher = None
        return self._output(request, final=True)

    def is_queued(self, request_id: str) -> bool:
        """Waiting for its first step (never scheduled, not a preempted one)."""
        request = self.requests.get(request_id)
        seq = request.seq if request is not None else None
        return seq is not None and seq.status is SequenceStatus.WAITING and not seq.num_preemptions

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or self._in_flight is not None

    # -- stepping --------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one step and return what it produced (see _step). With tensor parallelism, a step that a dead
        rank broke raises WorkerDied, and so does every later step."""
        if self.workers is None:
            return self._step()
        with self.workers.guard():
            return self._step()

    def _step(self) -> list[RequestOutput]:
        """Run one step and return what it produced.

        With `overlap_steps`, the next step is scheduled and queued on the device before the host reads this
        step's tokens: rows continuing a sequence that sampled here take their input token from the device,
        so the host's bookkeeping (appending tokens, detokenizing, stop checks, building outputs) and the
        next step's preparation run while the GPU computes, instead of between GPU steps. This holds for
        steps with prompt chunks too (requests arriving under load). A sequence that turns out to have
        finished just wastes its row of the step launched ahead.
        """
        try:
            current = self._in_flight
            if current is None:
                scheduled = self.scheduler.schedule()
                if not scheduled:
                    return []
                current = self._launch(scheduled)
            self._in_flight = self._launch_ahead(current) if self.config.overlap_steps else None
            return self._complete(current)
        except Exception:
            self._in_flight = None  # the caller fails the requests; nothing may point at their state
            raise

    def _launch(self, scheduled: list[ScheduledSequence], in_flight: _LaunchedStep | None = None) -> _LaunchedStep:
        """Queue the step on the device. Rows whose input is a token of ``in_flight`` read it there."""
        logits = self.runner.run(scheduled, self._device_inputs(scheduled, in_flight))
        sampling = [item.seq for item in scheduled if item.samples]
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_tokens
            self.block_manager.register_full_blocks(item.seq)
        for seq in sampling:
            seq.pending_tokens += 1
        return _LaunchedStep(sampling, self.sampler.sample(logits, sampling) if sampling else None)

    @staticmethod
    def _device_inputs(scheduled: list[ScheduledSequence], in_flight: _LaunchedStep | None) -> torch.Tensor | None:
        """One device token per scheduled row, the in-flight step's token for rows whose input it is (others:
        any value, unread); None when no row needs one."""
        if in_flight is None or not any(item.input_on_device for item in scheduled):
            return None
        row_of = {id(seq): row for row, seq in enumerate(in_flight.seqs)}
        rows = [row_of[id(item.seq)] if item.input_on_device else 0 for item in scheduled]
        tokens = in_flight.sampled.tokens
        if rows == list(range(len(tokens))):
            return tokens
        return tokens.index_select(0, to_device(rows, torch.long, tokens.device))

    def _launch_ahead(self, current: _LaunchedStep) -> _LaunchedStep | None:
        """The step after `current`, scheduled and queued before the host reads `current`'s tokens; None
        where the scheduler has nothing to run or must wait for them (penalties read the token history on
        the host, which lacks the tokens still on the device)."""
        if current.sampled is None or any(seq.params.reads_token_history for seq in current.seqs):
            return None
        # A sequence whose token on its way is certainly its last (a length limit) sits the step out.
        scheduled = self.scheduler.schedule(
            sits_out=lambda seq: seq.pending_tokens > 0 and self._at_length_limit(seq, seq.pending_tokens)
        )
        if not scheduled:
            return None
        self.steps_launched_ahead += 1
        return self._launch(scheduled, in_flight=current)

    def _at_length_limit(self, seq: Sequence, pending: int = 0) -> bool:
        """max_tokens or max_model_len reached, counting `pending` tokens not yet appended."""
        return len(seq.output_token_ids) + pending >= seq.params.max_tokens or len(seq) + pending >= self.max_model_len

    def _complete(self, step: _LaunchedStep) -> list[RequestOutput]:
        """Read the step's tokens (waiting for that step alone) and apply them to their sequences."""
        if step.sampled is None:
            return []
        tokens, logprobs = step.sampled.lists()
        top_lists = step.sampled.top_lists()
        now = time.monotonic()
        outputs = []
        for row, (seq, token, logprob) in enumerate(zip(step.seqs, tokens, logprobs)):
            request = self.requests.get(seq.request_id)
            if request is None or request.seq is not seq:
                continue  # finished or aborted while this step was on its way: its token is void
            seq.first_token_time = seq.first_token_time or now
            seq.pending_tokens -= 1
            self._append(request, token, logprob)
            if top_lists is not None and seq.params.top_logprobs:
                seq.output_top_logprobs.append(top_lists[row][: seq.params.top_logprobs])
            if not seq.is_finished:
                self.block_manager.register_full_blocks(seq)
            outputs.append(self._output(request, final=seq.is_finished))
        return outputs

    def _append(self, request: _Request, token: int, logprob: float) -> None:
        seq = request.seq
        seq.append_token(token, logprob)
        self.generation_tokens_total += 1
        request.detokenizer.add([token])
        guide_done = seq.matcher is not None and self._guide_done(seq, token)
        reason = "stop" if guide_done else self._finish_reason(seq, token, request.detokenizer.stopped)
        if reason:
            self.scheduler.finish(seq, reason)
            seq.matcher = None
            del self.requests[seq.request_id]
        elif self.config.attention_window:
            self.block_manager.release_outside_window(seq, self.config.attention_sinks, self.config.attention_window)

    @staticmethod
    def _guide_done(seq: Sequence, token: int) -> bool:
        """Advance the sequence's grammar by its new token. True when nothing may follow: the grammar is
        complete (its stop token accepted), or it refused the token, which only a ban that removed every
        token it allowed can cause (min_tokens banning the EOS that ends the guide)."""
        if not seq.matcher.accept(token):
            log.warning("request %s: token %d is outside its guide; finishing it", seq.request_id, token)
            return True
        return seq.matcher.is_terminated

    def _finish_reason(self, seq: Sequence, token: int, stop_string_seen: bool) -> str | None:
        params = seq.params
        if stop_string_seen or token in params.stop_token_ids:
            return "stop"
        if not params.ignore_eos and token in self.tokenizer.eos_token_ids:
            return "stop"
        if self._at_length_limit(seq):
            return "length"
        return None

    def _output(self, request: _Request, final: bool) -> RequestOutput:
        seq = request.seq
        new_tokens = seq.output_token_ids[request.reported_tokens :]
        new_logprobs = seq.output_logprobs[request.reported_tokens :] if seq.params.logprobs else []
        new_top = seq.output_top_logprobs[request.reported_tokens :]
        request.reported_tokens = len(seq.output_token_ids)
        return RequestOutput(
            seq.request_id,
            request.detokenizer.take(final),
            new_tokens,
            final,
            seq.finish_reason if final else None,
            len(seq.prompt_token_ids),
            len(seq.output_token_ids),
            seq.num_cached_prompt_tokens,
            new_logprobs,
            new_top,
        )

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            len(self.scheduler.running),
            len(self.scheduler.waiting),
            bm.num_blocks,
            bm.num_free_blocks,
            bm.counters.queries,
            bm.counters.hits,
            self.scheduler.num_preemptions,
            self.prompt_tokens_total,
            self.generation_tokens_total,
            self.steps_launched_ahead,
        )


def serve_rank(context: RankContext, config: EngineConfig) -> None:
    """A tensor-parallel worker process's life: build rank `context.rank`'s shard, then run rank 0's steps."""
    engine = LLMEngine(config, rank=context)
    try:
        context.serve(engine.runner.execute)
    finally:
        engine.shutdown()
