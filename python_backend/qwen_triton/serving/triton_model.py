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
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

from qwen_triton.engine.async_engine import AsyncLLMEngine, EngineUnavailableError, freeze_startup_objects
from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError
from qwen_triton.serving.choices import ChoiceSet, choice_outputs, engine_request_ids
from qwen_triton.serving.health import EngineWatchdog
from qwen_triton.serving.metrics import EngineMetrics, MetricsReporter
from qwen_triton.serving.request_parsing import (
    INPUT_NAMES,
    client_error_message,
    parse_request,
    refuse_request_parameters,
)

CANCEL_POLL_SECONDS = 0.1
WARMUP_TIMEOUT_SECONDS = 600
# finalize() waits this long for requests still in flight (scripts/serve.py drains them before it stops
# the server, so this only bounds an unload under load), then stops the engine.
FINALIZE_DRAIN_SECONDS = 10
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


class TritonLogHandler(logging.Handler):
    """Records of the qwen_triton loggers -> Triton's log (pb_utils.Logger), at their level."""

    def emit(self, record: logging.LogRecord) -> None:
        message = f"qwen: {self.format(record)}"
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


def route_package_logs_to_triton() -> None:
    package_log = logging.getLogger("qwen_triton")
    if not any(isinstance(handler, TritonLogHandler) for handler in package_log.handlers):
        package_log.addHandler(TritonLogHandler())
        package_log.setLevel(logging.INFO)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        # A serving setting, not an engine one: the checkpoint's generation_config.json fills omitted sampling.
        use_generation_config = parameters.pop("use_generation_config", "true").strip().lower() != "false"
        config = EngineConfig.from_parameters(_with_instance_device(parameters, args))
        pb_utils.Logger.log_info(f"qwen: starting the engine for {config.model} on {config.device}")
        route_package_logs_to_triton()  # the loader's progress line and memory plan belong in the server log
        self.loop = EventLoopThread()
        self.engine = AsyncLLMEngine(config)
        self.max_model_len = self.engine.max_model_len
        self.sampling_defaults = self.engine.tokenizer.sampling_defaults if use_generation_config else {}
        labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
        self.metrics = EngineMetrics(pb_utils, labels)
        self.reporter = MetricsReporter(self.metrics, self.engine.stats, read_heartbeat_age=self.engine.heartbeat_age)
        self.reporter.start()
        self._warm_up()
        self.watchdog = EngineWatchdog(self.engine, args["model_instance_name"], self._on_engine_failure)
        self.watchdog.start()
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

    def _on_engine_failure(self, reason: str) -> None:
        """The engine cannot serve: fail everyone in flight now and stop reporting its frozen load."""
        self.reporter.engine_failed()
        failed = self.engine.fail_in_flight(EngineUnavailableError(f"the engine failed ({reason})", 5.0))
        pb_utils.Logger.log_error(f"qwen: engine failed ({reason}); {failed} requests in flight got an error")

    def finalize(self):
        deadline = time.monotonic() + FINALIZE_DRAIN_SECONDS
        while self.engine.num_in_flight() and time.monotonic() < deadline and not self.engine.failure():
            time.sleep(0.1)
        self.watchdog.stop()
        self.reporter.stop()
        self.engine.shutdown()
        self.loop.stop()
        self.metrics.close()
        gc.unfreeze()

    # ------------------------------------------------------------------ one request

    async def _serve(self, request) -> None:
        sender = request.get_response_sender()
        request_id = f"{request.request_id() or 'req'}-{uuid.uuid4().hex[:12]}"
        engine_ids = [request_id]
        parsed = None
        try:
            refuse_request_parameters(json.loads(request.parameters() or "{}"))
            parsed = parse_request(_input_arrays(request), self.max_model_len, self.sampling_defaults)
            engine_ids = engine_request_ids(request_id, parsed.params.n)
            prompt_ids = self.engine.tokenizer.encode(**parsed.prompt, tools=parsed.tools)
            if _needs_choice_set(parsed):
                # n is checked here, on the request: each choice reaches the engine as a request of n=1.
                self.engine.engine.validate(prompt_ids, parsed.params)
                await self._generate_choices(request, sender, engine_ids, parsed, prompt_ids)
            else:
                await self._generate(request, sender, request_id, parsed, prompt_ids)
        except InvalidRequestError as error:
            sent_as = parsed.sent_as if parsed is not None else None
            _send_error(sender, client_error_message(error, sent_as), pb_utils.TritonError.INVALID_ARG)
        except EngineUnavailableError as error:  # full, draining or failed: HTTP 503 / gRPC UNAVAILABLE
            _send_error(sender, str(error), pb_utils.TritonError.UNAVAILABLE)
        except Exception as error:  # the server must keep serving others: report, never raise to Triton
            pb_utils.Logger.log_error(f"qwen: request {request_id} failed: {error!r}")
            for engine_id in engine_ids:
                self.engine.abort(engine_id)
            _send_error(sender, f"internal error: {error}", pb_utils.TritonError.INTERNAL)

    async def _generate_choices(self, request, sender, engine_ids: list[str], parsed, prompt_ids: list[int]) -> None:
        """n choices of one prompt (serving/choices.py), the prompt text in front when the client asks."""
        prefix = ""
        if not parsed.exclude_input_in_output and not parsed.stream:
            prefix = parsed.prompt.get("prompt") or self.engine.tokenizer.tokenizer.decode(prompt_ids)
        tokenizer = self.engine.tokenizer.tokenizer
        choices = ChoiceSet(len(engine_ids), parsed.params, decode_token=lambda token: tokenizer.decode([token]))
        cancelled = asyncio.Event()
        watcher = asyncio.ensure_future(self._abort_when_cancelled(request, engine_ids, cancelled))
        timing = _TokenTiming(self.metrics)
        try:
            outputs = choice_outputs(
                self.engine, engine_ids, prompt_ids, parsed.params, timeout=_timeout_seconds(request)
            )
            async for index, output in outputs:
                timing.observe(output)
                if cancelled.is_set():
                    _send_error(sender, "request cancelled by the client", pb_utils.TritonError.CANCELLED)
                    return
                choices.add(index, output)
                if parsed.stream:
                    if output.token_ids or output.text or output.finished:
                        tensors = choices.delta_tensors(index, output)
                        sender.send(_tensor_response(tensors), flags=FINAL if choices.all_finished else 0)
                elif choices.all_finished:
                    sender.send(_tensor_response(choices.final_tensors(prefix)), flags=FINAL)
        finally:
            watcher.cancel()

    async def _generate(self, request, sender, request_id: str, parsed, prompt_ids: list[int]) -> None:
        arrival = last = time.monotonic()
        first_token_seen = False
        completion = Completion()
        cancelled = asyncio.Event()
        watcher = asyncio.ensure_future(self._abort_when_cancelled(request, [request_id], cancelled))
        try:
            generation = self.engine.generate(
                request_id, params=parsed.params, prompt_token_ids=prompt_ids, timeout=_timeout_seconds(request)
            )
            async for output in generation:
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

    async def _abort_when_cancelled(self, request, engine_ids: list[str], cancelled: asyncio.Event) -> None:
        """Polls Triton for a cancel, from arrival on (also while queued or prefilling, when no delta comes)."""
        while not request.is_cancelled():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
        cancelled.set()
        for engine_id in engine_ids:
            self.engine.abort(engine_id)


