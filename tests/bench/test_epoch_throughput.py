"""Smoke test of benchmarks/epoch_throughput.py: every step on 64 images, one thread, no timing claims."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support import load_benchmark  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "fashion-mnist"

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_script():
    return load_benchmark("epoch_throughput.py", "epoch_throughput")


@pytest.fixture(scope="module")
def bench():
    return _load_script()


def _copy_idx(src: Path, dst: Path, n: int) -> None:
    raw = gzip.open(src).read()
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    per_item = 1
    for d in dims[1:]:
        per_item *= d
    header = raw[:4] + n.to_bytes(4, "big") + raw[8 : 4 + 4 * nd]
    with gzip.open(dst, "wb") as fh:
        fh.write(header + raw[4 + 4 * nd : 4 + 4 * nd + n * per_item])


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    if not SHARED.is_dir():
        pytest.skip("shared Fashion-MNIST not available")
    d = tmp_path_factory.mktemp("fmnist")
    for split, n in (("train", 128), ("t10k", 32)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            _copy_idx(SHARED / name, d / name, n)
    return d


def test_timm_build_is_efficientnetv2_mini(bench):
    for in_chans in (1, 3):
        assert bench.check_parity(in_chans, batch=2) < 1e-4


def test_class_folder_names_are_safe_and_ordered(bench):
    names = bench.class_folder_names(["T-shirt/top", "Trouser", "Ankle boot"])
    assert names == ["0_T_shirt_top", "1_Trouser", "2_Ankle_boot"] and sorted(names) == names


def test_main_runs_every_side_on_64_images(bench, tiny_fmnist, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    out = bench.main(
        [
            "--data-dir",
            str(tiny_fmnist),
            "--limit",
            "64",
            "--jpeg-images",
            "64",
            "--jpeg-size",
            "28",
            "--threads",
            "1",
            "--batch-size",
            "16",
            "--work-dir",
            str(tmp_path / "work"),
        ],
        results=results,
    )
    assert torch.get_num_threads() == 1
    rows = out["rows"]
    assert [r["trainer"] for r in rows] == ["effv2", "timm loop, timm defaults", "timm loop, effv2's flags"] * 2
    fm, jp = rows[:3], rows[3:]
    assert all(r["images"] == 64 for r in fm)  # 64 images, batch 16, drop_last: 4 full batches on every side
    n_jpeg_train = out["jpeg_train"]
    assert 0 < n_jpeg_train < 64 and all(r["images"] == n_jpeg_train // 16 * 16 for r in jp)
    assert all(r["img_per_s"] > 0 and r["train_s"] > 0 for r in rows)
    assert rows[1]["flags"] == "fp32, NCHW, eager"
    assert rows[0]["effv2_vs_this"] == pytest.approx(1.0)
    text = results.read_text()
    assert text.startswith("# Benchmark results\n") and "## Epoch throughput" in text
    assert "--limit 64" in text and torch.__version__ in text and text.count("| JPEG folder") == 3
    assert len(list((tmp_path / "work" / "jpegs").rglob("*.jpg"))) == 64


def test_no_record_leaves_results_alone(bench, tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(
        bench,
        "run_benchmark",
        lambda **kw: {
            "rows": [
                {
                    "data": "d",
                    "trainer": "effv2",
                    "flags": "fp32, NCHW, eager",
                    "images": 16,
                    "train_s": 1.0,
                    "img_per_s": 16.0,
                    "effv2_vs_this": 1.0,
                }
            ],
            "parity": {1: 0.0, 3: 0.0},
            "fmnist_train": 16,
            "jpeg_train": 0,
            "jpeg_images": 0,
        },
    )
    out = bench.main(["--no-record", "--threads", "1"], results=results)
    assert not results.exists() and "| d | effv2 |" in out["markdown"]
