"""Compiling guides (cache, library errors as 400s) and the per-sequence matcher (advance, sync, mask)."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_triton.errors import InvalidRequestError
from qwen_triton.structured.compiler import GrammarCompiler
from qwen_triton.structured.guide import GuidedDecoding
from qwen_triton.structured.matcher import BitmaskFiller, GuideMatcher, apply_bitmask

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}, "tag": {"enum": ["a.b", "c|d"]}},
    "required": ["n", "tag"],
    "additionalProperties": False,
}


def matcher_for(compiler: GrammarCompiler, guided: GuidedDecoding) -> GuideMatcher:
    return GuideMatcher(compiler.compile(guided), compiler.stop_token_ids)


def allowed_tokens(matcher: GuideMatcher, vocab_size: int) -> set[int]:
    bitmask = BitmaskFiller(vocab_size).fill([matcher], pin=False)
    logits = apply_bitmask(torch.zeros(1, vocab_size), bitmask)
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


def test_a_guide_compiles_once(compiler):
    guided = GuidedDecoding.from_vllm({"json": SCHEMA})
    assert compiler.compile(guided) is compiler.compile(GuidedDecoding.from_trtllm("json_schema", guided.guide))


def test_the_cache_forgets_the_least_recently_used(demo_tokenizer):
    small = GrammarCompiler(demo_tokenizer, len(demo_tokenizer), [demo_tokenizer.eos_token_id], cache_size=2)
    first, second, third = (GuidedDecoding.from_vllm({"regex": f"{c}+"}) for c in "abc")
    compiled_first = small.compile(first)
    small.compile(second)
    small.compile(first)  # first is now the most recent; second goes next
    small.compile(third)
    assert len(small) == 2
    assert small.compile(first) is compiled_first


@pytest.mark.parametrize(
    ("guided", "reason"),
    [
        (GuidedDecoding.from_trtllm("json_schema", '{"type": "strin"}'), 'Unsupported type "strin"'),
        (GuidedDecoding.from_trtllm("json_schema", '{"$ref": "#/nowhere"}'), "nowhere"),
        (GuidedDecoding.from_trtllm("regex", "(a|b"), "parenthesis is not closed"),
        (GuidedDecoding.from_trtllm("ebnf_grammar", "root ::= undefined_rule"), 'Rule "undefined_rule" is not defined'),
    ],
)
def test_library_rejections_name_the_field_and_the_reason(compiler, guided, reason):
    with pytest.raises(InvalidRequestError) as error:
        compiler.compile(guided)
    assert error.value.field == "guided_decoding_guide"
    assert reason in str(error.value)
    assert ".cc:" not in str(error.value), "the library's C++ source location is noise to a client"


def test_matcher_follows_a_schema_to_its_stop_token(compiler, demo_tokenizer):
    matcher = matcher_for(compiler, GuidedDecoding.from_vllm({"json": SCHEMA}))
    text = json.dumps({"n": 7, "tag": "c|d"}, separators=(",", ":"))
    for token in demo_tokenizer.encode(text, add_special_tokens=False):
        assert matcher.accept(token)
    assert allowed_tokens(matcher, len(demo_tokenizer)) == {demo_tokenizer.eos_token_id}
    assert not matcher.is_terminated
    assert matcher.accept(demo_tokenizer.eos_token_id)
    assert matcher.is_terminated


def test_matcher_refuses_what_the_schema_forbids(compiler, demo_tokenizer):
    matcher = matcher_for(compiler, GuidedDecoding.from_vllm({"json": SCHEMA}))
    for token in demo_tokenizer.encode('{"n":', add_special_tokens=False):
        assert matcher.accept(token)
    digit_zero = demo_tokenizer.convert_tokens_to_ids("0")
    assert digit_zero not in allowed_tokens(matcher, len(demo_tokenizer)), "minimum is 1"
    assert not matcher.accept(digit_zero)
    assert matcher.accept(demo_tokenizer.convert_tokens_to_ids("5")), "a refused token leaves the matcher where it was"


def test_choices_are_literal(compiler, demo_tokenizer):
    matcher = matcher_for(compiler, GuidedDecoding.from_vllm({"choice": ["a.b", "yes"]}))
    assert not matcher.sync(demo_tokenizer.encode("axb", add_special_tokens=False)), "'.' is not a wildcard"
    assert matcher.sync(demo_tokenizer.encode("a.b", add_special_tokens=False))


def test_sync_rolls_back_and_replays(compiler, demo_tokenizer):
    """A preempted or rewritten sequence: the matcher ends up where a fresh one fed the tokens would be."""
    guided = GuidedDecoding.from_trtllm("regex", r"\d{4}-\d{2}-\d{2}")
    tokens = demo_tokenizer.encode("2024-01-31", add_special_tokens=False)
    other = demo_tokenizer.encode("1999-12-", add_special_tokens=False)
    matcher = matcher_for(compiler, guided)
    assert matcher.sync(tokens)
    assert matcher.sync(other)
    fresh = matcher_for(compiler, guided)
    assert fresh.sync(other)
    vocab = len(demo_tokenizer)
    assert matcher.accepted == other
    assert allowed_tokens(matcher, vocab) == allowed_tokens(fresh, vocab)


def test_bitmask_touches_only_guided_rows(compiler, demo_tokenizer):
    vocab = len(demo_tokenizer)
    matcher = matcher_for(compiler, GuidedDecoding.from_vllm({"choice": ["yes", "no"]}))
    logits = torch.randn(3, vocab)
    bitmask = BitmaskFiller(vocab).fill([None, matcher, None], pin=False)
    masked = apply_bitmask(logits, bitmask)
    assert torch.equal(masked[[0, 2]], logits[[0, 2]])
    assert torch.isfinite(logits).all(), "the caller's logits are left as they were"
    allowed = torch.isfinite(masked[1]).nonzero().flatten().tolist()
    assert 0 < len(allowed) < 10
    pieces = {demo_tokenizer.decode([t]) for t in allowed}
    assert all("yes".startswith(piece) or "no".startswith(piece) for piece in pieces), pieces


def test_no_guided_row_no_bitmask(demo_tokenizer):
    assert BitmaskFiller(len(demo_tokenizer)).fill([None, None], pin=False) is None
