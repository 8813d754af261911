"""Crash-safe writes: temp file in the same folder, fsync, atomic rename, fsync the folder.

A reader (or a resumed run) sees either the previous complete file or the new complete file,
never a partial one, whatever moment the process is killed at.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def keep_previous_copy(target: Path, prev: Path) -> None:
    """Make ``prev`` (e.g. last.prev.safetensors) a complete copy of ``target`` (last.safetensors).

    A hard link (no data copied) put in place by an atomic rename, so at every moment both names
    hold a complete file; where links are not supported the file is copied (also atomically).
    """
    if prev.exists() and os.path.samefile(prev, target):
        return  # already linked (a failed save before this one); rename() between links is a no-op
    fd, tmp_name = tempfile.mkstemp(prefix=f".{prev.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp_name)
    try:
        os.link(target, tmp_name)
        os.replace(tmp_name, prev)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        with atomic_path(prev) as tmp:
            shutil.copyfile(target, tmp)


def remove_stale_temps(target: Path, prev: Path) -> None:
    """Temporary files of saves that were killed (never completed, never read)."""
    for name in (target.name, prev.name):
        for stale in target.parent.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
