"""StopStringMatcher against the plain definition, on random text fed in random pieces; the request caps."""

from __future__ import annotations

import random

import pytest

from qwen_triton.engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS, SamplingParams
from qwen_triton.errors import InvalidRequestError
from qwen_triton.tokenizer.stop_strings import StopStringMatcher


def first_stop_start(text: str, stops: list[str]) -> int | None:
    """Where the first stop string to complete (smallest end) begins; ties: the longer one."""
    ends = [(text.find(stop) + len(stop), -len(stop)) for stop in stops if stop in text]
    if not ends:
        return None
    end, negative_length = min(ends)
    return end + negative_length


def held_back(text: str, stops: list[str]) -> int:
    return max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)


@pytest.mark.parametrize("seed", range(200))
def test_matches_the_definition_on_random_pieces(seed):
    rng = random.Random(seed)
    alphabet = "ab" if seed % 2 else "abc"  # small alphabets: many overlapping partial matches
    stops = ["".join(rng.choices(alphabet, k=rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
    text = "".join(rng.choices(alphabet, k=rng.randint(0, 60)))
    matcher, fed = StopStringMatcher(stops), ""
    while fed != text:
        piece = text[len(fed) : len(fed) + rng.randint(1, 5)]
        found = matcher.feed(piece)
        fed += piece
        expected_end = None
        for end in range(len(fed) - len(piece) + 1, len(fed) + 1):  # the first end inside this piece
            if first_stop_start(fed[:end], stops) is not None:
                expected_end = end
                break
        if expected_end is not None:
            assert found == first_stop_start(fed[:expected_end], stops), (stops, fed)
            return
        assert found is None, (stops, fed)
        assert matcher.held_back() == held_back(fed, stops), (stops, fed)


def test_no_stop_strings_hold_nothing_back():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything at all") is None
    assert matcher.held_back() == 0


def test_stop_spanning_pieces_reports_its_start_in_the_whole_text():
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("the E") is None
    assert matcher.held_back() == 1
    assert matcher.feed("N") is None
    assert matcher.held_back() == 2
    assert matcher.feed("D and more") == 4


@pytest.mark.parametrize(
    ("stop", "message"),
    [(["x" * (MAX_STOP_CHARS + 1)], "characters"), (["s"] * (MAX_STOP_STRINGS + 1), "stop strings")],
)
def test_stop_strings_are_capped_in_length_and_count(stop, message):
    with pytest.raises(InvalidRequestError, match=message) as refused:
        SamplingParams(stop=stop).validate(max_model_len=512, prompt_len=1, vocab_size=100)
    assert refused.value.field == "stop"
    SamplingParams(stop=["x" * MAX_STOP_CHARS] * MAX_STOP_STRINGS).validate(
        max_model_len=512, prompt_len=1, vocab_size=100
    )
