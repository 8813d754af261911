"""A folder with no recipe of its own trains with the README's command and no options, on defaults
fitted to it (config/fitted.py), recorded in config.json as the "data-fitted" layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effv2.cli.main import main
from effv2.config import fitted

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 50, 40)}


def _small_folder(root: Path, per_class: int = 100, side: int = 20) -> Path:
    """3 classes of ``per_class`` noisy ``side`` x ``side`` px PNGs, told apart by colour."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(colour, 40, (side, side + 4, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:03d}.png")
    return root


def test_a_small_folder_trains_on_fitted_defaults(tmp_path, monkeypatch):
    # The real minimum is 1,000 steps (about a minute for pico); 176 keeps the test to seconds and
    # still raises the epochs above the dataclass's 10 (10 x 16 = 160 steps).
    monkeypatch.setattr(fitted, "MIN_STEPS", 176)
    data, out = _small_folder(tmp_path / "images"), tmp_path / "run"
    assert main(["train", "--model", "efficientnetv2_pico", "--data", str(data), "--out", str(out), "--quiet"]) == 0

    cfg = json.loads((out / "config.json").read_text())
    layer = cfg["layers"]["data-fitted"]
    assert list(cfg["layers"])[:4] == ["defaults", "model", "data-fitted", "recipe:base"]
    assert layer["facts"] == {"images": 270, "classes": 3, "median_side": 20, "sampled": 256}
    assert layer["source"] == "measured: 270 training images, 3 classes, median shorter side 20 px (of 256 sampled)"
    assert layer["set"] == {
        "batch_size": 16,  # 270 / 40 -> 6, raised to the floor 16: 16 steps an epoch
        "epochs": 11,  # ceil(176 / 16)
        "eval_size": 24,  # 20 px rounded up to a multiple of 8 (pico trains at 32)
        "progressive.max_size": 24,
        "progressive.min_size": 16,  # 3/4 of 24 -> 18, to a multiple of 8
        "progressive.randaug_max": 2.0,
        "progressive.randaug_min": 0.7,
        "randaug_impl": "torchvision",
    }
    rec = cfg["recipe"]
    assert (rec["batch_size"], rec["epochs"], rec["eval_size"], rec["randaug_impl"]) == (16, 11, 24, "torchvision")
    assert (rec["progressive"]["min_size"], rec["progressive"]["max_size"]) == (16, 24)
    assert "filled" not in cfg["layers"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["epochs"] == 11
    assert summary["images_seen"] == 11 * 16 * 16  # 176 steps of 16 images
    assert summary["best_top1"] >= 90.0  # colours: separable; chance is 33%


def test_set_and_epochs_still_win_on_a_folder(tmp_path):
    data, out = _small_folder(tmp_path / "images", per_class=20), tmp_path / "run"
    args = ["train", "--model", "efficientnetv2_pico", "--data", str(data), "--out", str(out), "--quiet"]
    assert main([*args, "--epochs", "1", "--set", "batch_size=8", "--set", "eval_size=32"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    rec, layer = cfg["recipe"], cfg["layers"]["data-fitted"]
    assert (rec["epochs"], rec["batch_size"], rec["eval_size"]) == (1, 8, 32)
    assert not {"epochs", "batch_size", "eval_size"} & set(layer["set"])
    assert layer["set"]["progressive.max_size"] == 24  # what --set left open is still fitted
