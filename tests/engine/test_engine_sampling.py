"""Sampling parameters, stop conditions, detokenization and input validation."""

from __future__ import annotations

import pytest
from engine_helpers import greedy, make_engine, run_all
from transformers import AutoTokenizer

from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError
from qwen_triton.tokenizer.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    return make_engine(tiny_qwen2)


@pytest.fixture(scope="module")
def ids(engine):
    return engine.tokenizer.encode(prompt="Tell me a story about a dragon")


def test_seed_reproducible_alone_and_in_a_mixed_batch(engine, ids):
    seeded = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    first = run_all(engine, {"a": (ids, seeded)})["a"]["tokens"]
    mixed = run_all(
        engine,
        {
            "noise1": (ids[:5], SamplingParams(max_tokens=30, temperature=1.3, ignore_eos=True)),
            "a": (ids, seeded),
            "greedy": (ids[2:], greedy(10)),
            "noise2": (ids, SamplingParams(max_tokens=8, temperature=0.7, min_p=0.05, ignore_eos=True)),
        },
    )
    assert mixed["a"]["tokens"] == first
    other = run_all(engine, {"b": (ids, SamplingParams(**{**seeded.__dict__, "seed": 99}))})["b"]["tokens"]
    assert other != first


def test_sampling_filters_and_penalties_run(engine, ids):
    params = {
        "topk1": SamplingParams(max_tokens=12, temperature=1.0, top_k=1, ignore_eos=True, seed=3),
        "penal": SamplingParams(
            max_tokens=12,
            temperature=0.0,
            repetition_penalty=1.3,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            ignore_eos=True,
        ),
        "dyn": SamplingParams(
            max_tokens=12,
            dynamic_temperature=True,
            min_temperature=0.1,
            max_temperature=1.5,
            ignore_eos=True,
            seed=5,
            logprobs=True,
        ),
    }
    results = run_all(engine, {rid: (ids, p) for rid, p in params.items()})
    greedy_tokens = run_all(engine, {"g": (ids, greedy(12, ignore_eos=True))})["g"]["tokens"]
    assert results["topk1"]["tokens"] == greedy_tokens  # top-k 1 is greedy whatever the temperature
    assert all(len(r["tokens"]) == 12 for r in results.values())
    assert len(set(results["penal"]["tokens"])) >= len(set(greedy_tokens))


def test_logprobs_are_returned_per_token(engine, ids):
    engine.add_request("lp", ids, SamplingParams(max_tokens=5, temperature=0.0, logprobs=True, ignore_eos=True))
    logprobs = []
    while engine.has_unfinished():
        for out in engine.step():
            logprobs += out.logprobs
    assert len(logprobs) == 5 and all(lp <= 0.0 for lp in logprobs)


def test_stop_string_cuts_exactly(engine, ids):
    free = run_all(engine, {"f": (ids, greedy(30, ignore_eos=True))})["f"]["text"]
    assert len(free) > 12
    stop = free[8:11]
    cut = run_all(engine, {"s": (ids, greedy(30, ignore_eos=True, stop=[stop]))})["s"]
    assert cut["reason"] == "stop"
    assert cut["text"] == free[: free.index(stop)]


def test_stop_token_ids_and_max_tokens(engine, ids):
    free = run_all(engine, {"f": (ids, greedy(10, ignore_eos=True))})["f"]["tokens"]
    stopped = run_all(engine, {"t": (ids, greedy(10, ignore_eos=True, stop_token_ids=[free[3]]))})["t"]
    assert stopped["tokens"] == free[: free.index(free[3]) + 1] and stopped["reason"] == "stop"
    assert run_all(engine, {"m": (ids, greedy(4, ignore_eos=True))})["m"]["reason"] == "length"


def test_chinese_text_streams_without_broken_characters(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    text = "你好，世界！今天天气很好，我们去公园散步吧。通义千问"
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(token_ids) > len(text) // 2  # multi-byte characters span several tokens here
    detok = IncrementalDetokenizer(tokenizer)
    pieces = []
    for token in token_ids:
        detok.add([token])
        pieces.append(detok.take(final=False))
    pieces.append(detok.take(final=True))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stop_string_is_held_back_until_decided(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    detok = IncrementalDetokenizer(tokenizer, stop=["END"])
    streamed = ""
    for token in tokenizer.encode("one two ENDING", add_special_tokens=False):
        detok.add([token])
        streamed += detok.take(final=False)
        assert "E" not in streamed
    assert detok.stopped and streamed + detok.take(final=True) == "one two "


@pytest.mark.parametrize(
    "params, field",
    [
        (dict(max_tokens=-1), "max_tokens"),
        (dict(max_tokens=5000), "max_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-3), "top_k"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(stop=[""]), "stop"),
        (dict(stop_token_ids=[10**9]), "stop_token_ids"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_parameters_name_the_field(engine, ids, params, field):
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request("bad", ids, SamplingParams(**params))
    assert info.value.field == field
    assert not engine.requests  # nothing half-added


def test_unknown_parameter_and_bad_prompts(engine):
    with pytest.raises(InvalidRequestError, match="unknown parameter") as info:
        SamplingParams.from_dict({"max_tokens": 4, "temprature": 0.5})
    assert info.value.field == "temprature"
    with pytest.raises(InvalidRequestError) as info:
        engine.tokenizer.encode(prompt="x " * 2000)
    assert info.value.field == "prompt" and "model length" in str(info.value)
    with pytest.raises(InvalidRequestError, match="messages"):
        engine.tokenizer.encode(messages='[{"role": "robot", "content": "hi"}]')
    with pytest.raises(InvalidRequestError, match="prompt_token_ids"):
        engine.tokenizer.encode(prompt_token_ids=[1, -5])
    with pytest.raises(InvalidRequestError, match="exactly one"):
        engine.tokenizer.encode()
