"""Summary rows: every test point as it falls (no dropping of points the test set shows dominated),
and the BD overlap beside every BD-rate."""

import math

import pytest

from dqsearch.evaluate import bd_overlap
from dqsearch.report import summary_rows


def _method(points):
    return {"results": {"bpp": [p[0] for p in points], "psnr-rgb": [p[1] for p in points]},
            "points": [{"mean": {"avg_bits": 8.0, "avg_bits_weighted": 8.0, "bpp": p[0]},
                        "size": {"fp32": 1024, "packed": 256}} for p in points]}


ANCHOR = [(0.3, 28.0), (0.4, 29.0), (0.5, 29.6), (0.6, 30.0)]


def test_a_non_monotonic_curve_is_not_measured_on_a_chosen_subset():
    shifted = [(r * 1.1, d) for r, d in ANCHOR]  # 10% more rate for the same quality
    bumpy = [*shifted[:2], (shifted[1][0] + 0.01, shifted[1][1] - 0.3), *shifted[2:]]
    rows = {r["method"]: r for r in summary_rows(
        {"FP32": _method(ANCHOR), "bumpy": _method(bumpy), "clean": _method(shifted)}, "FP32")}
    assert rows["clean"]["bd_rate_pct"] == pytest.approx(10.0, abs=0.5)
    assert rows["clean"]["bd_overlap_pct"] == pytest.approx(100.0) and "note" not in rows["clean"]
    assert math.isnan(rows["bumpy"]["bd_rate_pct"]), "no point is dropped to make the curve monotonic"
    assert "not monotonic" in rows["bumpy"]["note"]


def test_low_overlap_is_reported_beside_the_bd_rate():
    high = [(r * 2.0, d + 1.5) for r, d in ANCHOR]  # covers 29.5–31.5 dB against 28–30 dB
    rows = {r["method"]: r for r in summary_rows({"FP32": _method(ANCHOR), "high": _method(high)}, "FP32")}
    assert rows["high"]["bd_overlap_pct"] == pytest.approx(100 * 0.5 / 3.5)
    assert "share only 14%" in rows["high"]["note"]
    pair = ([r for r, _ in ANCHOR], [d for _, d in ANCHOR])
    assert bd_overlap(pair, pair) == 1.0


def test_a_single_point_still_has_no_bd_rate():
    methods = {"FP32": _method(ANCHOR), "one": _method([(0.4, 28.0)])}
    rows = {r["method"]: r for r in summary_rows(methods, "FP32")}
    assert math.isnan(rows["one"]["bd_rate_pct"]) and "1 RD point" in rows["one"]["note"]
