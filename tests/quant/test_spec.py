"""Quantization rules: parsing, presets, and errors that name the bad rule and the fix."""

import pytest

from qwen_triton.errors import InvalidRequestError
from qwen_triton.quantization.spec import QuantFormat, parse_spec


def kinds(spec):
    return {role: str(fmt) for role, fmt in parse_spec(spec).items()}


def test_per_role_rules():
    assert kinds("mlp=int4, attention=int8, lm_head=none") == {
        "attention": "int8",
        "mlp": "int4:g128",
        "lm_head": "none",
        "embed": "none",
    }


def test_a_bare_format_and_all_cover_every_linear_but_not_embeddings():
    assert (
        kinds("int8") == kinds("all=int8") == {"attention": "int8", "mlp": "int8", "lm_head": "int8", "embed": "none"}
    )


def test_later_rules_win():
    assert kinds("all=int8,lm_head=none")["lm_head"] == "none"
    assert kinds("lm_head=none,all=int8")["lm_head"] == "int8"


def test_layered_preset_is_ffn_int4_attention_int8_rest_float():
    assert kinds("layered") == {"attention": "int8", "mlp": "int4:g128", "lm_head": "none", "embed": "none"}
    assert kinds("layered,mlp=int4:g64")["mlp"] == "int4:g64"


def test_group_size_and_symmetry_options():
    formats = parse_spec("mlp=int4:g64:sym,attention=int8:g128,lm_head=fp8")
    assert formats["mlp"] == QuantFormat("int4", 64, True)
    assert formats["attention"] == QuantFormat("int8", 128, False)
    assert formats["lm_head"] == QuantFormat("fp8", None, False)


def test_empty_none_and_dict_specs():
    assert kinds("") == kinds(None) == kinds("none") == {r: "none" for r in ("attention", "mlp", "lm_head", "embed")}
    assert kinds({"mlp": "int4"})["mlp"] == "int4:g128"


@pytest.mark.parametrize(
    "spec, names",
    [
        ("mlp=int3", ["mlp=int3", "unknown format 'int3'"]),
        ("ffn=int4", ["ffn=int4", "unknown role 'ffn'"]),
        ("int8:sym", ["int8:sym", "'sym' does not apply to int8"]),
        ("int4:g0", ["int4:g0", "'g0'"]),
        ("fp8:g64", ["fp8:g64", "'g64' does not apply to fp8"]),
        ("attention=", ["attention=", "incomplete"]),
        ("embed=int8", ["embed=int8", "use embed=none"]),
    ],
)
def test_bad_rules_are_named_in_the_error(spec, names):
    with pytest.raises(InvalidRequestError) as error:
        parse_spec(spec)
    assert error.value.field == "quantization"
    for name in names:
        assert name in str(error.value)
    assert isinstance(error.value, ValueError)
