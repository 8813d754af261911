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

import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from ..errors import UsageError
from ..models.spec import ArchSpec
from .config import STUDY_NAME, Evaluate, SearchConfig, parse_budget
from .evaluators import TaskInfo, check_evaluator
from .results import format_table, write_results
from .resume import PROXY_KEYS, _own_dir, _prepare_study, _requeue_interrupted
from .space import SearchSpace
from .storage import best_specs_of, load_study, open_results, open_storage
from .worker import _Worker, _worker_main

# The search is split by job: .config (settings, budget), .storage (opening a study, reading a
# folder back), .resume (creating or resuming the study), .worker (one process's trials); the
# names above stay importable from here.
__all__ = [
    "PROXY_KEYS",
    "STUDY_NAME",
    "Evaluate",
    "SearchConfig",
    "best_specs_of",
    "load_study",
    "open_results",
    "open_storage",
    "parse_budget",
    "run_search",
]


# -- the whole search ------------------------------------------------------------------------------
def run_search(
    space: SearchSpace,
    evaluate: Evaluate,
    config: SearchConfig,
    *,
    step_time: Callable[[ArchSpec], float] | None = None,
    task: TaskInfo | None = None,
) -> dict[str, Any]:
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
            procs = [
                ctx.Process(
                    target=_worker_main,
                    args=(space, evaluate, config, i, step_time, task, deadline),
                    name=f"effv2-search-{i}",
                )
                for i in range(config.workers)
            ]
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
                raise UsageError(
                    f"{len(bad)} of {config.workers} workers failed (exit codes {bad}); see their errors above"
                )
    rows = write_results(study, space, out, plot=True)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not config.quiet and done:
        print(format_table(rows))
        print(f"wrote {out / 'trials.csv'}, {out / 'pareto.png'}, {out / 'best_spec.json'}")
    best = max(done, key=lambda r: r["reward"]) if done else None
    return {
        "best": best,
        "complete": len(done),
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "out_dir": str(out),
        "storage": config.storage_url,
    }
