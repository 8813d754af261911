"""Validation is never the test split: every source without a val split of its own gets a seeded,
stratified hold-out of its training split by default, and val_fraction=0 is refused there."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_sources import _jpeg, isolated, write_fake_cifar, write_fake_fmnist  # noqa: F401 - fixture

from effv2.config.schema import Recipe
from effv2.data import load_source, named
from effv2.errors import UsageError


def test_recipe_default_val_fraction_is_a_ten_percent_holdout():
    assert Recipe().val_fraction == 0.1


def _write_fake_cifar100(root, n: int = 20) -> None:
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.default_rng(2)
    for name, count in (("train", n), ("test", n // 2)):
        entry = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "fine_labels": [i % 4 for i in range(count)],
        }
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump(entry, fh)
    with open(os.path.join(folder, "meta"), "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)


def _write_fake_flowers(root) -> None:
    sio = pytest.importorskip("scipy.io")
    base = os.path.join(root, "flowers-102")
    for i in range(1, 21):
        _jpeg(os.path.join(base, "jpg", f"image_{i:05d}.jpg"), i)
    sio.savemat(os.path.join(base, "imagelabels.mat"), {"labels": np.array([1, 2] * 10)})
    sio.savemat(
        os.path.join(base, "setid.mat"),
        {"trnid": np.arange(1, 9), "valid": np.arange(9, 13), "tstid": np.arange(13, 21)},
    )


def _write_fake_cars(root) -> None:
    sio = pytest.importorskip("scipy.io")
    base = os.path.join(root, "stanford_cars")
    os.makedirs(os.path.join(base, "devkit"))
    sio.savemat(os.path.join(base, "devkit", "cars_meta.mat"), {"class_names": np.array(["a", "b"], dtype=object)})

    def annos(fnames, classes):
        rec = np.zeros(len(fnames), dtype=[("fname", object), ("class", object)])
        rec["fname"], rec["class"] = fnames, classes
        return {"annotations": rec}

    for i in range(10):
        _jpeg(os.path.join(base, "cars_train", f"{i:05d}.jpg"), 10 * i)
        _jpeg(os.path.join(base, "cars_test", f"{i:05d}.jpg"), 10 * i + 5)
    names = [f"{i:05d}.jpg" for i in range(10)]
    sio.savemat(os.path.join(base, "devkit", "cars_train_annos.mat"), annos(names, [1, 2] * 5))
    sio.savemat(os.path.join(base, "cars_test_annos_withlabels.mat"), annos(names, [1, 2] * 5))


WRITERS = {
    "fashion-mnist": lambda root: write_fake_fmnist(os.path.join(root, "fashion-mnist"), 5),
    "cifar10": write_fake_cifar,
    "cifar100": _write_fake_cifar100,
    "flowers102": _write_fake_flowers,
    "stanford-cars": _write_fake_cars,
}


def _items(part) -> list:
    if hasattr(part, "paths"):
        return list(part.paths)
    return [bytes(img.numpy().tobytes()) for img in part.images]


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_named_dataset_holds_val_out_of_train_never_test(isolated, tmp_path, name):  # noqa: F811
    WRITERS[name](str(tmp_path))
    b = load_source(name, data_dir=str(tmp_path))  # the defaults
    assert b.val is not b.test and len(b.val) > 0
    summary = b.summary()
    assert "stratified 0.1 hold-out" in summary["splits"] and "split_seed 0" in summary["splits"]
    raw = named.load_named(name, data_dir=str(tmp_path), download=False)
    assert summary["train"] + summary["val"] == len(raw.train) and summary["test"] == len(raw.test)
    if hasattr(b.val, "paths"):  # val files come from the training split, none from test
        assert set(b.val.paths).isdisjoint(b.test.paths) and set(b.val.paths).isdisjoint(b.train.paths)
    # seeded and stratified: the same seed gives the same split, every class is in val
    again = load_source(name, data_dir=str(tmp_path))
    assert _items(again.val) == _items(b.val)
    assert set(torch.as_tensor(b.val.label_list()).tolist()) == set(torch.as_tensor(b.train.label_list()).tolist())
    if name == "flowers102":  # its official val list is a val split of its own
        assert "official val" in load_source(name, data_dir=str(tmp_path), val_fraction=0).splits
    else:
        with pytest.raises(UsageError, match=rf"^val_fraction=0 means no validation hold-out, but {name}: ") as err:
            load_source(name, data_dir=str(tmp_path), val_fraction=0)
        assert "\n" not in str(err.value)


def _folder(root, counts: dict[str, int]) -> None:
    for cls, n in counts.items():
        os.makedirs(root / cls, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (12, 12), (10 * i, 0, 0)).save(root / cls / f"{i}.png")


def test_val_fraction_zero_is_allowed_only_with_an_own_val_split(tmp_path):
    flat = tmp_path / "flat"
    _folder(flat, {"a": 10, "b": 10})
    b = load_source(str(flat))  # no options: a 10% hold-out
    assert (len(b.train), len(b.val), b.test) == (18, 2, None)
    with pytest.raises(UsageError, match="val_fraction=0 .* --set val_fraction=0.1"):
        load_source(str(flat), val_fraction=0)
    split = tmp_path / "split"
    _folder(split / "train", {"a": 4, "b": 4})
    _folder(split / "val", {"a": 2, "b": 2})
    _folder(split / "test", {"a": 2, "b": 2})
    own = load_source(str(split), val_fraction=0)  # its own val/ folder: fine, no hold-out
    assert (len(own.train), len(own.val), len(own.test)) == (8, 4, 4) and own.val is not own.test
    (tmp_path / "m.csv").write_text("path,label,split\n" + "".join(f"flat/a/{i}.png,a,train\n" for i in range(5)))
    with pytest.raises(UsageError, match="no rows with split=val"):
        load_source(str(tmp_path / "m.csv"), val_fraction=0)
