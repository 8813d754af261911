"""The run folder: who may write to it, what it holds, and what a resume must match.

- A lock (``RUN_DIR/.lock``, an ``fcntl`` lock on an open file): a second run on the same folder
  is refused with the holder's pid, host and start time. The kernel drops the lock when its holder
  dies, SIGKILL included, so a killed run never leaves a stale lock to clean up by hand.
- A new run refuses a folder that already holds a run (use ``--resume``) and a non-empty folder
  that is not an effv2 run, unless ``overwrite`` (the folder's own files are left alone).
- ``config.json`` records absolute paths (so a run resumes from any working directory), the
  effv2 and torch versions and a fingerprint of the data (class names, split sizes, a hash of the
  file names or of the labels); ``--resume`` refuses any difference, naming what changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.imagesets import FileImageSet
from ..errors import UsageError
from ..io.atomic import atomic_write_text


class RunFolderBusy(UsageError):
    """Another process holds the run folder's lock."""


CONFIG = "config.json"
LOCK = ".lock"
RUN_FILES = (CONFIG, "metrics.jsonl", "skipped.jsonl", "summary.json", "curves.png", "checkpoints", "model", LOCK)
RUN_FILES += ("metrics.csv", "tensorboard")  # the logging sinks (logging_sinks.py)


def check_out_dir(out: Path, *, resume: bool, overwrite: bool = False) -> None:
    """Refuse an --out that cannot hold this run, before any work starts."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {parent} is not writable")
    if resume:
        if not (out / CONFIG).is_file():
            raise UsageError(f"{out}: not an effv2 run folder to resume (no {CONFIG})")
        return
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise UsageError(f"{out} already holds a run; use --resume {out} or another --out")
    if out.is_dir() and not overwrite:
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(
                f"--out {out}: a non-empty folder that is not an effv2 run ({shown}); "
                f"choose another --out or pass --overwrite"
            )


@contextlib.contextmanager
def run_lock(out: Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``out/.lock`` for the block; another holder is refused by name (see the module doc)."""
    if not enabled:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderBusy(f"{out}: in use by {holder}; wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
        )
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (harmless, and rewritten by the next holder)


def data_fingerprint(bundle: Any) -> dict[str, Any]:
    """What identifies the data a run trains on: class names, split sizes and a hash of the training
    files' names (file sets) or of the training labels (in-memory sets)."""
    train = bundle.train
    h = hashlib.sha256()
    if isinstance(train, FileImageSet):
        for p in train.paths:
            h.update(os.path.basename(str(p)).encode() + b"\0")
    h.update(bytes(str(train.label_list()), "ascii"))
    return {
        "classes": list(bundle.classes),
        "train": len(bundle.train),
        "val": len(bundle.val),
        "test": None if bundle.test is None else len(bundle.test),
        "train_sha256": h.hexdigest()[:16],
    }


def absolute(path: str | None) -> str | None:
    """A path given on the command line, made absolute (a named data set stays a name)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() or os.sep in path or path.endswith(".json") else path


def write_config(out: Path, config: dict[str, Any]) -> None:
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2) + "\n")


def read_config(out: Path) -> dict[str, Any]:
    path = out / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable run config ({exc})") from None
    missing = [k for k in ("model", "data", "recipe") if k not in cfg]
    if not isinstance(cfg, dict) or missing:
        raise UsageError(f"{path}: not an effv2 run config (missing {', '.join(missing)})")
    return cfg


def fingerprint_changes(was: Any, now: dict[str, Any]) -> list[str]:
    """The data_fingerprint keys whose recorded value (``was``, from a config.json: anything that is not a
    dict counts as all changed) differs from ``now``'s."""
    was = was if isinstance(was, dict) else {}
    return [k for k in ("classes", "train", "val", "test", "train_sha256") if was.get(k) != now.get(k)]


def check_resume(out: Path, cfg: dict[str, Any], bundle: Any) -> None:
    """Refuse to resume onto other software or other data, naming what changed."""
    changes = []
    for key, now in (("effv2_version", __version__), ("torch_version", torch.__version__)):
        was = cfg.get(key)
        if was is not None and str(was).split("+")[0] != str(now).split("+")[0]:
            changes.append(f"{key} {was} -> {now}")
    was_fp = cfg.get("data_fingerprint")
    if was_fp is not None:
        now_fp, was = data_fingerprint(bundle), was_fp if isinstance(was_fp, dict) else {}
        for k in fingerprint_changes(was, now_fp):
            what = "class names" if k == "classes" else f"data {k}"
            changes.append(f"{what} {was.get(k)} -> {now_fp[k]}")
    if changes:
        raise UsageError(f"--resume {out}: the run cannot continue exactly: " + "; ".join(changes[:4]))
