"""Named data sets: the idx reader, where files are looked for, downloads, CIFAR/Flowers/Cars layouts."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from effv2.data import DataBundle, TensorImageSet, list_sources, load_source, named
from effv2.data.idx import idx_bytes, parse_idx, read_idx, write_idx
from effv2.errors import UsageError

SHARED = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-mnist")
FILES = named._FMNIST_FILES
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED), reason="shared Fashion-MNIST copy not present")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $EFFV2_DATA and one empty system folder, so only what a test puts in place is found."""
    monkeypatch.delenv(named.ENV_VAR, raising=False)
    empty = tmp_path / "system"
    empty.mkdir()
    monkeypatch.setattr(named, "SYSTEM_DIRS", [str(empty)])
    return empty


def write_fake_fmnist(folder, marker: int, *, gz: bool = True, n_train: int = 20, n_test: int = 10) -> None:
    """Tiny idx files whose every pixel is ``marker``, two train images per class."""
    os.makedirs(folder, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {
        FILES[0]: np.full((n_train, 28, 28), marker, np.uint8),
        FILES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        FILES[2]: np.full((n_test, 28, 28), marker, np.uint8),
        FILES[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(os.path.join(folder, name + ext), arr)


# ------------------------------------------------------------------ idx reader
def test_idx_round_trip_all_types():
    for dtype in (np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"):
        a = (np.arange(60).reshape(3, 4, 5) - 7).astype(dtype)
        b = parse_idx(idx_bytes(a))
        assert b.shape == (3, 4, 5) and np.array_equal(a, b)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00\x08", "bad magic"),
        (b"\x01\x00\x08\x01", "bad magic"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "cut short"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "header says 13"),
    ],
)
def test_idx_rejects_bad_bytes(data, message):
    with pytest.raises(UsageError, match=message):
        parse_idx(data, "x.idx")


def test_idx_truncated_gzip_is_usage_error(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 4), np.uint8)))[:-6])
    with pytest.raises(UsageError, match="cannot read"):
        read_idx(str(path))


@needs_shared
def test_idx_reader_equals_torchvision_on_the_same_bytes(tmp_path):
    from torchvision.datasets import FashionMNIST

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for base in FILES:  # torchvision's layout: uncompressed files beside the .gz ones
        shutil.copy(os.path.join(SHARED, base + ".gz"), raw)
        with gzip.open(raw / (base + ".gz")) as src, open(raw / base, "wb") as dst:
            shutil.copyfileobj(src, dst)
    for train, (img, lab) in ((True, FILES[:2]), (False, FILES[2:])):
        tv = FashionMNIST(str(tmp_path), train=train, download=False)
        ours_x = read_idx(os.path.join(SHARED, img + ".gz"))
        ours_y = read_idx(os.path.join(SHARED, lab + ".gz"))
        assert torch.equal(torch.from_numpy(ours_x), tv.data)
        assert torch.equal(torch.from_numpy(ours_y.astype(np.int64)), tv.targets)
        assert np.array_equal(read_idx(str(raw / img)), ours_x)  # uncompressed reads the same


# ------------------------------------------------------------------ Fashion-MNIST bundle
@needs_shared
def test_fashion_mnist_bundle_splits(isolated):
    b = load_source("fashion-mnist", data_dir=SHARED)
    assert isinstance(b, DataBundle) and isinstance(b.train, TensorImageSet)
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert b.in_chans == 1 and b.native_size == 28 and b.num_classes == 10 and b.classes[9] == "Ankle boot"
    assert b.train.images.shape[1:] == (1, 28, 28) and b.train.images.dtype == torch.uint8
    assert torch.bincount(b.val.labels).tolist() == [600] * 10  # stratified hold-out
    assert b.source == "fashion-mnist" and b.location == SHARED and b.skipped == []
    # pinned bytes of the official data: first training image's pixel sum and first labels
    first = read_idx(os.path.join(SHARED, FILES[0] + ".gz"))[0]
    assert int(first.sum()) == 76247
    assert read_idx(os.path.join(SHARED, FILES[1] + ".gz"))[:5].tolist() == [9, 0, 0, 3, 0]
    assert b.val is not b.test and "stratified 0.1 hold-out" in b.summary()["splits"]
    # val_fraction 0 would leave no validation split (the test split is never used for selection)
    with pytest.raises(UsageError, match="val_fraction=0 means no validation hold-out, but fashion-mnist"):
        load_source("fashion-mnist", data_dir=SHARED, val_fraction=0)


