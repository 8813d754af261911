"""Image folders and CSV manifests -> file image sets, with every unusable file listed and why.

Folder layouts (class = subfolder name; files are found recursively inside a class folder):
- ``ROOT/train/CLASS/...`` plus ``ROOT/val/CLASS/...`` and/or ``ROOT/test/CLASS/...``: the given
  splits. With train/ and test/ only, val is a seeded stratified ``val_fraction`` hold-out of
  train (the test split is never used as val).
- ``ROOT/CLASS/...``: val is a seeded stratified ``val_fraction`` hold-out; there is no test.
- ``val_fraction`` 0 ("no hold-out") needs a val/ folder (or split=val rows); otherwise it is a
  UsageError naming the key.

The class list is the sorted union of the class folder names, empty folders included, so a
class's index never shifts because its folder is empty (the empty folder is listed in
``skipped``). Each file is checked cheaply at scan time (``decode.check_image_file``).

CSV manifest: a header with columns ``path`` and ``label`` (others ignored; an optional ``split``
column with train/val/test picks the split per row, else the same stratified hold-out as a flat
folder). Relative paths resolve against the CSV's folder. Labels are class names; the class list
is their sorted set (numeric order when every label is an integer). A row with an empty path or
label, a bad split value or a missing/unusable file is skipped with its row number and reason;
a missing header column is a UsageError.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from ..errors import UsageError
from .decode import check_image_file
from .imagesets import FileImageSet
from .order import stratified_split

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class FileSplits:
    train: FileImageSet
    val: FileImageSet
    test: FileImageSet | None
    classes: list[str]
    skipped: list[dict] = field(default_factory=list)
    val_note: str = ""  # how val was made, for the run's record


_EMPTY_CLASS = "empty class folder"
_UNREADABLE_CLASS = "class folder has no readable images"
_FOLDER_REASONS = (_EMPTY_CLASS, _UNREADABLE_CLASS)


def _skip(path: str, reason: str) -> dict[str, str]:
    return {"path": path, "reason": reason}


def _subfolders(root: str) -> list[str]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise UsageError(f"cannot list {root}: {exc.strerror or exc}") from None
    return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]


def _files_under(folder: str) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def _scan_classes(root: str, classes: list[str], skipped: list[dict]) -> FileImageSet:
    """Check every file under ROOT/CLASS for the given classes (missing class folders are fine)."""
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        files = _files_under(folder)
        if not files:
            skipped.append(_skip(folder, _EMPTY_CLASS))
            continue
        kept = 0
        for path in files:
            reason = check_image_file(path)
            if reason is None:
                paths.append(path)
                labels.append(label)
                kept += 1
            else:
                skipped.append(_skip(path, reason))
        if kept == 0:
            skipped.append(_skip(folder, _UNREADABLE_CLASS))
    return FileImageSet(paths, labels)


def _loose_files(root: str, skipped: list[dict]) -> None:
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file():
            skipped.append(_skip(entry.path, "not inside a class folder"))


def _no_images_error(where: str, skipped: list[dict]) -> UsageError:
    files = [s for s in skipped if s["reason"] not in _FOLDER_REASONS]
    first = f" (first: {files[0]['path']}: {files[0]['reason']})" if files else ""
    return UsageError(f"no readable images in {where}: {len(files)} files skipped{first}")


def holdout(train: FileImageSet, val_fraction: float, split_seed: int) -> tuple[FileImageSet, FileImageSet]:
    tr, va = stratified_split(train.labels, val_fraction, split_seed)
    return train.subset(tr), train.subset(va)


def no_holdout_error(where: str, why: str) -> UsageError:
    return UsageError(
        f"val_fraction=0 means no validation hold-out, but {where}: {why} (the test split is never "
        "used for selection); set val_fraction > 0 (e.g. --set val_fraction=0.1, the default)"
    )


def _holdout_note(val_fraction: float, split_seed: int) -> str:
    return f"val: stratified {val_fraction:g} hold-out of train (split_seed {split_seed})"


def load_folder(root: str, *, val_fraction: float, split_seed: int) -> FileSplits:
    root = os.path.abspath(root)
    top = _subfolders(root)
    skipped: list[dict] = []
    if "train" in top and ("val" in top or "test" in top):
        present = [s for s in SPLIT_NAMES if s in top]
        classes = sorted({c for s in present for c in _subfolders(os.path.join(root, s))})
        if not classes:
            raise UsageError(f"{root}/train has no class subfolders")
        sets = {s: _scan_classes(os.path.join(root, s), classes, skipped) for s in present}
        for s in present:
            _loose_files(os.path.join(root, s), skipped)
        if sum(len(v) for v in sets.values()) == 0:
            raise _no_images_error(root, skipped)
        if len(sets["train"]) == 0:
            raise _no_images_error(os.path.join(root, "train"), skipped)
        train, test = sets["train"], sets.get("test")
        if "val" in sets:
            val, note = sets["val"], "val: the val/ folder"
        elif val_fraction > 0:
            train, val = holdout(train, val_fraction, split_seed)
            note = _holdout_note(val_fraction, split_seed)
        else:
            raise no_holdout_error(root, "it has train/ and test/ but no val/ folder")
        return FileSplits(train, val, test, classes, skipped, note)

    classes = top
    if not classes:
        raise UsageError(f"{root} has no class subfolders (expected ROOT/CLASS/image.jpg or ROOT/train/CLASS/...)")
    _loose_files(root, skipped)
    everything = _scan_classes(root, classes, skipped)
    if len(everything) == 0:
        raise _no_images_error(root, skipped)
    if val_fraction <= 0:
        raise no_holdout_error(root, "it has no val/ folder")
    train, val = holdout(everything, val_fraction, split_seed)
    return FileSplits(train, val, None, classes, skipped, _holdout_note(val_fraction, split_seed))


def median_short_side(paths: list[str], *, limit: int = 256) -> tuple[int, int]:
    """(median shorter side in px, images read) over an evenly spaced sample of at most ``limit``
    of ``paths``, from the image headers only (no pixel is decoded); files that fail to open are
    left out. (0, 0) when none opens."""
    from PIL import Image

    k = min(len(paths), max(1, limit))
    sides = []
    for path in [paths[i * len(paths) // k] for i in range(k)]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except Exception:  # scanned as readable, yet gone or broken now: the decode step reports it
            continue
    if not sides:
        return 0, 0
    sides.sort()
    return int(sides[(len(sides) - 1) // 2]), len(sides)


def _sorted_labels(names: set[str]) -> list[str]:
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def load_manifest(csv_path: str, *, val_fraction: float, split_seed: int) -> FileSplits:
    csv_path = os.path.abspath(csv_path)
    base = os.path.dirname(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in ("path", "label") if c not in header]
            if missing:
                raise UsageError(
                    f"{csv_path}: header must have columns path,label "
                    f"(missing {', '.join(missing)}; found {', '.join(header) or 'nothing'})"
                )
            rows = [(reader.line_num, row) for row in reader]
    except OSError as exc:
        raise UsageError(f"cannot read {csv_path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{csv_path}: not a readable CSV file ({exc})") from None

    has_split = "split" in header
    skipped: list[dict] = []
    good: list[tuple[str, str, str]] = []  # (path, label name, split)
    for line, row in rows:
        rel = (row.get("path") or "").strip()
        name = (row.get("label") or "").strip()
        split = (row.get("split") or "").strip().lower() if has_split else "train"
        where = f"{csv_path}:{line}"
        if not rel:
            skipped.append(_skip(where, "row has an empty path"))
            continue
        path = rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base, rel))
        if not name:
            skipped.append(_skip(path, f"row {line}: empty label"))
            continue
        if split not in SPLIT_NAMES:
            skipped.append(_skip(path, f"row {line}: split must be train, val or test, got {split!r}"))
            continue
        good.append((path, name, split))

    classes = _sorted_labels({name for _, name, _ in good})
    index = {name: i for i, name in enumerate(classes)}
    parts: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLIT_NAMES}
    for path, name, split in good:
        reason = check_image_file(path)
        if reason is not None:
            skipped.append(_skip(path, reason if os.path.exists(path) else "file not found"))
            continue
        parts[split][0].append(path)
        parts[split][1].append(index[name])
    sets = {s: FileImageSet(*parts[s]) for s in SPLIT_NAMES}
    if sum(len(v) for v in sets.values()) == 0:
        raise _no_images_error(csv_path, skipped)
    if len(sets["train"]) == 0:
        raise UsageError(f"{csv_path}: no readable training images ({len(skipped)} rows skipped)")

    train, test = sets["train"], (sets["test"] if len(sets["test"]) else None)
    if len(sets["val"]):
        return FileSplits(train, sets["val"], test, classes, skipped, "val: rows with split=val")
    if val_fraction > 0:
        train, val = holdout(train, val_fraction, split_seed)
        return FileSplits(train, val, test, classes, skipped, _holdout_note(val_fraction, split_seed))
    raise no_holdout_error(csv_path, "it has no rows with split=val")
