"""The `qwen_vllm` Triton model: Triton's vLLM-backend tensors, served by the one engine of `qwen`.

A thin decoupled model: each request is translated (vllm_dialect.py) and forwarded to `qwen` through a
decoupled BLS call on a thread of its own, and each `qwen` response goes back translated. No weights are
loaded here, so serving this dialect costs no memory beyond `qwen`'s.
"""

from __future__ import annotations

import gc
import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

from qwen_triton.errors import InvalidRequestError
from qwen_triton.serving.request_parsing import refuse_request_parameters
from qwen_triton.serving.vllm_dialect import INPUT_NAMES, VllmRequest, translate_request, translate_response

QWEN_OUTPUTS = [
    "text_output",
    "output_ids",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "logprobs",
    "cum_log_probs",
    "top_logprobs",
    "sequence_index",
]
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.target = parameters.get("target_model", {}).get("string_value", "qwen")

    def finalize(self):
        # BLS requests kept alive by reference cycles (a traceback's frames) must be freed while the stub's
        # shared memory still exists: the collection at interpreter exit crashes in ~InferRequest.
        gc.collect()

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), name="qwen-vllm-request", daemon=True).start()
        return None

    def _serve(self, request) -> None:
        sender = request.get_response_sender()
        try:
            refuse_request_parameters(json.loads(request.parameters() or "{}"))
            arrays = {}
            for name in INPUT_NAMES:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    arrays[name] = tensor.as_numpy()
            self._forward(request, sender, translate_request(arrays))
        except InvalidRequestError as error:
            _send_error(sender, str(error), pb_utils.TritonError.INVALID_ARG)
        except Exception as error:  # keep serving the others: report, never raise to Triton
            pb_utils.Logger.log_error(f"qwen_vllm: request failed: {error!r}")
            _send_error(sender, f"internal error: {error}", pb_utils.TritonError.INTERNAL)

    def _forward(self, request, sender, translated: VllmRequest) -> None:
        inner = pb_utils.InferenceRequest(
            model_name=self.target,
            inputs=[pb_utils.Tensor(name, array) for name, array in translated.qwen_inputs.items()],
            requested_output_names=QWEN_OUTPUTS,
        )
        responses = inner.exec(decoupled=True)
        unfinished = set(range(translated.n))
        for response in responses:
            if request.is_cancelled():
                getattr(responses, "cancel", lambda: None)()
                _send_error(sender, "request cancelled by the client", pb_utils.TritonError.CANCELLED)
                return
            if response.has_error():
                error = response.error()
                code = error.code() if hasattr(error, "code") else pb_utils.TritonError.INTERNAL
                _send_error(sender, error.message(), code)
                return
            outputs = {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}
            if not outputs:
                continue  # the flag-only end of the inner stream
            _mark_finished(outputs, unfinished)
            tensors = translate_response(outputs, translated)
            reply = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, array) for name, array in tensors.items()]
            )
            sender.send(reply, flags=0 if unfinished else FINAL)
            if not unfinished:
                return
        sender.send(flags=FINAL)


def _mark_finished(outputs: dict[str, np.ndarray], unfinished: set[int]) -> None:
    """A choice is done once its finish_reason is set (a non-streamed response finishes them all)."""
    reasons = [
        r.decode() if isinstance(r, bytes) else str(r) for r in outputs.get("finish_reason", np.array([])).reshape(-1)
    ]
    if "sequence_index" in outputs:
        if reasons and reasons[0]:
            unfinished.discard(int(outputs["sequence_index"].reshape(-1)[0]))
    elif reasons and all(reasons):
        unfinished.clear()


def _send_error(sender, message: str, code) -> None:
    try:
        sender.send(
            pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code)), flags=FINAL
        )
    except Exception as send_error:  # the client is gone, or the request was already completed
        pb_utils.Logger.log_warn(f"qwen_vllm: could not send error {message!r}: {send_error!r}")