class _TokenTiming:
    """TTFT and inter-token metrics of one request, whichever of its choices produced the tokens."""

    def __init__(self, metrics: EngineMetrics):
        self.metrics = metrics
        self.arrival = self.last = time.monotonic()
        self.first_token_seen = False

    def observe(self, output) -> None:
        if not output.token_ids:
            return
        now = time.monotonic()
        if self.first_token_seen:
            self.metrics.observe_inter_token(now - self.last, len(output.token_ids))
        else:
            self.metrics.observe_first_token(now - self.arrival)
            self.first_token_seen = True
        self.last = now


def _needs_choice_set(parsed) -> bool:
    """Several choices, the prompt echoed, or log-probabilities (cumulative, top-k) take the general path;
    the common request keeps the lean one."""
    params = parsed.params
    return params.n > 1 or not parsed.exclude_input_in_output or params.logprobs or params.top_logprobs > 0


def _timeout_seconds(request) -> float | None:
    """The request's own deadline (input `timeout`, seconds from arrival), or None."""
    tensor = pb_utils.get_input_tensor_by_name(request, "timeout")
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InvalidRequestError("timeout", f"expected one value (seconds), got {values.size}")
    return float(values[0])


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


def _tensor_response(tensors: dict[str, np.ndarray]) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in tensors.items()])


def _send_error(sender, message: str, code) -> None:
    error = pb_utils.TritonError(message, code)
    try:
        sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)
    except Exception as send_error:  # the client is gone, or the request was already completed
        pb_utils.Logger.log_warn(f"qwen: could not send error {message!r}: {send_error!r}")
