"""What the vLLM dialect's BLS hop costs: time to first token over gRPC streaming, `qwen` (direct) against
`qwen_vllm` (translated and forwarded to `qwen` by decoupled BLS), same prompt, requests alternating.

    .venv/bin/python benchmarks/dialect_hop.py --url localhost:8001 --requests 20

Prints one table: TTFT median / p90 / min per path and the hop's added median. The direct path is the
peer and the bound: the hop can only add to it.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import time

import numpy as np
import tritonclient.grpc as grpcclient

PROMPT = "The capital of France is"


def tensor(name: str, array: np.ndarray):
    datatype = "BYTES" if array.dtype == np.object_ else grpcclient.np_to_triton_dtype(array.dtype)
    infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def direct_inputs(max_tokens: int) -> list:
    return [
        tensor("text_input", np.array([[PROMPT.encode()]], dtype=np.object_)),
        tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32)),
        tensor("temperature", np.array([[0.0]], dtype=np.float32)),
        tensor("stream", np.array([[True]], dtype=np.bool_)),
    ]


def vllm_inputs(max_tokens: int) -> list:
    sampling = json.dumps({"max_tokens": max_tokens, "temperature": 0.0})
    return [
        tensor("text_input", np.array([PROMPT.encode()], dtype=np.object_)),
        tensor("sampling_parameters", np.array([sampling.encode()], dtype=np.object_)),
        tensor("exclude_input_in_output", np.array([True], dtype=np.bool_)),
        tensor("stream", np.array([True], dtype=np.bool_)),
    ]


def time_to_first_token(client, results: queue.Queue, model: str, inputs: list, request_id: str) -> float:
    """Seconds from sending to the first response with text; drains the rest of the stream."""
    start = time.perf_counter()
    client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
    first = None
    while True:
        result, error = results.get(timeout=120)
        if error is not None:
            raise RuntimeError(f"{model}: {error}")
        if first is None and result.as_numpy("text_output") is not None:
            first = time.perf_counter() - start
        if result.get_response().parameters["triton_final_response"].bool_param:
            return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args()
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(args.url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    paths = {"qwen (direct)": ("qwen", direct_inputs), "qwen_vllm (BLS hop)": ("qwen_vllm", vllm_inputs)}
    ttft: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for name, (model, build) in paths.items():  # one warm-up each
            time_to_first_token(client, results, model, build(args.max_tokens), f"warm-{model}")
        for i in range(args.requests):
            for name, (model, build) in paths.items():
                ttft[name].append(time_to_first_token(client, results, model, build(args.max_tokens), f"{model}-{i}"))
    finally:
        client.stop_stream()
        client.close()
    print(f"TTFT over gRPC streaming, {args.requests} requests per path, one at a time, max_tokens {args.max_tokens}")
    print(f"{'path':<22}{'median ms':>11}{'p90 ms':>9}{'min ms':>9}")
    for name, values in ttft.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        print(f"{name:<22}{statistics.median(values) * 1e3:>11.1f}{p90 * 1e3:>9.1f}{ordered[0] * 1e3:>9.1f}")
    direct, hop = (statistics.median(values) for values in ttft.values())
    print(f"added by the hop (median): {(hop - direct) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
