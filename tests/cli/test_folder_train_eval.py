"""A folder of class subfolders trains with no options (a 10% hold-out is the default), a file that
passes the header scan but fails to decode lands in skipped.jsonl, and `effv2 eval` maps classes by
name: the same names in another order are remapped, other names are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effv2.cli.main import main
from effv2.data.corpus import corrupt_png_bytes

TINY = [
    "epochs=1",
    "batch_size=8",
    "eval_batch_size=16",
    "progressive.enabled=false",
    "eval_size=24",
    "amp=none",
    "num_workers=2",
]
COLOURS = {"2": 50, "10": 200}  # a folder sorts its classes "10", "2"; a numeric CSV sorts them 2, 10


def _images(folder: Path, n: int, colour: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = np.clip(rng.normal(colour, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        out.append(folder / f"img{i}.png")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder_run")
    root = base / "images"
    for k, (name, colour) in enumerate(COLOURS.items()):
        _images(root / name, 12, colour, k)
    corrupt = root / "2" / "corrupt.png"
    corrupt.write_bytes(corrupt_png_bytes())  # a valid PNG header, broken image data
    out = base / "run"
    args = ["train", "--model", "efficientnetv2_pico", "--data", str(root), "--out", str(out), "--quiet"]
    for s in TINY:
        args += ["--set", s]
    code = main(args)
    return base, root, out, corrupt, code


def test_a_class_folder_trains_with_no_split_options(trained):
    _, _, out, _, code = trained
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"]["val_fraction"] == 0.1  # the default: a seeded, stratified 10% hold-out
    assert (cfg["data_fingerprint"]["val"], cfg["data_fingerprint"]["test"]) == (2, None)  # 1 of 12-13 per class
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and "test_top1" not in summary  # no test split: nothing is reported as test


def test_a_file_that_fails_to_decode_is_in_skipped_jsonl(trained):
    _, _, out, corrupt, code = trained
    assert code == 0
    rows = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["path"] == str(corrupt)]
    assert len(mine) == 1 and mine[0]["reason"].startswith("cannot decode: OSError")


def _eval(out: Path, data: Path, capsys, split: str = "val") -> tuple[int, str]:
    code = main(["eval", "--checkpoint", str(out), "--data", str(data), "--split", split, "--json", "--device", "cpu"])
    return code, capsys.readouterr().out


def test_eval_remaps_the_same_classes_in_another_order(trained, capsys):
    base, root, out, _, code = trained
    assert code == 0
    code, text = _eval(out, root, capsys)
    assert code == 0
    by_folder = json.loads(text.strip().splitlines()[-1])
    # the same images listed in a CSV with numeric labels: classes ["2", "10"], the folder's are ["10", "2"]
    rows = [f"{p},{name},val" for name in COLOURS for p in sorted((root / name).glob("img*.png"))]
    rows += [f"{root / name / 'img0.png'},{name},train" for name in COLOURS]
    (base / "numeric.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    code, text = _eval(out, base / "numeric.csv", capsys)
    assert code == 0
    by_csv = json.loads(text.strip().splitlines()[-1])
    assert by_csv["n"] == 24
    # remapped by name: on the same pictures as the folder's own val split, the same answers
    code, text = _eval(out, root, capsys, split="train")
    train_res = json.loads(text.strip().splitlines()[-1])
    total_correct = by_folder["top1"] * by_folder["n"] + train_res["top1"] * train_res["n"]
    assert by_csv["top1"] * by_csv["n"] == pytest.approx(total_correct, abs=1e-6)


def test_eval_refuses_other_class_names_in_one_line(trained, capsys, tmp_path):
    _, _, out, _, code = trained
    assert code == 0
    for name in ("cat", "dog"):
        _images(tmp_path / "other" / name, 3, 100, 5)
    code = main(["eval", "--checkpoint", str(out), "--data", str(tmp_path / "other"), "--split", "val"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "['cat', 'dog']" in err and "['10', '2']" in err
    # numeric labels 0, 1 are not the names 10, 2: refused as well, not silently taken as indices
    rows = [f"{tmp_path / 'other' / 'cat' / f'img{i}.png'},{i % 2},train" for i in range(3)]
    (tmp_path / "idx.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    code = main(["eval", "--checkpoint", str(out), "--data", str(tmp_path / "idx.csv"), "--split", "val"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "['0', '1']" in err and "['10', '2']" in err


def test_match_classes_maps_labels_by_name():
    import torch

    from effv2.cli.eval import match_classes
    from effv2.data.imagesets import FileImageSet, TensorImageSet
    from effv2.errors import UsageError

    files = FileImageSet(["a", "b", "c"], [0, 1, 1])  # data classes ["2", "10"] (a numeric CSV)
    assert match_classes(files, ["2", "10"], ["10", "2"], "m.csv").labels == [1, 0, 0]
    assert match_classes(files, ["2", "10"], ["2", "10"], "m.csv") is files
    tensors = TensorImageSet(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    assert match_classes(tensors, ["b", "c", "a"], ["a", "b", "c"], "x").labels.tolist() == [1, 2, 0]
    many = [f"class{i}" for i in range(30)]
    with pytest.raises(UsageError, match=r"\(30 in all\)") as err:
        match_classes(files, many, many[:29] + ["other"], "x")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
