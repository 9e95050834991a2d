"""Every latency table committed under latency_models/ loads, validates and predicts."""

import math
from pathlib import Path

import pytest

from dqsearch.latency import LatencyTable

TABLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "latency_models").rglob("*.json")
                if ".validation" not in p.name)  # validation reports sit beside their tables


def test_tables_are_committed():
    assert len(TABLES) >= 6


@pytest.mark.parametrize("path", TABLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_table_loads_and_predicts(path):
    table = LatencyTable.load(path)
    names = table.layer_names
    assert names and table.fixed is not None
    for bits in (32, 8):
        ms = table.predict({n: bits for n in names})
        assert math.isfinite(ms) and ms > 0, (bits, ms)
