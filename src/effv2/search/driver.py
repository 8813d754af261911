"""The search loop: an Optuna study over a :class:`SearchSpace`, persistent and parallel.

One trial = sample a spec from the space, save it as ``OUT/trials/<n>/spec.json``, measure its
training-step time S on this device, proxy-train it for its accuracy A, count its parameters P,
and score ``reward = A * (S / S_backbone)^-0.07 * (P / P_backbone)^-0.05`` (paper section 3.3).

Persistence: every trial lives in an Optuna RDB storage (``sqlite:///OUT/study.db`` unless
``storage`` names another, e.g. PostgreSQL), created with ``load_if_exists``: running the same
command again continues the study and never retrains a finished trial. A trial cut off by a kill
is marked FAIL and re-queued with the same choices: at once with the default storage when this
process owns ``OUT`` (an exclusive lock on ``OUT/.search.lock`` says no other search runs
there), otherwise by Optuna's heartbeat once the trial has missed ``grace_s`` seconds of beats.

Parallel: ``workers=N`` starts N processes on the same storage (each with its own sampler seed);
other machines join by running the same command with the same ``--storage`` URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import multiprocessing as mp
import os
import random
import re
import socket
import sqlite3
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ..errors import UsageError
from ..io.atomic import atomic_write_text
from ..models.spec import ArchSpec
from .cost import Cost, model_cost, reward
from .evaluators import TaskInfo, check_evaluator
from .predictor import encode, make_predictor
from .results import format_table, write_results
from .samplers import make_sampler
from .space import SearchSpace, genotype, space_from_dict

Evaluate = Callable[[ArchSpec, Path], dict[str, Any]]
STUDY_NAME = "effv2-search"


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """``"50"`` -> 50 trials; ``"30m"``, ``"2h"``, ``"90s"``, ``"1h30m"`` -> seconds of wall time."""
    t = str(text).strip().lower()
    if t.isdigit():
        if int(t) < 1:
            raise UsageError("--budget: expected at least 1 trial")
        return int(t), None
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", t)
    if not t or parts is None or not any(parts.groups()):
        raise UsageError(f"--budget {text!r}: expected a number of trials (50) or a time (90s, 30m, 2h, 1h30m)")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError(f"--budget {text!r}: the time must be positive")
    return None, seconds


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    out_dir: Path
    trials: int | None = None  # finished trials the study should hold (a resumed search tops up to it)
    time_s: float | None = None  # wall-clock budget of this session; trials in flight finish
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None  # None: sqlite:///OUT/study.db
    study_name: str = STUDY_NAME
    workers: int = 1
    predictor_screen: int = 0  # K > 1: rank K sampled candidates with the predictor, train the best
    predictor: str = "ridge"  # ridge ranks better than the MLP ensemble below ~60 trials (docs/readme/search.md)
    screen_after: int = 10  # finished trials before the predictor starts screening
    explore: float = 0.25  # share of trials left to the sampler while screening
    include_backbone: bool = True  # trial 0 is the backbone itself, the reference row
    # Architectures (spec dicts) to train first, after the backbone, when the study is created: e.g.
    # the best of a cheaper search (best_specs_of), a second, higher-fidelity stage over them.
    first_specs: tuple[dict, ...] = ()
    population: int = 16  # regularized evolution
    heartbeat_s: int = 30
    grace_s: int = 120
    threads: int | None = None  # torch CPU threads per worker; None: cores / workers when workers > 1
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.trials is None and self.time_s is None:
            raise UsageError("--budget is required: a number of trials (50) or a time (30m)")
        if self.workers < 1:
            raise UsageError(f"--workers: expected at least 1, got {self.workers}")
        if self.predictor_screen < 0 or self.predictor_screen == 1:
            raise UsageError(f"--predictor-screen: expected 0 (off) or at least 2 candidates, "
                             f"got {self.predictor_screen}")
        if not 0 <= self.explore <= 1:
            raise UsageError(f"explore: expected a share in [0, 1], got {self.explore}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads: expected at least 1, got {self.threads}")
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s:
            raise UsageError("heartbeat: need heartbeat_s >= 1 and grace_s > heartbeat_s")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir).resolve()}/study.db"


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
        kw["engine_kwargs"] = {"creator": functools.partial(_sqlite_connect, url[len("sqlite:///"):])}
    if heartbeat_s:
        kw.update(heartbeat_interval=heartbeat_s, grace_period=grace_s,
                  heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
    try:
        return _rdb_storage(url, kw)
    except ImportError:  # SQLAlchemy could not import the dialect's driver
        scheme = url.split(":", 1)[0]
        raise UsageError(f"--storage {scheme}://...{url.split('@')[-1]}: the database driver for {scheme!r} is "
                         f"missing (PostgreSQL: pip install 'effv2[postgres]', i.e. psycopg 3; for psycopg2 "
                         f"write postgresql+psycopg2://)") from None
    except Exception as exc:  # bad URL, server down, permissions: one line naming the storage
        where = url.split("@")[-1]  # never print a password
        raise UsageError(f"--storage: cannot open {where}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def load_study(storage: optuna.storages.BaseStorage | str, study_name: str = STUDY_NAME, *,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        raise UsageError(f"no study {study_name!r} in the storage (was the search started there?)") from None


# -- one process's share of the work ---------------------------------------------------------------
class _TrialFailed(Exception):
    """A candidate that could not be evaluated (out of memory, diverged...): recorded, search goes on."""


class _Worker:
    def __init__(self, space: SearchSpace, evaluate: Evaluate, config: SearchConfig, *, index: int,
                 step_time: Callable[[ArchSpec], float] | None, task: TaskInfo) -> None:
        self.space, self.evaluate, self.config, self.index = space, evaluate, config, index
        self.step_time, self.task = step_time, task
        self.out = Path(config.out_dir)
        threads = config.threads or (max(1, (os.cpu_count() or 1) // config.workers) if config.workers > 1 else None)
        if threads:  # workers sharing cores must not each start one thread per core (oversubscription)
            torch.set_num_threads(threads)
        storage = open_storage(config.storage_url, heartbeat_s=config.heartbeat_s, grace_s=config.grace_s)
        # The sampler seed depends on the study's size too: a resumed search must not replay the
        # proposals of the session before it (they would all be duplicates).
        n_before = len(load_study(storage, config.study_name).get_trials(deepcopy=False))
        sampler = make_sampler(config.sampler, seed=(config.seed * 1009 + index) * 100003 + n_before,
                               population=config.population)
        self.study = load_study(storage, config.study_name, sampler=sampler)
        self.rng = random.Random(config.seed * 7919 + index)
        self.base_cost = self.cost(space.base)
        self.base_step_s: float | None = None
        self.consecutive_failures = 0

    def cost(self, spec: ArchSpec) -> Cost:
        t = self.task
        return model_cost(spec, image_size=t.image_size, in_chans=t.in_chans, num_classes=t.num_classes)

    def log(self, msg: str) -> None:
        if not self.config.quiet:
            prefix = f"[worker {self.index}] " if self.config.workers > 1 else ""
            print(prefix + msg, flush=True)

    # -- the objective ------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float:
        spec = self.space.sample(trial)
        trial_dir = self.out / "trials" / str(trial.number)
        trial_dir.mkdir(parents=True, exist_ok=True)
        t = self.task
        atomic_write_text(trial_dir / "spec.json", json.dumps(
            self.space.card(spec, train_size=t.image_size, eval_size=t.image_size), indent=2) + "\n")
        cost = self.cost(spec)
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("genotype", genotype(spec))
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("macs", cost.macs)
        trial.set_user_attr("worker", self.index)
        trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")  # who ran it, across machines
        if spec == self.space.base:
            trial.set_user_attr("backbone", True)

        twin = self._finished_twin(trial)
        if twin is not None:  # same choices already trained: reuse, don't pay twice
            for k in ("top1", "top5", "step_s", "base_step_s", "train_s"):
                if k in twin.user_attrs:
                    trial.set_user_attr(k, twin.user_attrs[k])
            trial.set_user_attr("duplicate_of", twin.number)
            self.log(f"trial {trial.number}: same choices as trial {twin.number}, reusing its result")
            return float(twin.value)

        if trial.user_attrs.get("interrupted"):  # a re-queued copy of an interrupted trial
            trial.set_user_attr("interrupted", False)
        try:
            step_s = self._step_s(spec)
            t0 = time.time()
            metrics = dict(self.evaluate(spec, trial_dir))
            metrics.setdefault("train_s", time.time() - t0)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it FAIL; the next run re-queues it
            raise
        except UsageError:
            raise  # a mistake in the command line or recipe: stop, don't burn every trial on it
        except Exception as exc:  # noqa: BLE001 - one bad candidate must not end a long search
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
            self.consecutive_failures += 1
            self.log(f"trial {trial.number}: failed: {type(exc).__name__}: {exc}".splitlines()[0])
            if self.consecutive_failures >= 5:
                last = f"{type(exc).__name__}: {exc}".splitlines()[0]
                raise UsageError(f"5 trials in a row failed; last error: {last}") from exc
            raise _TrialFailed(str(exc)) from exc
        self.consecutive_failures = 0
        if "top1" not in metrics:
            raise UsageError("evaluate: the metrics dict has no 'top1'")
        step_s = float(metrics.pop("step_s", step_s))
        value = reward(float(metrics["top1"]), step_s=step_s, params=cost.params,
                       base_step_s=self.base_step_s or step_s, base_params=self.base_cost.params)
        for k, v in metrics.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                trial.set_user_attr(k, v)
        trial.set_user_attr("step_s", step_s)
        trial.set_user_attr("base_step_s", self.base_step_s)
        trial.set_user_attr("base_params", self.base_cost.params)
        system_attrs = self.study._storage.get_trial_system_attrs(trial._trial_id)
        if "failed_trial" in system_attrs:
            trial.set_user_attr("retry_of", system_attrs["failed_trial"])
        atomic_write_text(trial_dir / "metrics.json", json.dumps(
            {**{k: v for k, v in trial.user_attrs.items() if k != "spec"}, "reward": value}, indent=2) + "\n")
        return value

    def _step_s(self, spec: ArchSpec) -> float:
        """S of the paper: measured, normalised later by the backbone's S measured by this worker on
        this device (so several machines' workers each compare against their own backbone time)."""
        if self.step_time is None:
            return 1.0  # no timing: S drops out of the reward (S / S_backbone = 1)
        if self.base_step_s is None:
            self.base_step_s = float(self.step_time(self.space.base))
        return float(self.step_time(spec)) if spec != self.space.base else self.base_step_s

    def _finished_twin(self, trial: optuna.Trial) -> FrozenTrial | None:
        params = trial.params
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == params and "duplicate_of" not in t.user_attrs:
                return t
        return None

    # -- callbacks ----------------------------------------------------------------------------------
    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        if trial.state == TrialState.COMPLETE:
            a = trial.user_attrs
            budget = f"/{self.config.trials}" if self.config.trials else ""
            self.log(f"trial {trial.number} ({done}{budget} done): {a['genotype']}  top1 {a['top1']:.2f}  "
                     f"step {1e3 * a['step_s']:.2f} ms  {a['params'] / 1e6:.3f}M  reward {trial.value:.4f}"
                     + (f"  (predicted top1 {a['predicted_top1']:.2f})" if "predicted_top1" in a else ""))
        with contextlib.suppress(OSError):
            write_results(study, self.space, self.out, plot=False)
        if self.config.trials is not None:
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if done + running >= self.config.trials:
                study.stop()
                return
        if self.config.predictor_screen and trial.state == TrialState.COMPLETE:
            self.screen(study)

    def screen(self, study: optuna.Study) -> None:
        """Queue the next trial: the best of K random candidates by predicted reward (UCB on the
        ensemble's spread), except for an ``explore`` share of trials left to the sampler."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "duplicate_of" not in t.user_attrs and "spec" in t.user_attrs]
        if len(done) < self.config.screen_after or self.rng.random() < self.config.explore:
            return
        import numpy as np

        specs = [ArchSpec.from_dict(t.user_attrs["spec"]) for t in done]
        x = np.stack([encode(s, Cost(params=t.user_attrs["params"], macs=t.user_attrs["macs"]))
                      for s, t in zip(specs, done)])
        acc = make_predictor(self.config.predictor, seed=self.rng.randrange(1 << 30)).fit(
            x, np.asarray([t.user_attrs["top1"] for t in done]))
        # log step time is close to linear in the encoding (MACs, depth, block types): ridge is enough
        steps = make_predictor("ridge").fit(x, np.log(np.asarray([t.user_attrs["step_s"] for t in done])))
        base_step = float(np.median([t.user_attrs.get("base_step_s") or t.user_attrs["step_s"] for t in done]))
        tried = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)}
        cands = []
        for _ in range(self.config.predictor_screen * 4):
            params = self.space.sample_params(self.rng)
            if tuple(sorted(params.items())) not in tried:
                cands.append(params)
            if len(cands) == self.config.predictor_screen:
                break
        if not cands:
            return
        cspecs = [self.space.from_params(p) for p in cands]
        costs = [self.cost(s) for s in cspecs]
        cx = np.stack([encode(s, c) for s, c in zip(cspecs, costs)])
        mean, std = acc.predict(cx)
        log_step, _ = steps.predict(cx)
        scores = [reward(max(m + s, 1e-3), step_s=float(np.exp(ls)), params=c.params, base_step_s=base_step,
                         base_params=self.base_cost.params) for m, s, ls, c in zip(mean, std, log_step, costs)]
        best = int(np.argmax(scores))
        study.enqueue_trial(cands[best], user_attrs={"screened": len(cands), "predicted_top1": float(mean[best])})

    def run(self, deadline: float | None) -> None:
        # Several workers on one SQLite file can both claim the same queued trial (Optuna's SQLite
        # storage is not fully safe for concurrent writers); the second tell then finds it finished.
        # That trial's result is already stored, so the worker goes on instead of failing.
        for _ in range(20):
            if self.config.trials is not None:
                trials = self.study.get_trials(deepcopy=False)
                done = sum(t.state == TrialState.COMPLETE for t in trials)
                running = sum(t.state == TrialState.RUNNING for t in trials)
                if done + running >= self.config.trials:
                    self.log(f"the study already holds {done} finished trials and {running} running "
                             f"(budget {self.config.trials})")
                    return
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            if timeout == 0.0:
                return
            try:
                self.study.optimize(self.objective, timeout=timeout, callbacks=[self.after_trial],
                                    catch=(_TrialFailed,))
                return
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                if "Cannot tell" not in str(exc) and not isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
                    raise
                self.log(f"a trial was finished by another worker ({exc}); continuing")


def _worker_main(space: SearchSpace, evaluate: Evaluate, config: SearchConfig, index: int,
                 step_time: Callable[[ArchSpec], float] | None, task: TaskInfo, deadline: float | None) -> None:
    """Entry point of a spawned worker process (module level so it can be pickled)."""
    try:
        _Worker(space, evaluate, config, index=index, step_time=step_time, task=task).run(deadline)
    except UsageError as exc:
        print(f"effv2 search [worker {index}]: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


# -- the whole search ------------------------------------------------------------------------------
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


def _prepare_study(space: SearchSpace, config: SearchConfig, evaluate: Evaluate,
                   task: TaskInfo) -> tuple[optuna.Study, bool]:
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
        study.set_user_attr("reward", {"w": -0.07, "v": -0.05, "A": "top1 / 100",
                                       "S": "step time / backbone step time (same worker, same device)",
                                       "P": "params / backbone params"})
    elif stored != space.to_dict():
        raise UsageError(f"{config.out_dir}: the study there searches another space ({stored.get('name')!r}); "
                         f"use a new --out or the same --space")
    else:
        _check_same_proxy(study.user_attrs.get("evaluator") or {}, evaluate, config)
    return study, created


# What makes two proxies' accuracies comparable; the device, timing and per-trial cap may differ
# between resumes and machines (step times are normalised per worker).
PROXY_KEYS = ("kind", "data", "backbone", "epochs", "equal_time_s", "image_size", "batch_size", "recipe", "overrides",
              "train_subset", "val_subset")


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
            raise UsageError(f"{config.out_dir}: the study there was scored with proxy {k}={stored.get(k)!r}, "
                             f"this command uses {now.get(k)!r}; use the same proxy options or a new --out")


def run_search(space: SearchSpace, evaluate: Evaluate, config: SearchConfig, *,
               step_time: Callable[[ArchSpec], float] | None = None, task: TaskInfo | None = None) -> dict[str, Any]:
    """Run (or resume) a search; returns ``{"best": row, "complete": n, "failed": n, "out_dir": ...}``.

    ``evaluate(spec, trial_dir) -> {"top1": ..., ...}``; ``step_time(spec) -> seconds`` defaults to
    ``evaluate.step_time`` when it has one; ``task`` (channels, classes, proxy size and batch) to
    ``evaluate.task``. With ``workers > 1`` both must be picklable (module-level functions or
    dataclass instances).
    """
    check_evaluator(evaluate)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step_time = step_time or getattr(evaluate, "step_time", None)
    task = task or getattr(evaluate, "task", None) or TaskInfo(image_size=space.train_size)
    study, created = _prepare_study(space, config, evaluate, task)
    deadline = None if config.time_s is None else time.time() + config.time_s
    with _own_dir(out) as owned:
        if owned and config.storage is None:  # OUT/study.db is ours alone: RUNNING means killed
            requeued = _requeue_interrupted(study)
            if requeued and not config.quiet:
                print(f"re-queued {len(requeued)} trial(s) interrupted by a previous run: {requeued}", flush=True)
        existing = study.get_trials(deepcopy=False)
        if config.include_backbone and created and space.contains(space.base):
            study.enqueue_trial(space.to_params(space.base), user_attrs={"backbone": True})
        if created:
            for d in config.first_specs:
                spec = ArchSpec.from_dict(d)
                if spec != space.base and space.contains(spec):
                    study.enqueue_trial(space.to_params(spec), user_attrs={"first": True})
        if existing and not created and not config.quiet:
            done = sum(t.state == TrialState.COMPLETE for t in existing)
            print(f"resuming: the study holds {done} finished trial(s) of {len(existing)}", flush=True)
        if config.workers == 1:
            _Worker(space, evaluate, config, index=0, step_time=step_time, task=task).run(deadline)
        else:
            ctx = mp.get_context("spawn")  # fresh interpreters: safe with torch threads and CUDA
            procs = [ctx.Process(target=_worker_main, args=(space, evaluate, config, i, step_time, task, deadline),
                                 name=f"effv2-search-{i}") for i in range(config.workers)]
            for p in procs:
                p.start()
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                for p in procs:
                    p.join(timeout=10)
                raise
            bad = [p.exitcode for p in procs if p.exitcode]
            if bad:
                raise UsageError(f"{len(bad)} of {config.workers} workers failed (exit codes {bad}); "
                                 f"see their errors above")
    rows = write_results(study, space, out, plot=True)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not config.quiet and done:
        print(format_table(rows))
        print(f"wrote {out / 'trials.csv'}, {out / 'pareto.png'}, {out / 'best_spec.json'}")
    best = max(done, key=lambda r: r["reward"]) if done else None
    return {"best": best, "complete": len(done), "failed": sum(r["state"] == "FAIL" for r in rows),
            "out_dir": str(out), "storage": config.storage_url}


def best_specs_of(out_dir: str | Path, k: int, *, by: str = "reward", storage: str | None = None,
                  study_name: str = STUDY_NAME) -> tuple[dict, ...]:
    """The ``k`` best distinct architectures of a finished search (by ``reward`` or proxy ``top1``,
    the backbone left out): the first trials of a second search with a costlier proxy."""
    from .results import records

    if by not in ("reward", "top1"):
        raise UsageError(f"--first-by {by!r} is not one of reward, top1")
    study, _ = open_results(out_dir, storage=storage, study_name=study_name)
    rows = [r for r in records(study) if r["state"] == "COMPLETE" and r["duplicate_of"] is None and not r["backbone"]]
    rows.sort(key=lambda r: -r[by])
    return tuple(r["spec"] for r in rows[:k])


def open_results(out_dir: str | Path, *, storage: str | None = None,
                 study_name: str = STUDY_NAME) -> tuple[optuna.Study, SearchSpace]:
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
