"""qwen_pipeline: tokenizer -> qwen -> detokenizer as Triton models, same answers as `qwen` with text."""

from serving_helpers import CAPITAL_QUESTION, generate, generate_stream


def test_pipeline_matches_direct_text_generation(triton_server):
    request = {"messages": CAPITAL_QUESTION, "max_tokens": 24, "temperature": 0.0}
    direct = generate(triton_server, request).json()
    piped = generate(triton_server, request, model="qwen_pipeline").json()
    assert "Paris" in piped["text_output"]
    assert piped["output_ids"] == direct["output_ids"]
    assert piped["text_output"] == direct["text_output"]


def test_pipeline_streams_deltas(triton_server):
    events = generate_stream(
        triton_server,
        {"text_input": "Once upon a time", "max_tokens": 6, "stream": True, "ignore_eos": True, "temperature": 0.0},
        model="qwen_pipeline",
    )
    deltas = [event for event in events if "text_output" in event]
    # One delta per token, except that tokens which piled up while the server was busy come merged.
    assert 2 <= len(deltas) <= 6 and deltas[-1]["finish_reason"] == "length"
