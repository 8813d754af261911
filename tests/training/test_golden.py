"""Behaviour preservation: the golden run (tests/golden/run_golden.py) gives the recorded metrics and,
on a CPU with the recorded instruction set, bit-identical final weights."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
sys.path.insert(0, str(GOLDEN_DIR))
import run_golden  # noqa: E402

pytestmark = pytest.mark.skipif(not run_golden.SHARED.is_dir(), reason="shared Fashion-MNIST not available")


def test_golden_run_is_unchanged(tmp_path):
    golden = json.loads(run_golden.GOLDEN.read_text())
    got = run_golden.run_golden(tmp_path)
    same_isa = run_golden.isa_flags() == golden["recorded_with"]["cpu_flags"]
    assert len(got["metrics"]) == len(golden["metrics"]) == 3
    for row, want in zip(got["metrics"], golden["metrics"]):
        assert row.keys() == want.keys()
        for k, v in want.items():
            if same_isa or not isinstance(v, float):
                assert row[k] == v, (row["epoch"], k)
            else:  # another kernel set rounds differently: the run must still be the same run
                assert math.isclose(row[k], v, rel_tol=0.05, abs_tol=2.0 if k.startswith("top") else 0.02), k
    if same_isa:
        assert got["sha256"] == golden["sha256"]
