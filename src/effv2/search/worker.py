"""One worker process's share of the search: an Optuna optimize loop whose objective samples a
spec, times it, proxy-trains it and scores its reward; after each trial it refreshes the results
files and, with ``predictor_screen``, queues the next candidate by predicted reward."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ..errors import UsageError
from ..io.atomic import atomic_write_text
from ..models.spec import ArchSpec
from ..training.run_folder import RunFolderBusy
from .config import Evaluate, SearchConfig
from .cost import Cost, model_cost, reward
from .evaluators import TaskInfo
from .predictor import encode, make_predictor
from .results import write_results
from .samplers import make_sampler
from .space import SearchSpace, genotype
from .storage import load_study, open_storage


# -- one process's share of the work ---------------------------------------------------------------
class _TrialFailed(Exception):
    """A candidate that could not be evaluated (out of memory, diverged...): recorded, search goes on."""


class TrialTimeout(Exception):
    """The trial ran past SearchConfig.trial_timeout_s."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise TrialTimeout in this (main) thread after ``seconds`` of wall time (SIGALRM; POSIX)."""
    if seconds is None or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum, frame):
        raise TrialTimeout(f"the trial ran past its limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _die_with_parent() -> None:
    """A worker process gets SIGKILL when the search that started it dies (Linux), so a killed search
    leaves no orphan workers training on."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


class _Worker:
    def __init__(
        self,
        space: SearchSpace,
        evaluate: Evaluate,
        config: SearchConfig,
        *,
        index: int,
        step_time: Callable[[ArchSpec], float] | None,
        task: TaskInfo,
    ) -> None:
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
        sampler = make_sampler(
            config.sampler, seed=(config.seed * 1009 + index) * 100003 + n_before, population=config.population
        )
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
        atomic_write_text(
            trial_dir / "spec.json",
            json.dumps(self.space.card(spec, train_size=t.image_size, eval_size=t.image_size), indent=2) + "\n",
        )
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
            with _time_limit(self.config.trial_timeout_s):
                step_s = self._step_s(spec)
                t0 = time.time()
                metrics = dict(self.evaluate(spec, trial_dir))
                metrics.setdefault("train_s", time.time() - t0)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it FAIL; the next run re-queues it
            raise
        except RunFolderBusy as exc:  # another worker claimed the same trial: its run goes on, this one yields
            trial.set_user_attr("error", str(exc)[:500])
            raise _TrialFailed(str(exc)) from exc
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
        value = reward(
            float(metrics["top1"]),
            step_s=step_s,
            params=cost.params,
            base_step_s=self.base_step_s or step_s,
            base_params=self.base_cost.params,
        )
        for k, v in metrics.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                trial.set_user_attr(k, v)
        trial.set_user_attr("step_s", step_s)
        trial.set_user_attr("base_step_s", self.base_step_s)
        trial.set_user_attr("base_params", self.base_cost.params)
        system_attrs = self.study._storage.get_trial_system_attrs(trial._trial_id)
        if "failed_trial" in system_attrs:
            trial.set_user_attr("retry_of", system_attrs["failed_trial"])
        atomic_write_text(
            trial_dir / "metrics.json",
            json.dumps({**{k: v for k, v in trial.user_attrs.items() if k != "spec"}, "reward": value}, indent=2)
            + "\n",
        )
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
            self.log(
                f"trial {trial.number} ({done}{budget} done): {a['genotype']}  top1 {a['top1']:.2f}  "
                f"step {1e3 * a['step_s']:.2f} ms  {a['params'] / 1e6:.3f}M  reward {trial.value:.4f}"
                + (f"  (predicted top1 {a['predicted_top1']:.2f})" if "predicted_top1" in a else "")
            )
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
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs and "spec" in t.user_attrs
        ]
        if len(done) < self.config.screen_after or self.rng.random() < self.config.explore:
            return
        import numpy as np

        specs = [ArchSpec.from_dict(t.user_attrs["spec"]) for t in done]
        x = np.stack(
            [encode(s, Cost(params=t.user_attrs["params"], macs=t.user_attrs["macs"])) for s, t in zip(specs, done)]
        )
        acc = make_predictor(self.config.predictor, seed=self.rng.randrange(1 << 30)).fit(
            x, np.asarray([t.user_attrs["top1"] for t in done])
        )
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
        scores = [
            reward(
                max(m + s, 1e-3),
                step_s=float(np.exp(ls)),
                params=c.params,
                base_step_s=base_step,
                base_params=self.base_cost.params,
            )
            for m, s, ls, c in zip(mean, std, log_step, costs)
        ]
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
                    self.log(
                        f"the study already holds {done} finished trials and {running} running "
                        f"(budget {self.config.trials})"
                    )
                    return
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            if timeout == 0.0:
                return
            try:
                self.study.optimize(
                    self.objective, timeout=timeout, callbacks=[self.after_trial], catch=(_TrialFailed,)
                )
                return
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                if "Cannot tell" not in str(exc) and not isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
                    raise
                self.log(f"a trial was finished by another worker ({exc}); continuing")


def _worker_main(
    space: SearchSpace,
    evaluate: Evaluate,
    config: SearchConfig,
    index: int,
    step_time: Callable[[ArchSpec], float] | None,
    task: TaskInfo,
    deadline: float | None,
) -> None:
    """Entry point of a spawned worker process (module level so it can be pickled)."""
    _die_with_parent()
    try:
        _Worker(space, evaluate, config, index=index, step_time=step_time, task=task).run(deadline)
    except UsageError as exc:
        print(f"effv2 search [worker {index}]: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
