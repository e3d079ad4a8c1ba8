"""Percentile math, against numpy's linear interpolation."""

import math
import random

import numpy as np
import pytest

from qwen_client.stats import percentile, summarize


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, 1000])
@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_matches_numpy(size, q):
    rng = random.Random(size * 1000 + q)
    samples = [rng.expovariate(1.0) for _ in range(size)]
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), rel=1e-12)


def test_known_values():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 0], 90) == 9.0
    assert percentile([5], 99) == 5


def test_empty_is_nan_not_zero():
    assert math.isnan(percentile([], 50))
    summary = summarize([])
    assert summary.count == 0 and math.isnan(summary.p99) and math.isnan(summary.mean)


def test_q_out_of_range():
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0], 101)


def test_summary():
    summary = summarize(range(1, 101))
    assert summary.count == 100
    assert summary.mean == 50.5
    assert summary.p50 == pytest.approx(50.5)
    assert summary.p90 == pytest.approx(90.1)
    assert summary.p99 == pytest.approx(99.01)
