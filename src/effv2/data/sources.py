"""``load_source``: one call from a data set name, an image folder or a CSV manifest to train/val/test.

Splits (one rule for every source; the test split is never used for selection):
- ``val``: the source's own validation split when it has one (a folder's ``val/``, a manifest's
  ``split=val`` rows, Flowers-102's official val list with ``val_fraction`` 0); otherwise a seeded,
  stratified ``val_fraction`` hold-out (default 0.1) of the training split.
- ``train``: the official training split (Flowers-102: train + val lists, the paper's protocol,
  unless its val list is the val split), less the hold-out.
- ``test``: the official test split (None for sources that have none); never ``val``.
- ``val_fraction`` 0 means "no hold-out": allowed only where the source has a val split of its own,
  otherwise a one-line UsageError naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UsageError
from .folders import FileSplits, load_folder, load_manifest, no_holdout_error
from .imagesets import FileImageSet, ImageSet, TensorImageSet
from .named import DATASETS, load_named
from .order import stratified_split


@dataclass
class DataBundle:
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    classes: list[str]
    in_chans: int  # 1 for fashion-mnist, 3 otherwise
    native_size: int | None  # 28 fashion-mnist, 32 cifar, None for files of varying size
    skipped: list[dict]  # {"path": str, "reason": str} found while scanning
    source: str  # what was loaded: a data set name or an absolute path; load_source(source) loads it again
    location: str = ""  # the folder or file the data came from
    splits: str = ""  # how val/test were made, for config.json

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if not self.classes:
            raise ValueError("a data bundle needs at least one class")
        if self.test is not None and self.val is self.test:
            raise ValueError("val must not be the test split (the test split is never used for selection)")
        if self.native_size is not None and self.native_size < 1:
            raise ValueError(f"native_size must be positive or None, got {self.native_size}")
        for name in ("train", "val", "test"):
            part = getattr(self, name)
            if part is not None and not isinstance(part, (TensorImageSet, FileImageSet)):
                raise ValueError(f"{name} must be a TensorImageSet or FileImageSet")
        if len(self.train) == 0:
            raise ValueError("the training split is empty")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict:
        """Counts and provenance, ready for config.json."""
        return {
            "source": self.source,
            "location": self.location,
            "splits": self.splits,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "native_size": self.native_size,
            "train": len(self.train),
            "val": len(self.val),
            "test": None if self.test is None else len(self.test),
            "skipped": len(self.skipped),
        }


def list_sources() -> list[str]:
    """The named data sets; any image folder or .csv manifest path is accepted as well."""
    return list(DATASETS)


def _validate(val_fraction: float) -> None:
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def load_source(
    source: str, *, data_dir: str | None = None, download: bool = False, val_fraction: float = 0.1, split_seed: int = 0
) -> DataBundle:
    _validate(val_fraction)
    key = source.strip().lower()
    if key in DATASETS:
        raw = load_named(key, data_dir=data_dir, download=download)
        if val_fraction > 0:
            tr, va = stratified_split(raw.train.label_list(), val_fraction, split_seed)
            train, val = raw.train.subset(tr), raw.train.subset(va)
            splits = (
                f"train: official train less val; val: stratified {val_fraction:g} hold-out of it "
                f"(split_seed {split_seed}); test: official test"
            )
        elif raw.val is not None:
            train, val = raw.train_without_val, raw.val
            splits = "train: official train; val: official val (val_fraction 0); test: official test"
        else:
            raise no_holdout_error(key, "it has no validation split of its own")
        return _nonempty_val(
            DataBundle(
                train, val, raw.test, raw.classes, raw.in_chans, raw.native_size, raw.skipped, key, raw.location, splits
            )
        )

    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        fs: FileSplits = load_folder(path, val_fraction=val_fraction, split_seed=split_seed)
    elif os.path.isfile(path) and path.lower().endswith(".csv"):
        fs = load_manifest(path, val_fraction=val_fraction, split_seed=split_seed)
    elif os.path.exists(path):
        raise UsageError(f"data source {source}: a file that is not a .csv manifest")
    else:
        raise UsageError(
            f"unknown data source {source!r}: not one of {', '.join(DATASETS)}, "
            "nor an existing image folder or .csv manifest"
        )
    return _nonempty_val(
        DataBundle(fs.train, fs.val, fs.test, fs.classes, 3, None, fs.skipped, path, path, fs.val_note)
    )


def _nonempty_val(bundle: DataBundle) -> DataBundle:
    if len(bundle.val) == 0:
        raise UsageError(
            f"{bundle.source}: the val split is empty "
            "(every class has fewer than 2 readable images; add a val/ folder or more images)"
        )
    return bundle
