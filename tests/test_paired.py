"""Paired differences, their 95% intervals, and the single-point rate overhead against a curve."""

import pytest

from dqsearch.paired import paired_difference, rate_overhead, spread


def test_paired_difference_and_interval():
    a, b = [28.0, 28.5, 27.9, 28.2, 28.4], [28.1, 28.7, 28.0, 28.4, 28.5]
    d = paired_difference(a, b)
    assert d["n"] == 5 and d["mean"] == pytest.approx(0.14)  # diffs .1 .2 .1 .2 .1
    lo, hi = d["ci95"]
    assert lo < d["mean"] < hi and lo > 0, "a consistent +0.14 dB over five pairs is significant"
    noisy = paired_difference([28.0, 28.0, 28.0], [28.5, 27.4, 28.2])
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1], "a noisy difference's interval straddles 0"
    assert paired_difference([1.0], [2.0])["ci95"] is None
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_spread():
    s = spread([28.61, 28.07])
    assert s["range"] == pytest.approx(0.54) and s["sd"] == pytest.approx(0.3818, abs=1e-3)


def test_rate_overhead_against_a_curve():
    anchor = ([0.3, 0.4, 0.5], [28.0, 29.0, 30.0])
    assert rate_overhead(anchor, 0.44, 29.0) == pytest.approx(10.0)
    assert rate_overhead(anchor, 0.4, 29.0) == pytest.approx(0.0)
    assert rate_overhead(anchor, 0.4, 31.0) is None, "no extrapolation"
