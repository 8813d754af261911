"""A messy folder of images someone else made trains to completion; every bad file is reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effv2.cli.main import main
from effv2.data.corpus import write_corpus

FAST = [
    "epochs=2",
    "batch_size=8",
    "eval_batch_size=16",
    "progressive.n_stages=2",
    "progressive.min_size=16",
    "progressive.max_size=24",
    "eval_size=24",
    "amp=none",
    "progressive.randaug_max=5",
]


def _good_images(folder: Path, n: int, colour: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.clip(rng.normal(colour, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.jpg")


@pytest.fixture
def messy_folder(tmp_path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "images"
    _good_images(root / "dark", 24, 60, 0)
    _good_images(root / "light", 24, 190, 1)
    expect = write_corpus(str(root / "odd"))  # the awkward-file corpus is a class of its own
    (root / "empty").mkdir()  # an empty class folder keeps its index
    if os.geteuid() != 0:  # root reads anything; only test permissions as a normal user
        locked = root / "light" / "locked.jpg"
        Image.new("RGB", (8, 8)).save(locked)
        locked.chmod(0)
    return root, expect


def _run(root: Path, out: Path, extra: list[str] = ()) -> int:
    args = ["train", "--model", "efficientnetv2_pico", "--data", str(root), "--out", str(out), "--quiet"]
    for s in [*FAST, *extra]:
        args += ["--set", s]
    return main(args)


def test_messy_folder_trains_and_reports_every_bad_file(messy_folder, tmp_path):
    root, expect = messy_folder
    out = tmp_path / "run"
    assert _run(root, out, ["val_fraction=0.25"]) == 0
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    paths = {Path(r["path"]).name: r["reason"] for r in skipped}
    bad = {name for name, outcome in expect.items() if outcome != "ok"}
    assert bad <= set(paths), bad - set(paths)  # every bad file is named ...
    assert all(paths[name] for name in bad)  # ... with a reason
    ok = {name for name, outcome in expect.items() if outcome == "ok"}
    assert not ok & set(paths)  # and no good file is
    assert "empty" in {Path(r["path"]).name for r in skipped}  # the empty class folder is reported
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_files"] >= len(bad)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "efficientnetv2_pico"
    # class indices do not shift because a folder is empty: 4 classes, sorted
    from effv2.training.inference import load_for_inference

    assert load_for_inference(out).classes == ["dark", "empty", "light", "odd"]


def test_a_folder_of_only_bad_files_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "bad"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.jpg").write_bytes(b"")
        (root / cls / "y.jpg").write_text("not an image")
    assert _run(root, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no readable images" in err[0]
