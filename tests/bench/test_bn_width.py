"""benchmarks/bn_width.py: the spatial size it picks per channel count, and one tiny real run whose JSON
has a row per channel count, layout and thread count. No timing claims."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support import load_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def bn():
    return load_benchmark("bn_width.py", "bn_width_bench")


def test_the_element_count_stays_fixed_across_channel_counts(bn):
    elements = 256 * 24 * 14 * 14
    assert bn.side(24, elements, 256) == 14
    assert bn.side(96, elements, 256) == 7
    assert bn.side(16, elements, 256) == 17  # sqrt(294) = 17.1
    assert bn.side(10_000, 10, 256) == 1  # never zero


def test_a_tiny_run_writes_one_row_per_channel_layout_and_thread_count(bn, tmp_path, capsys):
    out = tmp_path / "bn.json"
    args = ["--channels", "8,24", "--batch", "4", "--elements", "4000", "--repeats", "2", "--json", str(out)]
    assert bn.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    threads = sorted({1, torch.get_num_threads()}, reverse=True)
    assert [(r["channels"], r["layout"], r["threads"]) for r in rows] == [
        (c, layout, n) for c in (8, 24) for layout in ("channels_last", "nchw") for n in threads
    ]
    assert [r["hw"] for r in rows[:: 2 * len(threads)]] == [11, 6]  # sqrt(4000/32), sqrt(4000/96)
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["copy_ms"] > 0 for r in rows)
    table = capsys.readouterr().out
    assert "| 24 | 6x6 | 32 | channels_last |" in table


def test_bad_channels_is_a_usage_error(bn):
    with pytest.raises(SystemExit) as e:
        bn.main(["--channels", "24,x"])
    assert e.value.code == 2
