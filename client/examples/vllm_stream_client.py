"""Stream text from `qwen_vllm` with the tensors a client of Triton's vLLM backend sends.

Shaped like the vLLM backend's sample client: asyncio gRPC streaming (tritonclient.grpc.aio), `[1]`-shaped
inputs, the sampling settings as one JSON string. Nothing here knows about this project.

    python client/examples/vllm_stream_client.py --url localhost:8001 --prompt "Once upon a time"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import numpy as np
import tritonclient.grpc.aio as grpcclient


def build_inputs(prompt: str, sampling: dict, stream: bool) -> list:
    values = {
        "text_input": np.array([prompt.encode()], dtype=np.object_),
        "stream": np.array([stream], dtype=np.bool_),
        "sampling_parameters": np.array([json.dumps(sampling).encode()], dtype=np.object_),
        "exclude_input_in_output": np.array([True], dtype=np.bool_),
        "return_finish_reason": np.array([True], dtype=np.bool_),
        "return_num_output_tokens": np.array([True], dtype=np.bool_),
    }
    inputs = []
    for name, array in values.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == np.object_ else "BOOL")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def stream_text(url: str, model: str, prompt: str, sampling: dict) -> tuple[str, str]:
    """Print the deltas as they arrive; return (whole text, finish reason)."""
    client = grpcclient.InferenceServerClient(url)

    async def requests():
        yield {"model_name": model, "inputs": build_inputs(prompt, sampling, stream=True), "request_id": "1"}

    text, reason = [], ""
    try:
        async for result, error in client.stream_infer(inputs_iterator=requests()):
            if error is not None:
                raise RuntimeError(f"server error: {error}")
            delta = result.as_numpy("text_output")[0].decode()
            reason = result.as_numpy("finish_reason")[0].decode()
            text.append(delta)
            print(delta, end="", flush=True)
    finally:
        await client.close()
    print()
    return "".join(text), reason


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--model", default="qwen_vllm")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    sampling = {"max_tokens": args.max_tokens, "temperature": 0.0}
    text, reason = asyncio.run(stream_text(args.url, args.model, args.prompt, sampling))
    print(f"finish_reason: {reason}", file=sys.stderr)
    return 0 if text else 1


if __name__ == "__main__":
    sys.exit(main())
