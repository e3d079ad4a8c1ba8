"""The `qwen` Triton model: hosts one AsyncLLMEngine per model instance and streams its outputs back.

Triton's Python backend calls `execute` with a batch of requests and, for a decoupled model, expects it to
return at once; responses go out later through each request's response sender. So the adapter runs an
asyncio loop on its own thread and hands every request to it as a coroutine that:
  parses the inputs (request_parsing) -> engine.generate(...) -> one response per delta (stream=true) or
  one final response (stream=false) -> the final flag,
aborting the engine request when the client cancels or goes away, and turning every error into an error
response that names the field, never an exception that reaches Triton.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

from qwen_triton.engine.async_engine import AsyncLLMEngine, freeze_startup_objects
from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError
from qwen_triton.serving.metrics import EngineMetrics, MetricsReporter
from qwen_triton.serving.request_parsing import SCALAR_INPUTS, client_error_message, parse_request

INPUT_NAMES = ("text_input", "messages", "input_ids", "stream", "stop", "stop_token_ids", *SCALAR_INPUTS)
CANCEL_POLL_SECONDS = 0.1
WARMUP_TIMEOUT_SECONDS = 600
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class EventLoopThread:
    """An asyncio loop running forever on a daemon thread; other threads submit coroutines to it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qwen-asyncio", daemon=True)
        self._thread.start()

    def submit(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


@dataclass
class Completion:
    """What a non-streaming request accumulates before its single response."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add(self, output) -> None:
        self.text.append(output.text)
        self.token_ids.extend(output.token_ids)
        self.logprobs.extend(output.logprobs or [])


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        config = EngineConfig.from_parameters(_with_instance_device(parameters, args))
        pb_utils.Logger.log_info(f"qwen: starting the engine for {config.model} on {config.device}")
        self.loop = EventLoopThread()
        self.engine = AsyncLLMEngine(config)
        self.max_model_len = self.engine.max_model_len
        labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
        self.metrics = EngineMetrics(pb_utils, labels)
        self.reporter = MetricsReporter(self.metrics, self.engine.stats)
        self.reporter.start()
        self._warm_up()
        frozen = freeze_startup_objects()
        pb_utils.Logger.log_info(f"qwen: engine warmed up, ready ({frozen} start-up objects frozen for the GC)")

    def _warm_up(self) -> None:
        """Run one short generation so readiness means compiled, allocated and fast."""

        async def run_once():
            params = SamplingParams(max_tokens=2, temperature=0.0)
            async for _ in self.engine.generate("warmup", prompt="Hello", params=params):
                pass

        self.loop.submit(run_once()).result(timeout=WARMUP_TIMEOUT_SECONDS)

    def execute(self, requests):
        for request in requests:
            self.loop.submit(self._serve(request))
        return None

    def finalize(self):
        self.reporter.stop()
        self.engine.shutdown()
        self.loop.stop()
        self.metrics.close()
        gc.unfreeze()

    # ------------------------------------------------------------------ one request

    async def _serve(self, request) -> None:
        sender = request.get_response_sender()
        request_id = f"{request.request_id() or 'req'}-{uuid.uuid4().hex[:12]}"
        try:
            parsed = parse_request(_input_arrays(request), self.max_model_len)
            await self._generate(request, sender, request_id, parsed)
        except InvalidRequestError as error:
            _send_error(sender, client_error_message(error), pb_utils.TritonError.INVALID_ARG)
        except Exception as error:  # the server must keep serving others: report, never raise to Triton
            pb_utils.Logger.log_error(f"qwen: request {request_id} failed: {error!r}")
            self.engine.abort(request_id)
            _send_error(sender, f"internal error: {error}", pb_utils.TritonError.INTERNAL)

    async def _generate(self, request, sender, request_id: str, parsed) -> None:
        arrival = last = time.monotonic()
        first_token_seen = False
        completion = Completion()
        cancelled = asyncio.Event()
        watcher = asyncio.ensure_future(self._abort_when_cancelled(request, request_id, cancelled))
        try:
            async for output in self.engine.generate(request_id, params=parsed.params, **parsed.prompt):
                now = time.monotonic()
                if output.token_ids:
                    if first_token_seen:
                        self.metrics.observe_inter_token(now - last, len(output.token_ids))
                    else:
                        self.metrics.observe_first_token(now - arrival)
                        first_token_seen = True
                    last = now
                if cancelled.is_set():  # set by the watcher: asking Triton here would cost an IPC per delta
                    _send_error(sender, "request cancelled by the client", pb_utils.TritonError.CANCELLED)
                    return
                if parsed.stream:
                    if output.token_ids or output.text or output.finished:
                        sender.send(
                            _response(output, output.text, output.token_ids, output.logprobs),
                            flags=FINAL if output.finished else 0,
                        )
                else:
                    completion.add(output)
                    if output.finished:
                        sender.send(
                            _response(output, "".join(completion.text), completion.token_ids, completion.logprobs),
                            flags=FINAL,
                        )
        finally:
            watcher.cancel()

    async def _abort_when_cancelled(self, request, request_id: str, cancelled: asyncio.Event) -> None:
        """Polls Triton for a cancel, from arrival on (also while queued or prefilling, when no delta comes)."""
        while not request.is_cancelled():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
        cancelled.set()
        self.engine.abort(request_id)


def _with_instance_device(parameters: dict[str, str], args: dict) -> dict[str, str]:
    """A GPU instance group pins each instance to its GPU unless the `device` parameter says otherwise."""
    parameters = dict(parameters)
    if args.get("model_instance_kind") == "GPU" and parameters.get("device", "auto") == "auto":
        parameters["device"] = f"cuda:{args.get('model_instance_device_id', '0')}"
    return parameters


def _input_arrays(request) -> dict[str, np.ndarray]:
    arrays = {}
    for name in INPUT_NAMES:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            arrays[name] = tensor.as_numpy()
    return arrays


def _response(output, text: str, token_ids: list[int], logprobs) -> pb_utils.InferenceResponse:
    """Every output carries a leading batch dimension of 1 (the model has max_batch_size > 0)."""
    tensors = [
        pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_)),
        pb_utils.Tensor("output_ids", np.array([token_ids], dtype=np.int64).reshape(1, -1)),
        pb_utils.Tensor("finish_reason", np.array([[(output.finish_reason or "").encode()]], dtype=np.object_)),
        pb_utils.Tensor("prompt_tokens", np.array([[output.prompt_tokens]], dtype=np.int32)),
        pb_utils.Tensor("completion_tokens", np.array([[output.completion_tokens]], dtype=np.int32)),
    ]
    if logprobs:
        tensors.append(pb_utils.Tensor("logprobs", np.array([logprobs], dtype=np.float32).reshape(1, -1)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _send_error(sender, message: str, code) -> None:
    error = pb_utils.TritonError(message, code)
    try:
        sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)
    except Exception as send_error:  # the client is gone, or the request was already completed
        pb_utils.Logger.log_warn(f"qwen: could not send error {message!r}: {send_error!r}")
