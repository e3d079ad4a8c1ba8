"""The qwen model's guided_decoding_* inputs as request_parsing reads them (numpy arrays, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_triton.errors import InvalidRequestError
from qwen_triton.serving.request_parsing import parse_request


def text(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def test_guide_inputs_become_guided_decoding():
    parsed = parse_request(
        {
            "text_input": text("hi"),
            "guided_decoding_guide_type": text("regex"),
            "guided_decoding_guide": text(r"\d+"),
        },
        max_model_len=2048,
    )
    guided = parsed.params.guided_decoding
    assert (guided.kind, guided.guide, guided.field) == ("regex", r"\d+", "guided_decoding_guide")


def test_no_guide_inputs_no_guide():
    assert parse_request({"text_input": text("hi")}, max_model_len=2048).params.guided_decoding is None


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"guided_decoding_guide": text(r"\d+")}, "guided_decoding_guide_type"),
        (
            {"guided_decoding_guide_type": text("toml"), "guided_decoding_guide": text("a=1")},
            "guided_decoding_guide_type",
        ),
        ({"guided_decoding_guide_type": text("json_schema")}, "guided_decoding_guide"),
        (
            {"guided_decoding_guide_type": text("json_schema"), "guided_decoding_guide": text("{")},
            "guided_decoding_guide",
        ),
    ],
)
def test_guide_input_mistakes_name_the_field(inputs, field):
    with pytest.raises(InvalidRequestError) as error:
        parse_request({"text_input": text("hi"), **inputs}, max_model_len=2048)
    assert error.value.field == field
