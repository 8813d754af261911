"""Image folders, CSV manifests and the bad-image corpus: every file is loaded correctly or skipped with a reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from effv2.data import FileImageSet, load_source
from effv2.data import decode as dec
from effv2.data.corpus import GRAY16_EXPECTED, RGB16_EXPECTED, write_corpus
from effv2.data.decode import BadImage, check_image_file, decode_rgb, to_rgb_array
from effv2.errors import UsageError


def img(path, value: int = 100, size=(8, 6), mode: str = "RGB") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)
    return str(path)


def tree(root, counts: dict[str, int]) -> None:
    """ROOT/CLASS/iN.png with counts[CLASS] images each (0 = an empty class folder)."""
    for cls, n in counts.items():
        os.makedirs(root / cls, exist_ok=True)
        for i in range(n):
            img(root / cls / f"i{i:02d}.png", value=i)


# ------------------------------------------------------------------ folder layouts
def test_train_val_folders_and_empty_class_keeps_indices(tmp_path):
    tree(tmp_path / "train", {"cat": 3, "dog": 0, "emu": 2})
    tree(tmp_path / "val", {"cat": 1, "emu": 1, "fox": 1})
    b = load_source(str(tmp_path))
    assert b.classes == ["cat", "dog", "emu", "fox"]  # union, sorted, the empty 'dog' kept
    assert sorted(b.train.labels) == [0, 0, 0, 2, 2] and sorted(b.val.labels) == [0, 2, 3]
    assert b.test is None and b.in_chans == 3 and b.native_size is None
    assert {"path": str(tmp_path / "train" / "dog"), "reason": "empty class folder"} in b.skipped
    assert b.source == str(tmp_path) and b.splits == "val: the val/ folder"


def test_train_test_folders_val_is_a_holdout_never_test(tmp_path):
    tree(tmp_path / "train", {"a": 10, "b": 10})
    tree(tmp_path / "test", {"a": 2, "b": 2})
    held = load_source(str(tmp_path), val_fraction=0.2)
    assert (len(held.train), len(held.val), len(held.test)) == (16, 4, 4)
    assert set(held.train.paths).isdisjoint(held.val.paths)
    assert load_source(str(tmp_path)).val is not load_source(str(tmp_path)).test  # the default: a 0.1 hold-out
    with pytest.raises(UsageError, match=r"^val_fraction=0 means no validation hold-out, but .*no val/ folder"):
        load_source(str(tmp_path), val_fraction=0)  # the test split is never used as val


def test_flat_folder_seeded_stratified_split(tmp_path):
    tree(tmp_path, {"a": 10, "b": 20, "c": 1})
    s1 = load_source(str(tmp_path), val_fraction=0.2, split_seed=3)
    s2 = load_source(str(tmp_path), val_fraction=0.2, split_seed=3)
    s3 = load_source(str(tmp_path), val_fraction=0.2, split_seed=4)
    assert s1.val.paths == s2.val.paths and s1.train.paths == s2.train.paths  # reproducible
    assert s1.val.paths != s3.val.paths  # and seed-dependent
    assert np.bincount(s1.val.labels, minlength=3).tolist() == [2, 4, 0]  # a single-image class stays in train
    assert len(s1.train) + len(s1.val) == 31 and set(s1.train.paths).isdisjoint(s1.val.paths)
    assert s1.test is None
    with pytest.raises(UsageError, match="val_fraction=0 means no validation hold-out"):
        load_source(str(tmp_path), val_fraction=0)


def test_loose_files_and_grayscale(tmp_path):
    tree(tmp_path, {"a": 3, "b": 3})
    img(tmp_path / "a" / "gray.png", 50, mode="L")
    img(tmp_path / "stray.png")
    b = load_source(str(tmp_path), val_fraction=0.3)
    assert {"path": str(tmp_path / "stray.png"), "reason": "not inside a class folder"} in b.skipped
    gray = decode_rgb(str(tmp_path / "a" / "gray.png"))
    assert gray.shape == (3, 6, 8) and gray.unique().tolist() == [50]


def test_no_class_folders_and_all_bad(tmp_path):
    with pytest.raises(UsageError, match="no class subfolders"):
        load_source(str(tmp_path))
    for cls in ("a", "b"):
        os.makedirs(tmp_path / cls)
        (tmp_path / cls / "x.jpg").write_bytes(b"")
        (tmp_path / cls / "y.jpg").write_text("not an image")
    with pytest.raises(
        UsageError, match=rf"^no readable images in {tmp_path}: 4 files skipped \(first: .*x.jpg: empty file"
    ):
        load_source(str(tmp_path))


# ------------------------------------------------------------------ CSV manifests
def test_csv_manifest_with_bad_rows(tmp_path):
    for i in range(4):
        img(tmp_path / "pics" / f"{i}.png", 10 * i)
    absolute = img(tmp_path / "elsewhere" / "abs.png")
    rows = [
        "path,label,split",
        "pics/0.png,10,train",
        "pics/1.png,2,train",
        f"{absolute},2,train",
        "pics/2.png,10,val",
        "pics/missing.png,2,train",
        "pics/3.png,,train",
        "pics/3.png,2,holdout",
        ",2,train",
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    b = load_source(str(tmp_path / "m.csv"))
    assert b.classes == ["2", "10"]  # integer labels sort numerically
    assert b.train.paths == [str(tmp_path / "pics" / "0.png"), str(tmp_path / "pics" / "1.png"), absolute]
    assert b.train.labels == [1, 0, 0] and b.val.labels == [1] and b.test is None
    reasons = {(os.path.basename(s["path"]), s["reason"]) for s in b.skipped}
    assert reasons == {
        ("missing.png", "file not found"),
        ("3.png", "row 7: empty label"),
        ("3.png", "row 8: split must be train, val or test, got 'holdout'"),
        ("m.csv:9", "row has an empty path"),
    }


def test_csv_without_split_column_and_bad_header(tmp_path):
    for i in range(6):
        img(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(6)))
    b = load_source(str(tmp_path / "m.csv"), val_fraction=0.3)
    assert b.classes == ["a", "b"] and (len(b.train), len(b.val)) == (4, 2)
    (tmp_path / "bad.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(UsageError, match="missing path, label"):
        load_source(str(tmp_path / "bad.csv"))


# ------------------------------------------------------------------ the bad-image corpus
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(str(root / "things"))


def test_corpus_scan_then_decode(corpus):
    root, expect = corpus
    b = load_source(str(root), val_fraction=0.5)  # one class folder "things"
    skipped = {os.path.basename(s["path"]): s["reason"] for s in b.skipped}
    assert set(skipped) == {n for n, e in expect.items() if e == "scan"}
    assert skipped["zero_bytes.jpg"] == "empty file (0 bytes)"
    assert skipped["notes.txt"] == "unknown extension '.txt'"
    assert skipped["bomb.png"].startswith("image too large")
    assert skipped["text_named.jpg"].startswith("cannot open as an image: UnidentifiedImageError")
    kept = {os.path.basename(p): p for p in b.train.paths + b.val.paths}
    assert set(kept) == {n for n, e in expect.items() if e != "scan"}
    for name, path in kept.items():
        if expect[name] == "ok":
            x = decode_rgb(path)
            assert x.dtype == torch.uint8 and x.shape[0] == 3
        else:
            with pytest.raises(BadImage, match="truncated|broken data stream"):
                decode_rgb(path)


def test_corpus_pixels(corpus):
    root, _ = corpus

    def px(name):
        return decode_rgb(str(root / "things" / name))

    assert px("gray16.png")[0, 0].tolist() == list(GRAY16_EXPECTED)  # v / 257, not clipped at 255
    assert px("rgb16.png")[:, 0, 0].tolist() == list(RGB16_EXPECTED)
    rgba = px("rgba.png")
    assert rgba[:, 0, 0].tolist() == [255, 255, 255] and rgba[:, 0, 15].tolist() == [255, 0, 0]  # on white
    assert px("gray_alpha.png").unique().tolist() == [255]
    assert px("palette.png")[:, 3, 3].tolist() == [0, 200, 0]
    assert px("palette_transparent.png").unique().tolist() == [255]
    cmyk = px("cmyk.jpg")[:, 8, 8].tolist()
    assert cmyk[0] > 245 and cmyk[1] < 10 and cmyk[2] < 10  # CMYK (0,255,255,0) is red
    assert px("exif_rotated.jpg").shape == (3, 40, 20)  # stored 40 wide x 20 high, EXIF says rotate 90
    assert px("bilevel.png").unique().tolist() == [255]


def test_mode_conversions_direct():
    f = Image.fromarray(np.array([[-5.0, 12.4, 300.0]], dtype=np.float32))
    assert to_rgb_array(f)[0, :, 0].tolist() == [0, 12, 255]
    i32 = Image.fromarray(np.array([[70000, 257, -1]], dtype=np.int32))
    assert to_rgb_array(i32)[0, :, 1].tolist() == [255, 1, 0]


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    path = img(tmp_path / "locked.png")
    real_open = dec.Image.open

    def deny(p, *a, **k):  # root can read anything, so simulate chmod 000
        if getattr(p, "name", p) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(p, *a, **k)

    monkeypatch.setattr(dec.Image, "open", deny)
    assert check_image_file(path).startswith("cannot open as an image: PermissionError: [Errno 13] Permission denied")
    with pytest.raises(BadImage, match="PermissionError"):
        decode_rgb(path)
    if os.geteuid() != 0:  # a real permission check where the test user is not root
        other = img(tmp_path / "real.png")
        os.chmod(other, 0)
        assert "PermissionError" in check_image_file(other)


def test_directory_with_an_image_name(tmp_path):
    os.makedirs(tmp_path / "folder.jpg")
    assert check_image_file(str(tmp_path / "folder.jpg")) == "not a regular file"
    assert check_image_file(str(tmp_path / "absent.jpg")).startswith("cannot stat: FileNotFoundError")


def test_file_image_set_validates():
    with pytest.raises(ValueError):
        FileImageSet(["a"], [0, 1])
    with pytest.raises(ValueError):
        FileImageSet(["a"], [-1])
