"""GuidedDecoding: what the TensorRT-LLM and vLLM spellings of a guide become, and what is refused."""

from __future__ import annotations

import json

import pytest

from qwen_triton.errors import InvalidRequestError
from qwen_triton.structured.guide import GuidedDecoding

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("guide_type", "guide", "kind"),
    [
        ("json", None, "json_object"),
        ("json_schema", json.dumps(SCHEMA), "json_schema"),
        ("regex", r"\d+", "regex"),
        ("ebnf_grammar", 'root ::= "a"', "ebnf_grammar"),
    ],
)
def test_trtllm_types_map_to_kinds(guide_type, guide, kind):
    guided = GuidedDecoding.from_trtllm(guide_type, guide)
    assert guided.kind == kind
    assert guided.field == "guided_decoding_guide"


def test_trtllm_neither_input_is_no_guide():
    assert GuidedDecoding.from_trtllm(None, None) is None
    assert GuidedDecoding.from_trtllm("", "") is None


@pytest.mark.parametrize(
    ("guide_type", "guide", "field", "says"),
    [
        ("xml", "<a/>", "guided_decoding_guide_type", "unknown type 'xml'"),
        (None, r"\d+", "guided_decoding_guide_type", "required"),
        ("regex", None, "guided_decoding_guide", "required"),
        ("json_schema", "{not json", "guided_decoding_guide", "JSON schema"),
        ("json_schema", "[1, 2]", "guided_decoding_guide", "is an object"),
    ],
)
def test_trtllm_mistakes_name_the_field(guide_type, guide, field, says):
    with pytest.raises(InvalidRequestError) as error:
        GuidedDecoding.from_trtllm(guide_type, guide)
    assert error.value.field == field
    assert says in str(error.value)


def test_vllm_keys_map_to_kinds():
    assert GuidedDecoding.from_vllm({"json": SCHEMA}) == GuidedDecoding(
        "json_schema", json.dumps(SCHEMA), "structured_outputs.json"
    )
    assert GuidedDecoding.from_vllm({"json": json.dumps(SCHEMA)}).guide == json.dumps(SCHEMA)
    assert GuidedDecoding.from_vllm({"json_object": True}).kind == "json_object"
    assert GuidedDecoding.from_vllm({"regex": "a+"}).kind == "regex"
    assert GuidedDecoding.from_vllm({"grammar": 'root ::= "a"'}).kind == "ebnf_grammar"
    choice = GuidedDecoding.from_vllm({"choice": ["yes", "no"]})
    assert (choice.kind, choice.choices) == ("choice", ["yes", "no"])
    assert GuidedDecoding.from_vllm(None) is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"json": SCHEMA, "regex": "a"}, "exactly one"),
        ({}, "exactly one"),
        ({"jsn": SCHEMA}, "unknown key(s) 'jsn'"),
        ({"choice": []}, "non-empty list"),
        ({"choice": ["a", 3]}, "non-empty list"),
        ({"json_object": "yes"}, "must be true"),
        ({"regex": 5}, "must be a string"),
        ({"json": 5}, "JSON schema"),
        ("a+", "must be an object"),
    ],
)
def test_vllm_mistakes_are_refused(value, says):
    with pytest.raises(InvalidRequestError) as error:
        GuidedDecoding.from_vllm(value)
    assert error.value.field.startswith("structured_outputs")
    assert says in str(error.value)


def test_guides_with_the_same_text_share_a_cache_key():
    first = GuidedDecoding.from_vllm({"regex": "a+"})
    second = GuidedDecoding.from_trtllm("regex", "a+")
    assert first.cache_key == second.cache_key
    assert first.cache_key != GuidedDecoding.from_vllm({"regex": "b+"}).cache_key
