"""Guided decoding inside the engine on the demo model: every sampling mode, preemption, prefix caching,
stop strings, aborts and length limits keep the output inside its guide and never hang."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest

from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.llm_engine import LLMEngine
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError
from qwen_triton.structured.guide import GuidedDecoding

sys.path.insert(0, str(Path(__file__).parent))
from schemas import ANSWER, PERSON, messages  # noqa: E402

ISO_DATE = r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"


def make_engine(model: Path, **overrides) -> LLMEngine:
    settings = dict(model=str(model), dtype="float32", device="cpu", max_model_len=512, max_num_seqs=16)
    return LLMEngine(EngineConfig(**{**settings, **overrides}))


@pytest.fixture(scope="module")
def engine(demo_model) -> LLMEngine:
    return make_engine(demo_model)


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, dict]:
    for request_id, (ids, params) in requests.items():
        engine.add_request(request_id, ids, params)
    results = {rid: {"tokens": [], "text": "", "reason": None} for rid in requests}
    for _ in range(10_000):  # a bound, so a hang fails the test instead of stalling the suite
        if not engine.has_unfinished():
            return results
        for out in engine.step():
            results[out.request_id]["tokens"] += out.token_ids
            results[out.request_id]["text"] += out.text
            if out.finished:
                results[out.request_id]["reason"] = out.finish_reason
    raise AssertionError("the engine did not finish")


def chat(engine: LLMEngine, question: str) -> list[int]:
    return engine.tokenizer.encode(messages=messages(question))


def schema_guide(schema: dict) -> GuidedDecoding:
    return GuidedDecoding.from_vllm({"json": schema})


SAMPLING_MODES = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=1.0, seed=1),
    "top-k-top-p": dict(temperature=1.2, top_k=20, top_p=0.9, seed=2),
    "min-p": dict(temperature=1.0, min_p=0.1, seed=3),
    "dynamic-temperature": dict(dynamic_temperature=True, min_temperature=0.2, max_temperature=1.5, seed=4),
    "penalties": dict(temperature=0.7, repetition_penalty=1.3, frequency_penalty=0.5, seed=5),
}


def test_every_sampling_mode_stays_inside_the_schema(engine):
    prompt = chat(engine, "Is the sea salty?")
    results = run(
        engine,
        {
            mode: (prompt, SamplingParams(max_tokens=40, guided_decoding=schema_guide(ANSWER), **settings))
            for mode, settings in SAMPLING_MODES.items()
        },
    )
    for mode, result in results.items():
        assert result["reason"] == "stop", (mode, result)
        jsonschema.validate(json.loads(result["text"]), ANSWER)


def test_regex_choice_and_grammar_guides(engine):
    grammar = 'root ::= "The answer is " ("yes" | "no") "."'
    results = run(
        engine,
        {
            "date": (
                chat(engine, "When did WW2 end?"),
                SamplingParams(
                    max_tokens=24, temperature=0.0, guided_decoding=GuidedDecoding.from_trtllm("regex", ISO_DATE)
                ),
            ),
            "choice": (
                chat(engine, "Is water wet?"),
                SamplingParams(
                    max_tokens=8,
                    temperature=0.8,
                    seed=0,
                    guided_decoding=GuidedDecoding.from_vllm({"choice": ["yes", "no", "not sure"]}),
                ),
            ),
            "grammar": (
                chat(engine, "Is fire cold?"),
                SamplingParams(
                    max_tokens=16, temperature=0.0, guided_decoding=GuidedDecoding.from_trtllm("ebnf_grammar", grammar)
                ),
            ),
            "object": (
                chat(engine, "Any JSON."),
                SamplingParams(
                    max_tokens=48, temperature=0.0, guided_decoding=GuidedDecoding.from_trtllm("json", None)
                ),
            ),
        },
    )
    assert re.fullmatch(ISO_DATE, results["date"]["text"]), results["date"]
    assert results["choice"]["text"] in ("yes", "no", "not sure")
    assert re.fullmatch(r"The answer is (yes|no)\.", results["grammar"]["text"])
    if results["object"]["reason"] == "stop":
        assert isinstance(json.loads(results["object"]["text"]), dict)
    assert all(r["reason"] in ("stop", "length") for r in results.values())


def test_grammar_that_cannot_finish_in_time_ends_with_length(engine):
    endless = GuidedDecoding.from_trtllm("regex", "(ab)+c")
    result = run(
        engine,
        {
            "r": (
                chat(engine, "Say ab."),
                SamplingParams(max_tokens=6, temperature=0.0, guided_decoding=endless, ignore_eos=True),
            )
        },
    )["r"]
    assert result["reason"] in ("length", "stop")
    assert len(result["tokens"]) <= 6
    assert re.fullmatch(r"(ab)*a?b?c?", result["text"])


def test_stop_strings_cut_guided_output(engine):
    params = SamplingParams(max_tokens=48, temperature=0.0, stop=['"age"'], guided_decoding=schema_guide(PERSON))
    result = run(engine, {"s": (chat(engine, "Describe a user."), params)})["s"]
    assert result["reason"] == "stop"
    assert result["text"].startswith('{"name":"') and '"age"' not in result["text"]


def test_a_bad_guide_is_refused_before_anything_runs(engine):
    bad = GuidedDecoding.from_trtllm("json_schema", '{"type": "object", "properties": {"a": {"type": "nope"}}}')
    with pytest.raises(InvalidRequestError) as error:
        engine.add_request("bad", [1, 2, 3], SamplingParams(max_tokens=4, guided_decoding=bad))
    assert error.value.field == "guided_decoding_guide"
    assert "nope" in str(error.value)
    assert "bad" not in engine.requests and not engine.has_unfinished()


def test_abort_frees_the_matcher_and_the_blocks(engine):
    free_before = engine.block_manager.num_free_blocks
    engine.add_request(
        "a", chat(engine, "Describe a user."), SamplingParams(max_tokens=64, guided_decoding=schema_guide(PERSON))
    )
    seq = engine.requests["a"].seq
    engine.step()
    engine.step()
    assert seq.matcher is not None and seq.matcher.accepted == seq.output_token_ids
    engine.abort("a")
    while engine.has_unfinished():
        engine.step()
    assert seq.matcher is None
    assert engine.block_manager.num_free_blocks == free_before


def test_preemption_and_prefix_caching_keep_the_guided_tokens(demo_model, engine):
    """A pool too small for all three: sequences are preempted and recomputed from their tokens (their
    prompts' blocks found in the prefix cache); each must produce what it produces with room to spare."""
    questions = ["Describe a user.", "Describe an admin.", "Describe a user."]
    requests = {
        f"q{i}": (chat(engine, q), SamplingParams(max_tokens=40, temperature=0.0, guided_decoding=schema_guide(PERSON)))
        for i, q in enumerate(questions)
    }
    roomy = run(engine, requests)
    tight = make_engine(demo_model, num_kv_blocks=12, block_size=8)
    cramped = run(tight, requests)
    assert tight.stats().num_preemptions > 0, "the pool was meant to force preemption"
    assert tight.stats().prefix_cache_hits > 0
    for request_id in requests:
        assert cramped[request_id]["tokens"] == roomy[request_id]["tokens"], request_id
        jsonschema.validate(json.loads(roomy[request_id]["text"]), PERSON)


def test_unguided_rows_are_untouched_by_guided_neighbours(engine):
    plain = {
        f"p{i}": (chat(engine, q), SamplingParams(max_tokens=16, temperature=0.0))
        for i, q in enumerate(["Hi!", "What is 2+2?"])
    }
    alone = run(engine, plain)
    guided = {
        f"g{i}": (
            chat(engine, "Is it late?"),
            SamplingParams(max_tokens=40, temperature=0.0, guided_decoding=schema_guide(ANSWER)),
        )
        for i in range(2)
    }
    mixed = run(engine, {**guided, **plain})
    for request_id in plain:
        assert mixed[request_id]["tokens"] == alone[request_id]["tokens"]
    for request_id in guided:
        jsonschema.validate(json.loads(mixed[request_id]["text"]), ANSWER)
