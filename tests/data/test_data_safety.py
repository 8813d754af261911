"""No data file can run code, stall a run or escape the bad-file report.

Pickles are read with a restricted unpickler; images only with the decoders in decode.PIL_FORMATS;
a decompression bomb is refused from its header; a FIFO never blocks; every file that fails at any
stage reaches Batch.bad, in the main process and in loader workers, in training and evaluation.
"""

from __future__ import annotations

import os
import pickle
import threading
import time

import numpy as np
import pytest
from PIL import Image
from test_data_sources import isolated, write_fake_cifar  # noqa: F401 - fixture

from effv2.data import decode as dec
from effv2.data import eval_batches, load_source, train_batches
from effv2.data.corpus import corrupt_png_bytes, png_bytes
from effv2.data.decode import BadImage, check_image_file, decode_rgb
from effv2.errors import UsageError


# ------------------------------------------------------------------ pickles (item 11)
class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_does_not_run(isolated, tmp_path):  # noqa: F811
    write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as fh:
        pickle.dump({"data": _Evil(str(marker)), "labels": [0]}, fh)
    with pytest.raises(
        UsageError, match=r"data_batch_3: not a CIFAR batch file, refused .*posix.system is not allowed"
    ):
        load_source("cifar10", data_dir=str(tmp_path))
    assert not marker.exists()
    # a plain pickle.load of the same file would have run it (the point of the restriction)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_cifar_pickle_error_is_one_line(isolated, tmp_path):  # noqa: F811
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(_Evil("x")) + b"\n\n")
    with pytest.raises(UsageError) as err:
        load_source("cifar10", data_dir=str(tmp_path))
    assert "\n" not in str(err.value) and "refused" in str(err.value)


def test_cifar_download_never_unpickles_with_torchvision(isolated, tmp_path, monkeypatch):  # noqa: F811
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tvu

    def fake_download(url, root, filename, md5):  # a local stand-in for the network
        assert url == tvd.CIFAR10.url and filename == tvd.CIFAR10.filename and md5 == tvd.CIFAR10.tgz_md5
        write_fake_cifar(root)

    def no_class(*a, **k):
        raise AssertionError("torchvision's CIFAR10 class unpickles with the plain unpickler")

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(tvd, "CIFAR10", type("NoCifar", (), {"__init__": no_class, **vars(tvd.CIFAR10)}))
    b = load_source("cifar10", data_dir=str(tmp_path / "dl"), download=True)
    assert len(b.train) + len(b.val) == 30


# ------------------------------------------------------------------ image formats (item 11)
@pytest.mark.parametrize("fmt", ["PCX", "TGA", "SGI"])
def test_an_unsupported_format_renamed_png_is_skipped(tmp_path, fmt):
    path = tmp_path / "cls" / f"{fmt.lower()}.png"
    path.parent.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format=fmt)
    Image.open(path).load()  # Pillow itself would decode it
    reason = check_image_file(str(path))
    assert reason is not None and reason.startswith("cannot open as an image: UnidentifiedImageError: not one of JPEG")
    with pytest.raises(BadImage, match="not one of"):
        decode_rgb(str(path))
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "good.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "good2.png")
    b = load_source(str(tmp_path))
    assert {"path": str(path), "reason": reason} in b.skipped


# ------------------------------------------------------------------ bounded cost (item 12)
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # even with PIL's own guard switched off
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(60_000, 60_000, 8, 2, b"\x00" * 10))  # declares 3.6 gigapixels, ~10 GB RGB
    t0 = time.perf_counter()
    reason = check_image_file(str(path))
    with pytest.raises(BadImage, match="image too large"):
        decode_rgb(str(path))
    assert time.perf_counter() - t0 < 2.0  # no pixel was decoded or allocated
    assert reason == f"image too large (60000x60000 pixels > {dec.MAX_PIXELS}): decompression bomb guard"


def _call_with_timeout(fn, seconds: float):
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return t.is_alive(), out


def test_a_fifo_in_a_class_folder_never_blocks(tmp_path):
    cls = tmp_path / "cls"
    cls.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(cls / f"{i}.png")
    fifo = cls / "pipe.png"
    os.mkfifo(fifo)
    try:
        hung, out = _call_with_timeout(lambda: load_source(str(tmp_path)), 10)
        assert not hung, "the folder scan blocked on a FIFO"
        assert {"path": str(fifo), "reason": "not a regular file"} in out["value"].skipped
        # and if a file turns into a FIFO after the scan, the decode refuses it instead of waiting
        hung, out = _call_with_timeout(lambda: decode_rgb(str(fifo)), 10)
        assert not hung, "decode_rgb blocked on a FIFO"
        assert isinstance(out.get("error"), BadImage) and out["error"].reason == "not a regular file"
    finally:  # unblock a reader that old code left waiting
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


# ------------------------------------------------------------------ every failure reaches Batch.bad (item 5)
@pytest.fixture
def broken_folder(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "a" / "corrupt.png").write_bytes(corrupt_png_bytes())
    (root / "b" / "corrupt2.png").write_bytes(corrupt_png_bytes(8, 8))
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_every_file_that_fails_to_decode_reaches_batch_bad(broken_folder, workers):
    b = load_source(str(broken_folder), val_fraction=0.5)
    assert b.skipped == []  # both corrupt files pass the header scan
    corrupt = {str(broken_folder / "a" / "corrupt.png"), str(broken_folder / "b" / "corrupt2.png")}
    for part in (b.train, b.val):
        assert len(part) == 8
    seen: list[str] = []
    for batch in train_batches(
        b.train, batch_size=4, image_size=16, randaug_magnitude=5, mixup_alpha=0, cutmix_alpha=0,
        num_classes=2, seed=0, epoch=0, num_workers=workers,
    ):  # fmt: skip
        paths = [r["path"] for r in batch.bad]
        assert len(paths) == len(set(paths))  # once per batch
        assert all(r["reason"].startswith("cannot decode: OSError") for r in batch.bad)
        seen += paths
    for batch in eval_batches(b.val, batch_size=4, image_size=16, num_workers=workers):
        seen += [r["path"] for r in batch.bad]
    assert set(seen) == corrupt


@pytest.mark.parametrize("workers", [0, 2])
def test_a_training_split_of_only_undecodable_files_is_one_line(tmp_path, workers):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            (tmp_path / cls / f"{i}.png").write_bytes(corrupt_png_bytes(4 + i, 4))
    b = load_source(str(tmp_path), val_fraction=0.25)
    with pytest.raises(UsageError, match=r"^6 images in a row failed to decode from .*; first: cannot decode") as err:
        for _ in train_batches(
            b.train, batch_size=2, image_size=8, randaug_magnitude=0, mixup_alpha=0, cutmix_alpha=0,
            num_classes=2, seed=0, epoch=0, num_workers=workers,
        ):  # fmt: skip
            pass
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
