"""Many asyncio callers, one engine thread.

The engine (model, KV cache, scheduler) is touched only by its own thread, which drains the inbox of
new requests and aborts between steps and sleeps when there is nothing to do. Each request's deltas go
back to the caller's event loop through its own asyncio.Queue. A caller that falls behind (a server
busy sending responses) gets the deltas that piled up merged into one, so under load it pays one send
for several tokens instead of falling further behind. A failing step fails the requests in it and the
loop goes on serving the rest.

Fail-safe rules, all enforced here so every front end gets them:
  - admission: with `max_waiting_requests`, a request that would wait behind that many others is refused
    at once with EngineUnavailableError (retryable), instead of queueing for minutes;
  - deadlines: a request's own `timeout` (seconds from arrival; finish_reason "timeout") and the server's
    `queue_timeout_s` (longest wait before its first step; finish_reason "queue_timeout") end it with what
    it has, and free its KV blocks;
  - drain: after `start_draining()` new requests are refused (retryable) while admitted ones, queued ones
    included, run to their end;
  - liveness: the engine thread beats (`heartbeat_age()`) at least once a second, also when idle; if the
    thread dies, every caller in flight gets an error at once, and so do callers of `fail_in_flight`.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator

from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.llm_engine import EngineStats, LLMEngine, RequestOutput, merge_outputs
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError
from qwen_triton.parallel.workers import WorkerDied

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0  # the engine thread beats at least this often, also when idle
QUEUE_FULL_RETRY_AFTER_S = 2.0
DRAINING_RETRY_AFTER_S = 1.0


class EngineUnavailableError(RuntimeError):
    """The engine will not take this request now: a retryable refusal (HTTP 503 / gRPC UNAVAILABLE), with
    how long a client should wait before trying again (here or on another replica)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(f"{message}; retry after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


def freeze_startup_objects() -> int:
    """For a serving process, once its engine is up: collect, then move every object alive now (the
    imported modules, the model, the tokenizer: ~350K objects) out of the cyclic garbage collector's
    sight, and return how many. A full collection walks every tracked object and stops the engine thread
    meanwhile: 153-160 ms with a 1-layer engine loaded on the 2-core CI machine (host_overhead.py --gc), an
    inter-token latency spike for every running request whenever one triggers; after the freeze it walks
    only what came later (2 ms after 600 decode steps of 64 sequences there). `gc.unfreeze()` undoes it
    (at shutdown, so that the interpreter frees them as usual)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class AsyncLLMEngine:
    def __init__(self, config: EngineConfig):
        self.engine = LLMEngine(config)
        self._inbox: deque = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._draining = False
        self._failure: BaseException | None = None  # why the engine thread ended, when it did unasked
        self._queued_adds = 0  # "add" messages in the inbox: waiting, but not yet in the scheduler's count
        self._deadlines: list[tuple[float, str, str]] = []  # heap of (when, request_id, finish_reason)
        self._last_beat = time.monotonic()
        self._ids = itertools.count()
        self._stats = self.engine.stats()
        self._thread = threading.Thread(target=self._run, name="qwen-engine", daemon=True)
        self._thread.start()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    async def generate(
        self,
        request_id: str | None = None,
        *,
        prompt: str | None = None,
        messages=None,
        prompt_token_ids: list[int] | None = None,
        params: SamplingParams | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield deltas until the request finishes. Raises InvalidRequestError (bad input) or
        EngineUnavailableError (full, draining, failed: retryable) before the first one. `timeout`: seconds
        from now after which the request ends with finish_reason "timeout"."""
        params = params or SamplingParams()
        request_id = request_id or f"req-{next(self._ids)}"
        ids = self.engine.tokenizer.encode(prompt=prompt, messages=messages, prompt_token_ids=prompt_token_ids)
        self.engine.validate(ids, params)
        if timeout is not None and not timeout > 0:
            raise InvalidRequestError("timeout", f"must be > 0 seconds, got {timeout!r}")
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._admit(request_id)
            self._listeners[request_id] = (asyncio.get_running_loop(), queue)
            self._inbox.append(("add", request_id, ids, params, self._deadlines_for(request_id, timeout)))
            self._queued_adds += 1
        self._wake.set()
        finished = False
        try:
            held = None  # an error that arrived behind deltas: raised after they are yielded
            while not finished:
                item = held if held is not None else await queue.get()
                held = None
                while isinstance(item, RequestOutput) and not item.finished and not queue.empty():
                    following = queue.get_nowait()
                    if not isinstance(following, RequestOutput):
                        held = following
                        break
                    item = merge_outputs(item, following)
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:  # the caller went away (cancel, disconnect): stop computing for it
                self.abort(request_id)
            with self._lock:
                self._listeners.pop(request_id, None)

    def _admit(self, request_id: str) -> None:
        """Refuse a new request that the engine cannot take now (called with the lock held)."""
        if self._stopped:
            raise RuntimeError("the engine is shut down")
        if self._failure is not None:
            raise EngineUnavailableError(f"the engine failed ({self._failure}); this replica is restarting", 5.0)
        if self._draining:
            raise EngineUnavailableError(
                "the server is shutting down; send the request to another replica", DRAINING_RETRY_AFTER_S
            )
        limit = self.engine.config.max_waiting_requests
        if limit and self._num_left_waiting() >= limit:
            raise EngineUnavailableError(
                f"the server is overloaded: {limit} requests are already waiting (max_waiting_requests)",
                QUEUE_FULL_RETRY_AFTER_S,
            )
        if request_id in self._listeners:
            raise InvalidRequestError("request_id", f"{request_id!r} is already in flight")

    def _num_left_waiting(self) -> int:
        """Requests that will wait for a slot: those not running yet, less the free running slots (a burst
        that the running batch has room for is not a queue)."""
        stats = self._stats
        not_running = stats.num_waiting + self._queued_adds
        return max(0, not_running - max(0, self.engine.config.max_num_seqs - stats.num_running))

    def _deadlines_for(self, request_id: str, timeout: float | None) -> list[tuple[float, str, str]]:
        now = time.monotonic()
        deadlines = []
        if timeout is not None:
            deadlines.append((now + timeout, request_id, "timeout"))
        if self.engine.config.queue_timeout_s:
            deadlines.append((now + self.engine.config.queue_timeout_s, request_id, "queue_timeout"))
        return deadlines

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._inbox.append(("abort", request_id))
        self._wake.set()

    def stats(self) -> EngineStats:
        """The counters as of the last step (read without stopping the engine thread)."""
        return self._stats

    # -- health and drain (any thread) -----------------------------------------------------------

    def heartbeat_age(self) -> float:
        """Seconds since the engine thread last went round its loop (at most ~1 s when healthy and idle;
        one step's duration when busy)."""
        return time.monotonic() - self._last_beat

    def failure(self) -> str | None:
        """Why the engine cannot serve (its thread died or stopped beating), or None while it can."""
        if self._failure is not None:
            return f"the engine thread died: {self._failure!r}"
        if not self._thread.is_alive() and not self._stopped:
            return "the engine thread is gone"
        stall = self.engine.config.stall_timeout_s
        if stall and self.heartbeat_age() > stall:
            return f"the engine thread has not completed a step for {self.heartbeat_age():.0f} s (stall_timeout_s)"
        return None

    def fail_in_flight(self, error: BaseException) -> int:
        """Give every caller in flight `error` now, whatever the engine thread is doing; returns how many."""
        with self._lock:
            listeners = list(self._listeners.items())
        for _request_id, (loop, queue) in listeners:
            loop.call_soon_threadsafe(queue.put_nowait, error)
        return len(listeners)

    def start_draining(self) -> None:
        """From now on refuse new requests (retryable); the admitted ones run to their end."""
        with self._lock:
            self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    def num_in_flight(self) -> int:
        """Requests admitted and not yet finished (queued ones included)."""
        with self._lock:
            return len(self._listeners)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.engine.shutdown()  # tensor parallelism: stops the worker processes (nothing to do on one device)

    # -- engine thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # noqa: BLE001 — whatever ended the thread, no caller may hang on it
            self._failure = error
            log.exception("the engine thread died; failing every request in flight")
            self.fail_in_flight(EngineUnavailableError(f"the engine failed ({error!r})", 5.0))

    def _loop(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            self._drain_inbox()
            self._expire_deadlines()
            if self._stopped:
                self._fail_all(RuntimeError("the engine shut down"))
                return
            if not self.engine.has_unfinished():
                self._stats = self.engine.stats()
                self._wake.wait(timeout=self._idle_wait())
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except WorkerDied:
                raise  # a tensor-parallel rank is gone: the engine cannot step again; _run fails the instance
            except Exception as error:  # noqa: BLE001 — one bad step must not take the server down
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all(RuntimeError(f"engine step failed: {error}"))
                continue
            self._stats = self.engine.stats()
            self._deliver_step(outputs)

    def _drain_inbox(self) -> None:
        while True:
            with self._lock:
                if not self._inbox:
                    return
                message = self._inbox.popleft()
            if message[0] == "add":
                _, request_id, ids, params, deadlines = message
                try:
                    self.engine.add_request(request_id, ids, params)
                    for deadline in deadlines:
                        heapq.heappush(self._deadlines, deadline)
                except Exception as error:  # noqa: BLE001 — validated before, but never kill the loop
                    self._deliver(request_id, error)
                with self._lock:
                    self._queued_adds -= 1
                    self._stats = self.engine.stats()  # the waiting count admission reads, now exact
            else:
                output = self.engine.abort(message[1])
                if output is not None:
                    self._deliver(message[1], output)

    def _expire_deadlines(self) -> None:
        """End the requests whose deadline passed: any request at its `timeout`; one still queued (never
        scheduled) at the queue timeout. Deadlines of requests already gone are dropped as they come up."""
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _when, request_id, reason = heapq.heappop(self._deadlines)
            if reason == "queue_timeout" and not self.engine.is_queued(request_id):
                continue
            output = self.engine.abort(request_id, reason=reason)
            if output is not None:
                self._deliver(request_id, output)

    def _idle_wait(self) -> float:
        """How long the idle loop may sleep: until the next beat or the next deadline."""
        if not self._deadlines:
            return HEARTBEAT_SECONDS
        return max(0.0, min(HEARTBEAT_SECONDS, self._deadlines[0][0] - time.monotonic()))

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
            self._deliver(request_id, error)

    def _deliver_step(self, outputs) -> None:
        """A step's outputs, one wake-up per event loop instead of one per request: at 256 running
        sequences that is one cross-thread call per step, not 256."""
        by_loop: dict = {}
        with self._lock:
            for output in outputs:
                listener = self._listeners.get(output.request_id)
                if listener is not None:
                    loop, queue = listener
                    by_loop.setdefault(loop, []).append((queue, output))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_put_all, items)

    def _deliver(self, request_id: str, item) -> None:
        with self._lock:
            listener = self._listeners.get(request_id)
        if listener is not None:
            loop, queue = listener
            loop.call_soon_threadsafe(queue.put_nowait, item)


def _put_all(items) -> None:
    for queue, output in items:
        queue.put_nowait(output)