# ------------------------------------------------------------------ lookup order
def test_lookup_order_data_dir_then_env_then_system(isolated, tmp_path, monkeypatch):
    a, env, system = tmp_path / "a", tmp_path / "env", isolated
    write_fake_fmnist(a, 1)  # files directly in the folder
    write_fake_fmnist(env / "fashion-mnist", 2)  # the Debian-like subfolder
    write_fake_fmnist(system / "FashionMNIST" / "raw", 3, gz=False)  # torchvision's layout, uncompressed
    monkeypatch.setenv(named.ENV_VAR, str(env))

    def marker(bundle):
        return int(bundle.train.images.flatten()[0])

    assert marker(load_source("fashion-mnist", data_dir=str(a))) == 1
    assert marker(load_source("fashion-mnist")) == 2
    monkeypatch.delenv(named.ENV_VAR)
    got = load_source("fashion-mnist")
    assert marker(got) == 3 and got.location == str(system / "FashionMNIST" / "raw")
    # a data_dir without the files falls through to the next places
    assert marker(load_source("fashion-mnist", data_dir=str(tmp_path / "nothing"))) == 3


def test_missing_dataset_names_where_to_put_it(isolated, tmp_path):
    with pytest.raises(UsageError) as err:
        load_source("fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "nowhere") in msg and "\n" not in msg
    with pytest.raises(UsageError, match="cifar-10-batches-py"):
        load_source("cifar10")
    with pytest.raises(UsageError, match="cannot be downloaded"):
        load_source("stanford-cars", download=True)


def test_download_uses_torchvision_and_lands_in_data_dir(isolated, tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    mirror = tmp_path / "mirror"
    write_fake_fmnist(mirror, 7)
    fetched = []

    def fake_download(url, download_root, filename, md5):  # a local stand-in for the network
        fetched.append(filename)
        shutil.copy(mirror / filename, download_root)
        with gzip.open(mirror / filename) as src, open(os.path.join(download_root, filename[:-3]), "wb") as dst:
            shutil.copyfileobj(src, dst)

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fake_download)
    target = tmp_path / "dl"
    with pytest.raises(UsageError):  # no download unless asked
        load_source("fashion-mnist", data_dir=str(target))
    assert fetched == []
    b = load_source("fashion-mnist", data_dir=str(target), download=True)
    assert sorted(fetched) == sorted(f + ".gz" for f in FILES)
    assert b.location == str(target / "FashionMNIST" / "raw") and int(b.train.images.max()) == 7


def test_download_failure_is_one_line(isolated, tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def offline(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(UsageError, match=r"^downloading fashion-mnist into .* failed") as err:
        load_source("fashion-mnist", data_dir=str(tmp_path / "dl"), download=True)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ CIFAR
def write_fake_cifar(root, n_per_file: int = 6) -> None:
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8), "labels": list(range(n_per_file))}
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump(entry, fh)
    with open(os.path.join(folder, "batches.meta"), "wb") as fh:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            fh,
        )


def test_cifar10_layout_matches_torchvision(isolated, tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10

    write_fake_cifar(tmp_path)
    b = named.load_named("cifar10", data_dir=str(tmp_path), download=False)  # the official splits
    assert (len(b.train), len(b.test), b.in_chans, b.native_size, b.classes[1]) == (30, 6, 3, 32, "automobile")
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our fake files fail its md5 list
    for part, train in ((b.train, True), (b.test, False)):
        tv = CIFAR10(str(tmp_path), train=train)
        assert torch.equal(part.images, torch.from_numpy(tv.data).permute(0, 3, 1, 2))  # tv keeps HWC
        assert part.labels.tolist() == tv.targets


# ------------------------------------------------------------------ Flowers-102 and Stanford Cars (.mat + JPEG)
def _jpeg(path, value: int) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (12, 10), (value, value, value)).save(path)


