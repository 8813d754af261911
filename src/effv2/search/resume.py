"""Creating or resuming a study before the workers start: one creator among several machines,
the stored space and proxy checked against this command's, the output folder's lock, and the
trials a killed or interrupted run left unfinished queued again."""

from __future__ import annotations

import contextlib
import fcntl
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import UsageError
from .config import Evaluate, SearchConfig
from .evaluators import TaskInfo
from .space import SearchSpace
from .storage import open_storage


@contextlib.contextmanager
def _own_dir(out: Path):
    """Yield True when no other search process holds ``out`` (flock; released when we exit or die)."""
    fh = open(out / ".search.lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            owned = True
        except OSError:
            owned = False
        yield owned
    finally:
        fh.close()


def _requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue again, with the same choices, the trials a previous run left unfinished: RUNNING ones
    (the process was killed; they are marked FAIL first) and FAIL ones stopped by Ctrl-C."""
    storage = study._storage
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    requeued = []
    for t in trials:
        if t.number in retried:
            continue
        if t.state == TrialState.RUNNING:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        retry(study, storage.get_trial(t._trial_id))
        requeued.append(t.number)
    return requeued


def _prepare_study(
    space: SearchSpace, config: SearchConfig, evaluate: Evaluate, task: TaskInfo
) -> tuple[optuna.Study, bool]:
    """Create or load the study; the bool says whether this process created it. Creation is decided
    by the database (a unique study name), so of several machines starting together exactly one
    creates the study and enqueues the backbone."""
    storage = open_storage(config.storage_url)
    try:
        study = optuna.create_study(storage=storage, study_name=config.study_name, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=config.study_name, storage=storage)
        created = False
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space.to_dict())
        study.set_user_attr("task", asdict(task))
        describe = getattr(evaluate, "describe", None)
        study.set_user_attr("evaluator", describe() if callable(describe) else {"kind": type(evaluate).__name__})
        study.set_user_attr(
            "reward",
            {
                "w": -0.07,
                "v": -0.05,
                "A": "top1 / 100",
                "S": "step time / backbone step time (same worker, same device)",
                "P": "params / backbone params",
            },
        )
    elif stored != space.to_dict():
        raise UsageError(
            f"{config.out_dir}: the study there searches another space ({stored.get('name')!r}); "
            f"use a new --out or the same --space"
        )
    else:
        _check_same_proxy(study.user_attrs.get("evaluator") or {}, evaluate, config)
    return study, created


# What makes two proxies' accuracies comparable; the device, timing and per-trial cap may differ
# between resumes and machines (step times are normalised per worker).
PROXY_KEYS = (
    "kind",
    "data",
    "backbone",
    "epochs",
    "equal_time_s",
    "image_size",
    "batch_size",
    "recipe",
    "overrides",
    "train_subset",
    "val_subset",
)


def _check_same_proxy(stored: dict[str, Any], evaluate: Evaluate, config: SearchConfig) -> None:
    """A resumed or joined study must be scored by the same proxy, or its trials would not compare."""
    describe = getattr(evaluate, "describe", None)
    if not callable(describe):  # a bare evaluate function says nothing to compare
        return
    now = describe()
    for k in PROXY_KEYS:
        a, b = stored.get(k), now.get(k)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b or [])
        if a != b and k in now:
            raise UsageError(
                f"{config.out_dir}: the study there was scored with proxy {k}={stored.get(k)!r}, "
                f"this command uses {now.get(k)!r}; use the same proxy options or a new --out"
            )
