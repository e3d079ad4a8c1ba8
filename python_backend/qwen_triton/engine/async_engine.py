"""Many asyncio callers, one engine thread.

The engine (model, KV cache, scheduler) is touched only by its own thread, which drains the inbox of
new requests and aborts between steps and sleeps when there is nothing to do. Each request's deltas go
back to the caller's event loop through its own asyncio.Queue. A caller that falls behind (a server
busy sending responses) gets the deltas that piled up merged into one, so under load it pays one send
for several tokens instead of falling further behind. A failing step fails the requests in it and the
loop goes on serving the rest.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator

from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.llm_engine import EngineStats, LLMEngine, RequestOutput, merge_outputs
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError

log = logging.getLogger(__name__)


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
    ) -> AsyncIterator[RequestOutput]:
        """Yield deltas until the request finishes. Raises InvalidRequestError before the first one."""
        params = params or SamplingParams()
        request_id = request_id or f"req-{next(self._ids)}"
        ids = self.engine.tokenizer.encode(prompt=prompt, messages=messages, prompt_token_ids=prompt_token_ids)
        self.engine.validate(ids, params)
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._stopped:
                raise RuntimeError("the engine is shut down")
            if request_id in self._listeners:
                raise InvalidRequestError("request_id", f"{request_id!r} is already in flight")
            self._listeners[request_id] = (asyncio.get_running_loop(), queue)
            self._inbox.append(("add", request_id, ids, params))
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

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._inbox.append(("abort", request_id))
        self._wake.set()

    def stats(self) -> EngineStats:
        """The counters as of the last step (read without stopping the engine thread)."""
        return self._stats

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)

    # -- engine thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._drain_inbox()
            if self._stopped:
                self._fail_all(RuntimeError("the engine shut down"))
                return
            if not self.engine.has_unfinished():
                self._stats = self.engine.stats()
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
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
                _, request_id, ids, params = message
                try:
                    self.engine.add_request(request_id, ids, params)
                except Exception as error:  # noqa: BLE001 — validated before, but never kill the loop
                    self._deliver(request_id, error)
            else:
                output = self.engine.abort(message[1])
                if output is not None:
                    self._deliver(message[1], output)

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
