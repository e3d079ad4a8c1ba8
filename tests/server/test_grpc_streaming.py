"""The `qwen` model over gRPC streaming (tritonclient start_stream / async_stream_infer)."""

from concurrent.futures import ThreadPoolExecutor

from serving_helpers import GrpcStream, finish_reason_of, generate, text_of

PROMPTS = ["The capital of Italy is", "Water boils at", "My favourite book is", "The sun rises in the"]
MAX_TOKENS = 8


def stream_text(server, prompt: str) -> str:
    stream = GrpcStream(server)
    try:
        stream.send(text_input=prompt, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, stream=True)
        results, error = stream.collect()
    finally:
        stream.close()
    assert error is None, error
    # Usually one response per token; deltas that piled up while the server was busy come merged.
    assert 2 <= len(results) <= MAX_TOKENS and finish_reason_of(results[-1]) == "length"
    assert sum(result.as_numpy("output_ids").shape[-1] for result in results) == MAX_TOKENS
    assert all(result.as_numpy("output_ids").shape[-1] >= 1 for result in results)
    return "".join(text_of(result) for result in results)


def test_grpc_stream_yields_the_tokens_as_they_come(triton_server):
    expected = generate(
        triton_server, {"text_input": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True}
    ).json()["text_output"]
    assert stream_text(triton_server, PROMPTS[0]) == expected


def test_stream_false_gives_one_final_response(triton_server):
    stream = GrpcStream(triton_server)
    try:
        stream.send(text_input=PROMPTS[1], max_tokens=MAX_TOKENS, temperature=0.0, stream=False)
        results, error = stream.collect()
    finally:
        stream.close()
    assert error is None, error
    assert len(results) == 1
    assert results[0].as_numpy("output_ids").shape[-1] == int(results[0].as_numpy("completion_tokens").item())


def test_sixteen_concurrent_streams_complete_with_the_right_text(triton_server):
    expected = {
        prompt: generate(
            triton_server, {"text_input": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True}
        ).json()["text_output"]
        for prompt in PROMPTS
    }
    prompts = PROMPTS * 4
    with ThreadPoolExecutor(max_workers=16) as pool:
        texts = list(pool.map(lambda prompt: stream_text(triton_server, prompt), prompts))
    assert texts == [expected[prompt] for prompt in prompts]
