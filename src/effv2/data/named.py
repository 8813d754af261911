"""The named data sets: where their files are looked for, how they are read, how they are fetched.

Lookup order, first hit wins: the ``data_dir`` argument, then each folder in ``$EFFV2_DATA``
(``os.pathsep``-separated), then ``SYSTEM_DIRS`` (the download cache, then /usr/share/datasets,
where Debian's dataset-fashion-mnist package puts Fashion-MNIST). Inside each of those roots a
data set may sit directly or in the subfolders listed in its ``subdirs``; torchvision's own
layouts are among them, so a folder torchvision downloaded into works as it is.

Downloads use torchvision's own download code and happen only when asked (``download=True``),
into the first of: ``data_dir``, the first ``$EFFV2_DATA`` folder, the cache folder.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UsageError
from .decode import check_image_file
from .idx import read_idx
from .imagesets import FileImageSet, ImageSet, TensorImageSet

ENV_VAR = "EFFV2_DATA"
_WHERE = "data_dir or $EFFV2_DATA"
CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "effv2", "data")
SYSTEM_DIRS: list[str] = [CACHE_DIR, "/usr/share/datasets"]


@dataclass
class RawData:
    """A named data set's official splits, before the val hold-out is made."""

    train: ImageSet
    test: ImageSet
    classes: list[str]
    in_chans: int
    native_size: int | None
    location: str
    skipped: list[dict] = field(default_factory=list)
    val: ImageSet | None = None  # an official val split (Flowers-102), used only with val_fraction 0
    train_without_val: ImageSet | None = None  # ``train`` less ``val``, when ``val`` is part of ``train``


@dataclass(frozen=True)
class NamedDataset:
    name: str
    subdirs: tuple[str, ...]  # where under a root the files may be; "" = the root itself
    present: Callable[[str], bool]  # are the files in this folder?
    load: Callable[[str], RawData]
    download: Callable[[str], None] | None  # None: cannot be downloaded
    hint: str  # how to get the files, for the not-found message


def search_roots(data_dir: str | None) -> list[str]:
    roots = [data_dir] if data_dir else []
    roots += [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return roots + list(SYSTEM_DIRS)


def download_root(data_dir: str | None) -> str:
    env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return data_dir or (env[0] if env else CACHE_DIR)


# ---------------------------------------------------------------- Fashion-MNIST (idx files)
_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _idx_file(folder: str, base: str) -> str | None:
    for name in (base + ".gz", base):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _fmnist_present(folder: str) -> bool:
    return all(_idx_file(folder, b) for b in _FMNIST_FILES)


def _idx_split(folder: str, images: str, labels: str) -> TensorImageSet:
    x = read_idx(_idx_file(folder, images) or "")
    y = read_idx(_idx_file(folder, labels) or "")
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.dtype != np.uint8:
        raise UsageError(f"{folder}: {images} {x.shape} and {labels} {y.shape} do not form an image set")
    if y.size and (y.min() < 0 or y.max() >= len(FASHION_CLASSES)):
        raise UsageError(f"{folder}: {labels} has labels outside 0..{len(FASHION_CLASSES) - 1}")
    return TensorImageSet(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))


def _fmnist_load(folder: str) -> RawData:
    train = _idx_split(folder, _FMNIST_FILES[0], _FMNIST_FILES[1])
    test = _idx_split(folder, _FMNIST_FILES[2], _FMNIST_FILES[3])
    return RawData(train, test, list(FASHION_CLASSES), 1, 28, folder)


def _fmnist_download(root: str) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root, train=True, download=True)  # fetches all four files into ROOT/FashionMNIST/raw


# ---------------------------------------------------------------- CIFAR (python pickles)
# The official CIFAR files are Python pickles. A pickle can name any callable and so run any code,
# so they are read with an unpickler that resolves only the few globals a CIFAR batch needs (numpy's
# array reconstruction and dtype); anything else is refused before it is called.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes for a Python 2 reader
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def safe_unpickle(path: str, what: str = "a CIFAR batch file") -> dict:
    """Load a pickle that may hold only plain containers, numbers, strings and numpy arrays."""
    try:
        with open(path, "rb") as fh:
            entry = _RestrictedUnpickler(fh, encoding="latin1").load()
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise UsageError(f"{path}: not {what}, refused ({type(exc).__name__}: {text})") from None
    if not isinstance(entry, dict):
        raise UsageError(f"{path}: not {what}, refused (a {type(entry).__name__}, not a dict)")
    return entry


