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


def test_bad_prompts_name_the_field(engine):
    with pytest.raises(InvalidRequestError) as info:
        engine.tokenizer.encode(prompt="x " * 2000)
    assert info.value.field == "prompt" and "model length" in str(info.value)
    with pytest.raises(InvalidRequestError, match="messages"):
        engine.tokenizer.encode(messages='[{"role": "robot", "content": "hi"}]')
    with pytest.raises(InvalidRequestError, match="prompt_token_ids"):
        engine.tokenizer.encode(prompt_token_ids=[1, -5])
    with pytest.raises(InvalidRequestError, match="exactly one"):
        engine.tokenizer.encode()


# -- bad_words, min_tokens, logit_bias, top_logprobs -------------------------------------------------


def test_bad_words_are_never_produced(engine, ids):
    plain = run_all(engine, {"plain": (ids, greedy(8, ignore_eos=True))})["plain"]["tokens"]
    word = engine.tokenizer.tokenizer.decode(plain[:1])
    banned = engine.tokenizer.bad_word_token_ids([word])
    assert [plain[0]] in banned  # the greedy first token is one spelling of the word
    tokens = run_all(engine, {"b": (ids, greedy(8, ignore_eos=True, bad_words=[word]))})["b"]["tokens"]
    assert tokens[0] != plain[0]
    for sequence in banned:
        assert not any(tokens[i : i + len(sequence)] == sequence for i in range(len(tokens)))


def test_min_tokens_masks_stop_ids_until_reached(engine, ids):
    plain = run_all(engine, {"plain": (ids, greedy(12, ignore_eos=True))})["plain"]["tokens"]
    stop = plain[2]
    early = run_all(engine, {"e": (ids, greedy(12, stop_token_ids=[stop]))})["e"]
    assert len(early["tokens"]) <= 3 and early["reason"] == "stop"
    held = run_all(engine, {"h": (ids, greedy(12, stop_token_ids=[stop], min_tokens=6))})["h"]
    assert len(held["tokens"]) >= 6
    assert stop not in held["tokens"][:5]


def test_logit_bias_steers_every_token(engine, ids):
    favourite = 42
    tokens = run_all(engine, {"f": (ids, greedy(6, ignore_eos=True, logit_bias={favourite: 100.0}))})["f"]["tokens"]
    assert tokens == [favourite] * 6
    plain = run_all(engine, {"p": (ids, greedy(6, ignore_eos=True))})["p"]["tokens"]
    banned = run_all(engine, {"n": (ids, greedy(6, ignore_eos=True, logit_bias={plain[0]: -100.0}))})["n"]["tokens"]
    assert banned[0] != plain[0]


def test_top_logprobs_list_the_best_alternatives(engine, ids):
    engine.add_request("top", ids, greedy(5, ignore_eos=True, logprobs=True, top_logprobs=3))
    tokens, logprobs, tops = [], [], []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.token_ids
            logprobs += out.logprobs
            tops += out.top_logprobs
    assert len(tops) == len(tokens) == 5
    for token, logprob, best in zip(tokens, logprobs, tops):
        assert len(best) == 3
        assert best[0][0] == token  # greedy: the chosen token is the best one
        assert best[0][1] == pytest.approx(logprob, abs=1e-5)
        assert best[0][1] >= best[1][1] >= best[2][1]


@pytest.mark.parametrize(
    "params, field",
    [
        (dict(min_tokens=200, max_tokens=10), "min_tokens"),
        (dict(n=0), "n"),
        (dict(n=10**6), "n"),
        (dict(top_logprobs=21), "top_logprobs"),
        (dict(bad_words=[""]), "bad_words"),
        (dict(bad_words=["x" * 1000]), "bad_words"),
        (dict(logit_bias={10**9: 1.0}), "logit_bias"),
        (dict(logit_bias={5: 1000.0}), "logit_bias"),
    ],
)
def test_bad_new_parameters_name_the_field(engine, ids, params, field):
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request("bad-new", ids, SamplingParams(**params))
    assert info.value.field == field
    assert not engine.requests


# -- chat prompts with tools ------------------------------------------------------------------------

# A small template of our own that renders tools and tool calls the way Qwen2.5's does in spirit (the demo
# model's own, models/demo_template.py, is tested against the server in tests/server/test_dialects.py).
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }}</call>{% endfor %}{% endfor %}"
)
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture
def tool_template(engine):
    tokenizer = engine.tokenizer.tokenizer
    original, tokenizer.chat_template = tokenizer.chat_template, TOOL_TEMPLATE
    yield engine.tokenizer
    tokenizer.chat_template = original


def test_tools_and_tool_call_turns_are_rendered_by_the_template(tool_template):
    turns = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "get_weather", "arguments": {}}}]},
        {"role": "tool", "content": "20C"},
    ]
    ids = tool_template.encode(messages=turns, tools=[WEATHER_TOOL])
    text = tool_template.tokenizer.decode(ids)
    assert "<tools>get_weather;</tools>" in text and "<call>get_weather</call>" in text
    with pytest.raises(InvalidRequestError) as info:
        tool_template.encode(messages=turns, tools='[{"type": "function"}]')
    assert info.value.field == "tools"


# A template that knows neither tools nor null contents (SmolLM2's GGUF one is of this kind).
PLAIN_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content + '' }}{% endfor %}"


@pytest.fixture
def plain_template(engine):
    tokenizer = engine.tokenizer.tokenizer
    original, tokenizer.chat_template = tokenizer.chat_template, PLAIN_TEMPLATE
    yield engine.tokenizer
    tokenizer.chat_template = original


def test_a_template_without_tools_or_null_content_is_a_client_error(engine, plain_template):
    question = [{"role": "user", "content": "Weather in Paris?"}]
    with pytest.raises(InvalidRequestError) as info:
        plain_template.encode(messages=question, tools=[WEATHER_TOOL])
    assert info.value.field == "tools" and "does not render tools" in str(info.value)
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}
    with pytest.raises(InvalidRequestError) as info:
        plain_template.encode(messages=[*question, call])
    assert info.value.field == "messages" and "cannot render" in str(info.value)
    with pytest.raises(InvalidRequestError, match="nested deeper"):
        engine.tokenizer.encode(messages="[" * 200_000 + "]" * 200_000)
