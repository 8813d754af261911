"""Where a study lives and how to open it again: the Optuna RDB storage (SQLite tuned for several
worker processes, or a shared database such as PostgreSQL), ``load_study``, and a finished search
folder read back (``open_results``, ``best_specs_of``)."""

from __future__ import annotations

import functools
import random
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from ..errors import UsageError
from .config import STUDY_NAME
from .space import SearchSpace, space_from_dict


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own one-line messages instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _sqlite_connect(path: str) -> sqlite3.Connection:
    """SQLite for several worker processes: wait up to 60 s for a lock instead of failing; WAL
    journal with synchronous=NORMAL, safe against a killed process (only a power cut may lose
    the last commits) and about 10x fewer fsyncs than the default, which matter at ~40 commits
    per trial."""
    conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _rdb_storage(url: str, kw: dict[str, Any], attempts: int = 5) -> optuna.storages.RDBStorage:
    """RDBStorage, retried when another process is creating the schema at the same moment: on an
    empty PostgreSQL database two workers started together both run CREATE TABLE, and the loser
    fails with a unique-constraint IntegrityError; once the winner is done the tables exist."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url, **kw)
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 * (attempt + 1) + random.random() * 0.5)
    return optuna.storages.RDBStorage(url, **kw)  # the last attempt raises whatever it raises


def open_storage(url: str, *, heartbeat_s: int | None = None, grace_s: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; a killed worker's trial is re-queued with the same choices."""
    _quiet_optuna()
    kw: dict[str, Any] = {}
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        kw["engine_kwargs"] = {"creator": functools.partial(_sqlite_connect, url[len("sqlite:///") :])}
    if heartbeat_s:
        kw.update(
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    try:
        return _rdb_storage(url, kw)
    except ImportError:  # SQLAlchemy could not import the dialect's driver
        scheme = url.split(":", 1)[0]
        raise UsageError(
            f"--storage {scheme}://...{url.split('@')[-1]}: the database driver for {scheme!r} is "
            f"missing (PostgreSQL: pip install 'effv2[postgres]', i.e. psycopg 3; for psycopg2 "
            f"write postgresql+psycopg2://)"
        ) from None
    except Exception as exc:  # bad URL, server down, permissions: one line naming the storage
        where = url.split("@")[-1]  # never print a password
        raise UsageError(f"--storage: cannot open {where}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def load_study(
    storage: optuna.storages.BaseStorage | str,
    study_name: str = STUDY_NAME,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        raise UsageError(f"no study {study_name!r} in the storage (was the search started there?)") from None


def best_specs_of(
    out_dir: str | Path, k: int, *, by: str = "reward", storage: str | None = None, study_name: str = STUDY_NAME
) -> tuple[dict, ...]:
    """The ``k`` best distinct architectures of a finished search (by ``reward`` or proxy ``top1``,
    the backbone left out): the first trials of a second search with a costlier proxy."""
    from .results import records

    if by not in ("reward", "top1"):
        raise UsageError(f"--first-by {by!r} is not one of reward, top1")
    study, _ = open_results(out_dir, storage=storage, study_name=study_name)
    rows = [r for r in records(study) if r["state"] == "COMPLETE" and r["duplicate_of"] is None and not r["backbone"]]
    rows.sort(key=lambda r: -r[by])
    return tuple(r["spec"] for r in rows[:k])


def open_results(
    out_dir: str | Path, *, storage: str | None = None, study_name: str = STUDY_NAME
) -> tuple[optuna.Study, SearchSpace]:
    """The study and space of a search folder (for ``effv2 search report``)."""
    out = Path(out_dir)
    if storage is None:
        db = out / "study.db"
        if not db.is_file():
            raise UsageError(f"{out}: not a search folder (no study.db; pass --storage for a shared database)")
        storage = f"sqlite:///{db.resolve()}"
    study = load_study(open_storage(storage), study_name)
    if "space" not in study.user_attrs:
        raise UsageError(f"{out}: the study has no search space recorded")
    return study, space_from_dict(study.user_attrs["space"])