_unpickle = safe_unpickle


def _cifar_batches(folder: str, files: list[str], label_key: str) -> TensorImageSet:
    xs, ys = [], []
    for name in files:
        entry = _unpickle(os.path.join(folder, name))
        if "data" not in entry or label_key not in entry:
            raise UsageError(f"{os.path.join(folder, name)}: has no 'data'/'{label_key}' entries")
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[label_key], dtype=np.int64))
    return TensorImageSet(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def _cifar(
    name: str,
    base: str,
    train_files: list[str],
    test_files: list[str],
    meta: str,
    label_key: str,
    names_key: str,
    tv_cls: str,
) -> NamedDataset:
    def present(folder: str) -> bool:
        return all(os.path.isfile(os.path.join(folder, f)) for f in [*train_files, *test_files, meta])

    def load(folder: str) -> RawData:
        classes = list(_unpickle(os.path.join(folder, meta))[names_key])
        return RawData(
            _cifar_batches(folder, train_files, label_key),
            _cifar_batches(folder, test_files, label_key),
            classes,
            3,
            32,
            folder,
        )

    def download(root: str) -> None:
        # torchvision's own URL, archive name and checksum, but not its class: CIFAR10(download=True)
        # would also unpickle the files with the plain unpickler; ours reads them afterwards.
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, tv_cls)
        download_and_extract_archive(cls.url, root, filename=cls.filename, md5=cls.tgz_md5)

    hint = f"put torchvision's {base}/ folder (from {tv_cls}(root, download=True)) in a folder passed as {_WHERE}"
    return NamedDataset(name, (base, os.path.join(name, base)), present, load, download, hint)


# ---------------------------------------------------------------- Flowers-102, Stanford Cars (JPEG files + .mat)
def _loadmat(path: str) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UsageError(f"reading {os.path.basename(path)} needs scipy: pip install scipy") from None
    try:
        return loadmat(path, squeeze_me=True)
    except Exception as exc:
        raise UsageError(f"{path}: cannot read the .mat file ({type(exc).__name__}: {exc})") from None


def _checked(paths: list[str], labels: list[int], skipped: list[dict]) -> FileImageSet:
    keep_p, keep_l = [], []
    for p, lab in zip(paths, labels, strict=True):
        reason = check_image_file(p)
        if reason is None:
            keep_p.append(p)
            keep_l.append(lab)
        else:
            skipped.append({"path": p, "reason": reason if os.path.exists(p) else "file not found"})
    return FileImageSet(keep_p, keep_l)


def _need_images(name: str, folder: str, train: FileImageSet, test: FileImageSet, skipped: list[dict]) -> None:
    if len(train) == 0 or len(test) == 0:
        first = f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise UsageError(f"no readable images in {folder} for {name}: {len(skipped)} files skipped{first}")


def _flowers_present(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "jpg")) and all(
        os.path.isfile(os.path.join(folder, f)) for f in ("imagelabels.mat", "setid.mat")
    )


def _flowers_load(folder: str) -> RawData:
    # The paper's protocol: train on the official train + val lists, report on the test list.
    setid = _loadmat(os.path.join(folder, "setid.mat"))
    labels = np.atleast_1d(_loadmat(os.path.join(folder, "imagelabels.mat"))["labels"]).astype(np.int64) - 1

    def split(ids: np.ndarray) -> tuple[list[str], list[int]]:
        ids = np.atleast_1d(ids).astype(np.int64)
        return [os.path.join(folder, "jpg", f"image_{i:05d}.jpg") for i in ids], [int(labels[i - 1]) for i in ids]

    skipped: list[dict] = []
    trn = _checked(*split(setid["trnid"]), skipped)
    val = _checked(*split(setid["valid"]), skipped)
    train = FileImageSet(trn.paths + val.paths, trn.labels + val.labels)
    test = _checked(*split(setid["tstid"]), skipped)
    _need_images("flowers102", folder, train, test, skipped)
    classes = [f"{i:03d}" for i in range(1, 103)]  # the official files carry label numbers, not names
    return RawData(
        train,
        test,
        classes,
        3,
        None,
        folder,
        skipped,
        val=val if len(val) and len(trn) else None,
        train_without_val=trn,
    )


