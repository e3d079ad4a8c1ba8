"""Stream text from `qwen` with the tensors a client of Triton's TensorRT-LLM ensemble sends.

Shaped like the TensorRT-LLM backend's end-to-end gRPC client: a callback stream (tritonclient.grpc),
`[1, 1]`-shaped inputs (the batch dimension, then one value) with the ensemble's names and dtypes.

    python client/examples/trtllm_stream_client.py --url localhost:8001 --prompt "Once upon a time"
"""

from __future__ import annotations

import argparse
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype


def prepare_tensor(name: str, array: np.ndarray):
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def build_inputs(prompt: str, max_tokens: int) -> list:
    return [
        prepare_tensor("text_input", np.array([[prompt.encode()]], dtype=np.object_)),
        prepare_tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32)),
        prepare_tensor("bad_words", np.array([[b"darn"]], dtype=np.object_)),
        prepare_tensor("stop_words", np.array([[b"\n\n\n"]], dtype=np.object_)),
        prepare_tensor("end_id", np.array([[2]], dtype=np.int32)),
        prepare_tensor("pad_id", np.array([[2]], dtype=np.int32)),
        prepare_tensor("top_k", np.array([[1]], dtype=np.int32)),
        prepare_tensor("top_p", np.array([[1.0]], dtype=np.float32)),
        prepare_tensor("temperature", np.array([[1.0]], dtype=np.float32)),
        prepare_tensor("repetition_penalty", np.array([[1.0]], dtype=np.float32)),
        prepare_tensor("random_seed", np.array([[7]], dtype=np.uint64)),
        prepare_tensor("beam_width", np.array([[1]], dtype=np.int32)),
        prepare_tensor("return_log_probs", np.array([[True]], dtype=np.bool_)),
        prepare_tensor("exclude_input_in_output", np.array([[True]], dtype=np.bool_)),
        prepare_tensor("stream", np.array([[True]], dtype=np.bool_)),
    ]


def stream_text(url: str, model: str, prompt: str, max_tokens: int) -> tuple[str, float]:
    """Print the deltas as they arrive; return (whole text, cumulative log-probability)."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(model, build_inputs(prompt, max_tokens), request_id="1", enable_empty_final_response=True)
    text, cumulative = [], 0.0
    try:
        while True:
            result, error = results.get(timeout=120)
            if error is not None:
                raise RuntimeError(f"server error: {error}")
            if result.as_numpy("text_output") is not None:  # the last response may carry only the final flag
                delta = result.as_numpy("text_output")[0][0].decode()
                cumulative = float(result.as_numpy("cum_log_probs")[0][0])
                text.append(delta)
                print(delta, end="", flush=True)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    print()
    return "".join(text), cumulative


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--model", default="qwen")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    text, cumulative = stream_text(args.url, args.model, args.prompt, args.max_tokens)
    print(f"cum_log_probs: {cumulative:.3f}", file=sys.stderr)
    return 0 if text else 1


if __name__ == "__main__":
    sys.exit(main())
