"""Small clients the server tests share: plain HTTP (generate, SSE) and tritonclient gRPC streaming."""

from __future__ import annotations

import json
import queue

import numpy as np
import requests
import tritonclient.grpc as grpcclient

CAPITAL_QUESTION = json.dumps([{"role": "user", "content": "What is the capital of France?"}])
TIMEOUT_S = 120
# numpy dtype for each `qwen` input a test may send over gRPC
INPUT_DTYPES = {
    "max_tokens": np.int32,
    "top_k": np.int32,
    "seed": np.int64,
    "stream": np.bool_,
    "ignore_eos": np.bool_,
    "temperature": np.float32,
    "input_ids": np.int64,
}


def generate(server, body: dict, model: str = "qwen") -> requests.Response:
    return requests.post(f"{server.http_url}/v2/models/{model}/generate", json=body, timeout=TIMEOUT_S)


def generate_stream(server, body: dict, model: str = "qwen") -> list[dict]:
    """The JSON events of one generate_stream call (server-sent events)."""
    reply = requests.post(
        f"{server.http_url}/v2/models/{model}/generate_stream", json=body, stream=True, timeout=TIMEOUT_S
    )
    reply.raise_for_status()
    return [json.loads(line[len(b"data: ") :]) for line in reply.iter_lines() if line.startswith(b"data: ")]


def grpc_inputs(**values) -> list:
    """tritonclient inputs with the batch dimension of 1 the `qwen` model expects."""
    inputs = []
    for name, value in values.items():
        if isinstance(value, (str, bytes)):
            array = np.array([[value.encode() if isinstance(value, str) else value]], dtype=np.object_)
        else:
            array = np.array([np.atleast_1d(value)], dtype=INPUT_DTYPES.get(name))
        tensor = grpcclient.InferInput(
            name,
            list(array.shape),
            "BYTES" if array.dtype == np.object_ else grpcclient.np_to_triton_dtype(array.dtype),
        )
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


class GrpcStream:
    """One bidirectional gRPC stream; responses (result, error) queue up as they arrive."""

    def __init__(self, server):
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, request_id: str = "", model: str = "qwen", **values) -> None:
        # The empty final response marks the end of each request, whatever its number of deltas.
        self.client.async_stream_infer(
            model, grpc_inputs(**values), request_id=request_id, enable_empty_final_response=True
        )

    def next(self, timeout: float = TIMEOUT_S):
        return self.responses.get(timeout=timeout)

    def collect(self) -> tuple[list, object]:
        """Results of one request until its final flag; (results, error) with error None on success."""
        results = []
        while True:
            result, error = self.next()
            if error is not None:
                return results, error
            if result.as_numpy("text_output") is not None:
                results.append(result)
            if is_final(result):
                return results, None

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def is_final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def text_of(result) -> str:
    return result.as_numpy("text_output").reshape(-1)[0].decode()


def finish_reason_of(result) -> str:
    return result.as_numpy("finish_reason").reshape(-1)[0].decode()