def _flowers_download(root: str) -> None:
    from torchvision.datasets import Flowers102

    Flowers102(root, split="test", download=True)  # fetches ROOT/flowers-102 (images + both .mat files)


_CARS_FILES = ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat")


def _cars_present(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in _CARS_FILES) and all(
        os.path.isdir(os.path.join(folder, d)) for d in ("cars_train", "cars_test")
    )


def _cars_load(folder: str) -> RawData:
    # torchvision's StanfordCars layout; read here so the files go through our image checks.
    classes = [str(c) for c in np.atleast_1d(_loadmat(os.path.join(folder, _CARS_FILES[0]))["class_names"])]
    skipped: list[dict] = []

    def split(annos: str, images: str) -> FileImageSet:
        rows = np.atleast_1d(_loadmat(os.path.join(folder, annos))["annotations"])
        paths = [os.path.join(folder, images, str(r["fname"])) for r in rows]
        labels = [int(r["class"]) - 1 for r in rows]  # the .mat classes count from 1
        if any(not 0 <= lab < len(classes) for lab in labels):
            raise UsageError(f"{os.path.join(folder, annos)}: class numbers outside 1..{len(classes)}")
        return _checked(paths, labels, skipped)

    train = split(_CARS_FILES[1], "cars_train")
    test = split(_CARS_FILES[2], "cars_test")
    _need_images("stanford-cars", folder, train, test, skipped)
    return RawData(train, test, classes, 3, None, folder, skipped)


DATASETS: dict[str, NamedDataset] = {
    "fashion-mnist": NamedDataset(
        "fashion-mnist",
        ("", "fashion-mnist", os.path.join("FashionMNIST", "raw")),
        _fmnist_present,
        _fmnist_load,
        _fmnist_download,
        "install Debian's package (apt-get install dataset-fashion-mnist), or put the 4 idx files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
        "in a folder passed as data_dir or $EFFV2_DATA",
    ),
    "cifar10": _cifar(
        "cifar10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
        "CIFAR10",
    ),
    "cifar100": _cifar(
        "cifar100", "cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", "CIFAR100"
    ),
    "flowers102": NamedDataset(
        "flowers102",
        ("flowers-102", os.path.join("flowers102", "flowers-102")),
        _flowers_present,
        _flowers_load,
        _flowers_download,
        f"put torchvision's flowers-102/ folder (jpg/, imagelabels.mat, setid.mat) in a folder passed as {_WHERE}",
    ),
    "stanford-cars": NamedDataset(
        "stanford-cars",
        ("stanford_cars", os.path.join("stanford-cars", "stanford_cars")),
        _cars_present,
        _cars_load,
        None,
        "it can no longer be downloaded; put torchvision's stanford_cars/ layout "
        "(devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
        "cars_train/, cars_test_annos_withlabels.mat, cars_test/) in a folder passed as data_dir or $EFFV2_DATA",
    ),
}


def locate(ds: NamedDataset, data_dir: str | None) -> tuple[str | None, list[str]]:
    """The first folder holding ``ds``'s files, and every folder looked in (for the error message)."""
    looked: list[str] = []
    for root in search_roots(data_dir):
        for sub in ds.subdirs:
            folder = os.path.abspath(os.path.join(os.path.expanduser(root), sub))
            if folder in looked:
                continue
            looked.append(folder)
            if ds.present(folder):
                return folder, looked
    return None, looked


def load_named(name: str, *, data_dir: str | None, download: bool) -> RawData:
    ds = DATASETS[name]
    folder, looked = locate(ds, data_dir)
    if folder is None and download:
        if ds.download is None:
            raise UsageError(f"{name} not found and cannot be downloaded: {ds.hint}")
        target = download_root(data_dir)
        try:
            os.makedirs(target, exist_ok=True)
            ds.download(target)
        except UsageError:
            raise
        except Exception as exc:
            detail = " ".join(str(exc).split())  # torchvision's messages span lines; ours are one
            raise UsageError(
                f"downloading {name} into {target} failed ({type(exc).__name__}: {detail}); {ds.hint}"
            ) from None
        folder, looked = locate(ds, target)
    if folder is None:
        dl = "" if ds.download is None else "; or allow a download (download=True)"
        raise UsageError(f"{name} not found (looked in {', '.join(looked)}): {ds.hint}{dl}")
    return ds.load(folder)