def test_flowers102_trains_on_train_plus_val(isolated, tmp_path):
    sio = pytest.importorskip("scipy.io")
    base = tmp_path / "flowers-102"
    for i in range(1, 13):
        _jpeg(str(base / "jpg" / f"image_{i:05d}.jpg"), i)
    (base / "jpg" / "image_00012.jpg").write_bytes(b"")  # one broken test image
    labels = np.array([1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2])
    sio.savemat(base / "imagelabels.mat", {"labels": labels})
    sio.savemat(
        base / "setid.mat",
        {"trnid": np.array([1, 2, 3, 4]), "valid": np.array([5, 6, 7, 8]), "tstid": np.array([9, 10, 11, 12])},
    )
    raw = named.load_named("flowers102", data_dir=str(tmp_path), download=False)
    assert (len(raw.train), len(raw.test)) == (8, 3)
    assert raw.train.labels == [0, 1, 0, 1, 0, 1, 0, 1] and raw.train.paths[4].endswith("image_00005.jpg")
    b = load_source("flowers102", data_dir=str(tmp_path))  # default: a 0.1 hold-out of train + val
    assert (len(b.train), len(b.val), len(b.test), b.num_classes, b.native_size) == (6, 2, 3, 102, None)
    assert sorted(b.train.paths + b.val.paths) == sorted(raw.train.paths)
    assert b.skipped == [{"path": str(base / "jpg" / "image_00012.jpg"), "reason": "empty file (0 bytes)"}]
    b0 = load_source("flowers102", data_dir=str(tmp_path), val_fraction=0)  # no hold-out: the official val list
    assert [os.path.basename(p) for p in b0.val.paths] == [f"image_{i:05d}.jpg" for i in (5, 6, 7, 8)]
    assert len(b0.train) == 4 and "official val" in b0.splits


def test_stanford_cars_layout(isolated, tmp_path):
    sio = pytest.importorskip("scipy.io")
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(
        base / "devkit" / "cars_meta.mat", {"class_names": np.array(["AM General Hummer", "Audi R8"], dtype=object)}
    )

    def annos(fnames, classes):
        rec = np.zeros(len(fnames), dtype=[("fname", object), ("class", object)])
        rec["fname"], rec["class"] = fnames, classes
        return {"annotations": rec}

    for i in range(4):
        _jpeg(str(base / "cars_train" / f"{i:05d}.jpg"), 10 * i)
        _jpeg(str(base / "cars_test" / f"{i:05d}.jpg"), 10 * i)
    sio.savemat(base / "devkit" / "cars_train_annos.mat", annos([f"{i:05d}.jpg" for i in range(4)], [1, 2, 1, 2]))
    sio.savemat(
        base / "cars_test_annos_withlabels.mat",
        annos([f"{i:05d}.jpg" for i in range(4)] + ["missing.jpg"], [2, 2, 1, 1, 1]),
    )
    b = named.load_named("stanford-cars", data_dir=str(tmp_path), download=False)
    assert b.classes == ["AM General Hummer", "Audi R8"]
    assert b.train.labels == [0, 1, 0, 1] and b.test.labels == [1, 1, 0, 0]
    assert b.skipped == [{"path": str(base / "cars_test" / "missing.jpg"), "reason": "file not found"}]


# ------------------------------------------------------------------ dispatch
def test_list_sources_and_unknown_source(tmp_path):
    assert list_sources() == ["fashion-mnist", "cifar10", "cifar100", "flowers102", "stanford-cars"]
    with pytest.raises(UsageError, match="unknown data source 'imagenet-22k'"):
        load_source("imagenet-22k")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UsageError, match="not a .csv manifest"):
        load_source(str(tmp_path / "x.txt"))
    with pytest.raises(UsageError, match="val_fraction"):
        load_source("fashion-mnist", val_fraction=1.0)
