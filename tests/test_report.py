"""Summary rows: BD-rate of a method whose points are not monotonic on the test set."""

import math

import pytest

from dqsearch.report import rd_front, summary_rows


def _method(points):
    return {"results": {"bpp": [p[0] for p in points], "psnr-rgb": [p[1] for p in points]},
            "points": [{"mean": {"avg_bits": 8.0, "avg_bits_weighted": 8.0, "bpp": p[0]},
                        "size": {"fp32": 1024, "packed": 256}} for p in points]}


def test_rd_front_drops_dominated_points():
    front = rd_front(([0.3, 0.4, 0.45, 0.5], [28.0, 29.0, 28.5, 29.5]))
    assert front == ([0.3, 0.4, 0.5], [28.0, 29.0, 29.5])
    assert rd_front(([0.4, 0.4], [28.0, 29.0])) == ([0.4], [29.0])


def test_a_non_monotonic_front_is_measured_on_its_undominated_points():
    anchor = [(0.3, 28.0), (0.4, 29.0), (0.5, 29.6), (0.6, 30.0)]
    shifted = [(r * 1.1, d) for r, d in anchor]  # 10% more rate for the same quality
    bumpy = [*shifted[:2], (shifted[1][0] + 0.01, shifted[1][1] - 0.3), *shifted[2:]]
    rows = {r["method"]: r for r in summary_rows(
        {"FP32": _method(anchor), "bumpy": _method(bumpy), "clean": _method(shifted)}, "FP32")}
    assert rows["bumpy"]["bd_rate_pct"] == pytest.approx(rows["clean"]["bd_rate_pct"])
    assert rows["clean"]["bd_rate_pct"] == pytest.approx(10.0, abs=0.5)
    assert "4 of 5 points" in rows["bumpy"]["note"] and "note" not in rows["clean"]


def test_a_single_point_still_has_no_bd_rate():
    anchor = [(0.3, 28.0), (0.4, 29.0), (0.5, 29.6), (0.6, 30.0)]
    methods = {"FP32": _method(anchor), "one": _method([(0.4, 28.0)])}
    rows = {r["method"]: r for r in summary_rows(methods, "FP32")}
    assert math.isnan(rows["one"]["bd_rate_pct"]) and "1 RD point" in rows["one"]["note"]
