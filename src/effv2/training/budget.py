"""Training to a time budget: measure the real step time at each progressive stage's size, then plan
the optimizer steps so the whole schedule (warmup, lr decay, every stage, its regularization, EMA)
fills the budget.

    plan = plan_budget(recipe, model_name, bundle, runtime, info)     # measures, a few seconds
    recipe = replace(recipe, epochs=plan["epochs"], max_steps=plan["steps"])  # recorded in config.json

The plan is step-granular: the last epoch may be partial (``max_steps``), and the lr schedule
decays to its floor exactly at the planned last step, so a budget is neither overrun nor left
unused by up to an epoch's worth of time (an epoch-granular plan left ~30% of a 10-minute budget
unused on a 2-core CPU). Stages stay whole epochs (schedule.stage_bounds over ``epochs``); the
partial epoch belongs to the last stage.

What is timed is the trainer's own TrainStep on real batches of the data pipeline (RandAugment,
mixup, loading included) at each stage's image size, warm-up steps excluded, on a throwaway copy
of the parts (the run itself is built and seeded afterwards, so planning changes none of its
draws). Evaluation counts against the budget: one evaluation's time (both evaluations of an epoch
while a stage trains below the eval size: trainer.py's ``top1_stage``) is measured on a few batches
and scaled to the validation set. When the plan falls back to the fixed-size schedule
(``progressive.min_epochs``) with another regularization than the last stage's, that one stage is timed
too, as it will train, and planned from. Once made, the plan is data: ``--resume`` uses the recorded
epochs and steps, so a resumed run follows the same schedule and stays bitwise exact. The budget is
also the hard stop (time_budget_s), in case the machine runs slower than when it was measured.

The measuring counts against the budget: the plan is made for the budget less the time measuring took,
and the hard stop is moved by as much. That matters when the recipe says ``compile: "auto"``
(:func:`compile_candidate`): the planner then times the largest stage's step eager and compiled (static
shapes, a graph per size: 20-30 s each on a 2-core CPU with an empty inductor cache, about 2 s with a
warm one), in alternating blocks so that a machine that drifts while it is measured favours neither, and
for more blocks when the two are too close to call (:func:`compile_unsure`).
Unless the compiled step is ``AUTO_COMPILE_MIN_SPEEDUP`` faster there, nothing else is compiled; else
every other stage is timed both ways too, and the compiled step is kept when its plan has at least
``AUTO_COMPILE_MIN_GAIN`` times the eager plan's steps (the compile time is spent by then either way).
The run itself then starts with every training graph compiled: a second model of the same architecture
reuses them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..data.imagesets import ImageSet
from ..data.order import steps_per_epoch as count_steps
from ..data.streams import StepContext, train_steps
from ..errors import UsageError
from ..runtime import Runtime, synchronize
from ..runtime.distributed import gather_objects
from ..runtime.replicas import recorded_replicas
from .evaluate import evaluate
from .lr import warmup_steps
from .run_folder import fingerprint_changes, read_config
from .schedule import all_stages, stage_bounds

# plan for 90% of the budget: on a shared 2-core VM the same step measured 154-201 ms minutes apart
# (benchmarks/RESULTS.md); a plan that overruns is cut by the hard stop before its lr has decayed
MARGIN = 0.10

# compile: "auto" (see compile_candidate). On the 2-core Zen 4 EPYC (avx512_bf16) the demo's model trains
# 1.24x (24 px) and 1.39x (28 px) faster compiled (static shapes) than eager bf16 + channels_last, timed
# interleaved, and an empty cache compiles its two training sizes in about 50 s; a 2-minute budget spends
# too much of itself compiling to gain
# (benchmarks/RESULTS.md, "torch.compile for a budgeted bf16 run"). Without native bf16 (fp32) the same
# model measured 1.04x compiled on the AVX2 stand-in: not tried there.
AUTO_COMPILE_MIN_BUDGET_S = 300.0
# the largest stage's compiled step must be this much faster for the other sizes to be compiled too, and
# the compiled plan must have this many times the eager plan's steps (the compile time is spent by then:
# anything above the noise of interleaved timing pays)
AUTO_COMPILE_MIN_SPEEDUP = 1.10
AUTO_COMPILE_MIN_GAIN = 1.05
# a timing within this factor of AUTO_COMPILE_MIN_SPEEDUP either way is timed for more rounds before the
# decision (compile_unsure): 1.10 / 1.15 to 1.10 * 1.15, i.e. 0.96x to 1.27x
AUTO_COMPILE_UNSURE = 1.15
AUTO_COMPILE_MAX_ROUNDS = 9  # rounds of interleaved blocks at most, for a close call at the largest size


def compile_candidate(setting: Any, *, device_type: str, amp: str, budget_s: float | None) -> tuple[bool, str]:
    """Whether a run tries torch.compile, and why (pure). ``setting`` is the recipe's ``compile``: a bool
    is obeyed; "auto" tries it only for a time budget of at least ``AUTO_COMPILE_MIN_BUDGET_S`` on a CPU
    whose fast default is bf16 (native bf16: eager bf16 leaves the elementwise ops unfused, which is what
    compiling removes). The planner then keeps it only if it measures faster (:func:`plan_budget`)."""
    if setting != "auto":
        return bool(setting), "asked" if setting else "off (recipe)"
    if budget_s is None:
        return False, "auto: off without a time budget"
    if budget_s < AUTO_COMPILE_MIN_BUDGET_S:
        return False, f"auto: off, a {budget_s:.0f}s budget is under {AUTO_COMPILE_MIN_BUDGET_S:.0f}s"
    if device_type != "cpu" or amp != "bf16":
        return False, f"auto: off on {device_type} with amp {amp} (measured to pay only for bf16 on CPU)"
    return True, "auto: a CPU with native bf16 and a budget long enough to repay compiling"


def planned_seconds(
    steps: int,
    *,
    stage_step_s: list[float],
    steps_per_epoch: int,
    eval_s: float | list[float],
    eval_every: int = 1,
) -> float:
    """Wall time of a run of ``steps`` optimizer steps (pure). The run has ceil(steps / steps_per_epoch)
    epochs split into stages as the trainer splits them; each stage's steps cost its step time; one
    evaluation every ``eval_every`` epochs and after the last, each costing ``eval_s`` (or
    ``eval_s[stage]``: a stage below the eval size is evaluated twice)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    epochs = -(-steps // steps_per_epoch)
    bounds = stage_bounds(epochs, len(stage_step_s))
    per_stage = eval_s if isinstance(eval_s, list) else [eval_s] * len(stage_step_s)
    train, evals = 0.0, 0.0
    for (a, b), step_s, ev_s in zip(bounds, stage_step_s, per_stage):
        n = max(0, min(b * steps_per_epoch, steps) - a * steps_per_epoch)
        train += n * step_s
        evals += ev_s * sum(1 for e in range(a + 1, b + 1) if e % eval_every == 0 or e == epochs)
    return train + evals


def plan_steps(
    budget_s: float,
    *,
    stage_step_s: list[float],
    steps_per_epoch: int,
    eval_s: float | list[float],
    eval_every: int = 1,
    min_steps: int = 1,
    max_steps: int = 10_000_000,
    margin: float = MARGIN,
) -> int:
    """The most optimizer steps whose planned time fits ``(1 - margin) * budget_s`` (at least
    ``min_steps``). Planned time is not monotone in the steps (one more epoch moves whole epochs to
    the cheaper early stages), but within one epoch count it grows with every step: so each epoch
    count up to where even the cheapest stage could not fit is searched by bisection."""
    target = (1 - margin) * budget_s

    def fits(n: int) -> bool:
        t = planned_seconds(
            n, stage_step_s=stage_step_s, steps_per_epoch=steps_per_epoch, eval_s=eval_s, eval_every=eval_every
        )
        return t <= target

    fastest = max(min(stage_step_s), 1e-9)
    upper = min(max_steps, int(target / fastest) + steps_per_epoch)
    best = min_steps
    for epochs in range(1, -(-upper // steps_per_epoch) + 1):
        lo, hi = max(min_steps, (epochs - 1) * steps_per_epoch + 1), min(upper, epochs * steps_per_epoch)
        if lo > hi or not fits(lo):
            continue
        while lo < hi:  # the largest n in [lo, hi] that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        best = max(best, lo)
    return best


def _same(flag):
    return flag


def _time_steps(
    step, batches, *, warm: int, timed: int, device, max_warm: int = 30, max_warm_s: float = 5.0, agree=_same
) -> float:
    """Median seconds per step after a warm-up that lasts until two consecutive steps agree within 25%
    (first steps at a new shape pay for kernel selection and allocation), at least ``warm`` steps.
    ``agree`` turns this process's "warm up more" into the one every process follows (under DDP a step
    is collective: each process must take as many; :func:`plan_budget` passes rank 0's decision)."""

    def one(i: int) -> float:
        t0 = time.perf_counter()
        step(next(batches), i)
        synchronize(device)
        return time.perf_counter() - t0

    t_warm, prev, i = time.perf_counter(), None, 0
    more = max_warm > 0
    while more:
        t = one(i)
        i += 1
        settled = i >= warm and prev is not None and abs(t - prev) <= 0.25 * prev
        prev = t
        more = agree(not settled and i < max_warm and time.perf_counter() - t_warm < max_warm_s)
    times = sorted(one(i + k) for k in range(timed))
    return times[len(times) // 2]


def fixed_or_progressive(progressive_epochs: float, min_epochs: float) -> dict[str, Any]:
    """Whether a budgeted run keeps progressive learning (pure): only when its plan fits at least
    ``progressive.min_epochs`` epochs. Below, every step trains at the last stage's size
    (``progressive.enabled=false``; with which regularization: :func:`fallback_sets`). Why (the demo's
    model and recipe, validation top-1 at equal wall time, benchmarks/RESULTS.md): the fixed 28 px
    schedule led by 0.3-0.8 points wherever the progressive plan had under 20 epochs (Zen 4 2 min, 5
    epochs: +0.77; Zen 5 2 and 5 min, 6 and 12 epochs: +0.43, +0.37; Zen 3 fp32 10 min, 15 and 20
    epochs: +0.31, +0.67), and the two were within a seed's noise from 18 to 116 epochs. The demo recipe
    says 24: a plan's epochs drift by a third with the VM's speed (Zen 3: 14.6 and 19.5 epochs planned
    for the same 10 minutes)."""
    used = progressive_epochs >= min_epochs
    return {"used": used, "progressive_epochs": round(progressive_epochs, 2), "min_epochs": min_epochs}


def fallback_sets(stages: list[Any], regularization: str) -> dict[str, Any]:
    """The recipe keys that make the fixed-size fallback of ``progressive.min_epochs`` (pure): one stage
    at the last stage's size (``progressive.enabled=false``), with the last stage's regularization
    (``"last"``) or the first stage's (``"first"``: its RandAugment magnitude, Mixup and CutMix alphas,
    dropout and drop_path become the max values, which the one stage trains with). ``stages`` are the
    progressive schedule's :class:`StageParams`, first to last. Why "first" for the demo: on the 2-core
    Zen 3 at 10 minutes (about 12 epochs) the fallback with stage 0's regularization read higher on
    validation than with the last stage's (benchmarks/RESULTS.md, "The fixed-size fallback's
    regularization")."""
    sets: dict[str, Any] = {"progressive.enabled": False}
    if regularization == "first":
        s0 = stages[0]
        sets |= {
            "progressive.randaug_max": s0.randaug_magnitude,
            "progressive.mixup_max": s0.mixup_alpha,
            "progressive.cutmix_max": s0.cutmix_alpha,
            "progressive.dropout_max": s0.dropout,
            "progressive.drop_path_max": s0.drop_path,
        }
    return sets


def fallback_progressive(p: Any, sets: dict[str, Any]) -> Any:
    """``p`` (a ProgressiveConfig) with :func:`fallback_sets`' keys applied (pure)."""
    return replace(p, **{k.removeprefix("progressive."): v for k, v in sets.items()})


# how the printed plan line names each key fallback_sets may set
_FALLBACK_NAMES = {
    "progressive.randaug_max": "RandAugment",
    "progressive.mixup_max": "Mixup",
    "progressive.cutmix_max": "CutMix",
    "progressive.dropout_max": "dropout",
    "progressive.drop_path_max": "drop_path",
}


def fallback_words(sets: dict[str, Any], regularization: str) -> str:
    """What the fallback trains with, for the line a budgeted run prints (pure)."""
    if regularization != "first":
        return "with the last stage's regularization"
    shown = [f"{_FALLBACK_NAMES[k]} {v:g}" for k, v in sets.items() if k in _FALLBACK_NAMES]
    return "with the first stage's regularization (" + ", ".join(shown) + ")"


def compile_unsure(eager_s: float, compiled_s: float) -> bool:
    """Whether an interleaved eager/compiled timing is too close to ``AUTO_COMPILE_MIN_SPEEDUP`` to decide
    on (pure): within ``AUTO_COMPILE_UNSURE`` of it either way. The shared 2-core VM's step time drifts by
    up to 25% within minutes, and a cold first run once read 1.04x where later runs read 1.27-1.39x."""
    ratio = eager_s / compiled_s
    return AUTO_COMPILE_MIN_SPEEDUP / AUTO_COMPILE_UNSURE < ratio < AUTO_COMPILE_MIN_SPEEDUP * AUTO_COMPILE_UNSURE


def _time_interleaved(
    step,
    task,
    nets,
    batches,
    *,
    warm: int,
    timed: int,
    device,
    rounds: int = 3,
    max_rounds: int = AUTO_COMPILE_MAX_ROUNDS,
    agree=_same,
) -> dict[bool, float]:
    """Median seconds per step of ``step`` with the task bound to ``nets[False]`` (eager) and to
    ``nets[True]`` (compiled: its first step compiles), each warmed up, then timed in alternating blocks
    so that a machine that speeds up or slows down while it is measured favours neither.

    The compiled net is warmed first: compiling takes 20-30 s with a cold cache and leaves the eager
    net's caches cold, which made the first eager block read 30-60% slow (2026-12-06, Zen 4). When the
    medians after ``rounds`` rounds are too close to the threshold to decide on (:func:`compile_unsure`),
    more rounds are timed, up to ``max_rounds`` (a few seconds), and the medians taken over all of them."""
    runtime = task.runtime
    for c in (True, False):
        task.bind(nets[c], runtime)
        _time_steps(step, batches, warm=warm, timed=1, device=device, agree=agree)
    times: dict[bool, list[float]] = {False: [], True: []}
    per = max(1, -(-timed // rounds))

    def medians() -> dict[bool, float]:
        return {c: sorted(v)[len(v) // 2] for c, v in times.items()}

    def unsure() -> bool:
        m = medians()
        return compile_unsure(m[False], m[True])

    done = 0
    while agree(done < rounds or (done < max_rounds and unsure())):
        for c in (False, True):
            task.bind(nets[c], runtime)
            for _ in range(per):
                t0 = time.perf_counter()
                step(next(batches), 0)
                synchronize(device)
                times[c].append(time.perf_counter() - t0)
        done += 1
    task.bind(nets[False], runtime)
    return medians()


def _endless(streams, ctx: StepContext):
    epoch = 0
    while True:
        yield from train_steps(streams, ctx, epoch=epoch)
        epoch += 1


def _eval_seconds(model, val: ImageSet, runtime: Runtime, info: Any, batch_size: int, num_workers: int) -> float:
    n = min(len(val), 2 * batch_size)
    probe = val.subset(list(range(n)))
    evaluate(
        model,
        probe.subset(list(range(min(n, batch_size)))),
        runtime=runtime,
        image_size=info.eval_size,
        mean=info.mean,
        std=info.std,
        batch_size=batch_size,
        num_workers=num_workers,
    )  # warm-up
    t0 = time.perf_counter()
    evaluate(
        model,
        probe,
        runtime=runtime,
        image_size=info.eval_size,
        mean=info.mean,
        std=info.std,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    return (time.perf_counter() - t0) * len(val) / n


def plan_budget(
    recipe: Any,
    model_name: str,
    bundle: Any,
    runtime: Runtime,
    info: Any,
    *,
    budget_s: float,
    try_compile: bool = False,
    warm: int = 2,
    timed: int = 10,
) -> dict[str, Any]:
    """Measure and plan (see the module docstring). Returns the plan recorded in config.json.
    ``try_compile``: time the stages eager and compiled, largest first, and keep the plan with more
    steps (module docstring); the plan's ``compile.used`` says which the run must use."""
    from .build import build_model, build_parts, train_step

    t_start = time.perf_counter()
    net = build_model(model_name, num_classes=len(bundle.classes), in_chans=bundle.in_chans)
    parts = build_parts(recipe, net, runtime, bundle=bundle)
    step = train_step(parts, replace(runtime, compile=False) if try_compile else runtime, recipe)
    # try_compile: the task's forward eager (False) and compiled (True), rebound in turn to one TrainStep
    nets = {c: replace(runtime, compile=c).wrap(parts.model) for c in (False, True)} if try_compile else {}
    p = recipe.progressive
    stages = all_stages(
        p, train_size=info.train_size, dropout=info.dropout, drop_path=info.drop_path, eval_size=recipe.eval_size
    )
    batch = recipe.batch_size // runtime.dist.world_size
    steps_per_epoch = count_steps(len(bundle.train), batch, runtime.dist.world_size)

    def share(value):
        """Rank 0's ``value`` on every rank (itself without DDP): every rank plans from rank 0's measurements
        and follows its warm-up and compile decisions, so the ranks take the same collective steps and
        make the same plan (each timing its own steps would diverge by a step and hang in a collective)."""
        return gather_objects(value, runtime.dist)[0]

    def stage_batches(sp):
        parts.task.on_stage(sp)
        ctx = StepContext(
            batch_size=batch,
            image_size=sp.image_size,
            randaug_magnitude=sp.randaug_magnitude,
            mixup_alpha=sp.mixup_alpha,
            cutmix_alpha=sp.cutmix_alpha,
            num_classes=len(bundle.classes),
            seed=recipe.seed,
            rank=runtime.dist.rank,
            world_size=runtime.dist.world_size,
            num_workers=recipe.num_workers,
            device=runtime.device,
            mean=info.mean,
            std=info.std,
            channels_last=runtime.channels_last,
        )
        return _endless(parts.streams, ctx)

    step_s = [0.0] * len(stages)
    compiled_s: list[float | None] = [None] * len(stages)
    # trying compile: the largest size first (most of the run's time, and where compiling gains most);
    # if it is not AUTO_COMPILE_MIN_SPEEDUP faster there, the other sizes are not compiled at all
    order = sorted(range(len(stages)), key=lambda i: -stages[i].image_size) if try_compile else range(len(stages))
    why_not: dict[str, Any] = {}  # why compiling stopped before every size was compiled
    for k, i in enumerate(order):
        batches = stage_batches(stages[i])
        if try_compile and not why_not:
            try:
                # only the largest size decides on its own whether to go on (a close call is timed longer)
                pair = _time_interleaved(
                    step,
                    parts.task,
                    nets,
                    batches,
                    warm=warm,
                    timed=timed,
                    device=runtime.device,
                    max_rounds=AUTO_COMPILE_MAX_ROUNDS if k == 0 else 3,
                    agree=share,
                )
                pair = share(pair)
            except Exception as exc:  # no C compiler, an op inductor cannot lower, ...: the run trains eager
                parts.task.bind(nets[False], parts.task.runtime)
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                why_not = {"tried_at": stages[i].image_size, "error": f"{type(exc).__name__}: {first}"}
                step_s[i] = share(
                    _time_steps(step, batches, warm=warm, timed=timed, device=runtime.device, agree=share)
                )
                continue
            step_s[i] = pair[False]
            if k > 0 or pair[True] * AUTO_COMPILE_MIN_SPEEDUP <= pair[False]:
                compiled_s[i] = pair[True]
            else:
                why_not = {
                    "tried_at": stages[i].image_size,
                    "eager_step_s": round(pair[False], 5),
                    "compiled_step_s": round(pair[True], 5),
                }
        else:
            step_s[i] = share(_time_steps(step, batches, warm=warm, timed=timed, device=runtime.device, agree=share))
    one_eval = share(_eval_seconds(parts.model, bundle.val, runtime, info, recipe.eval_batch_size, recipe.num_workers))
    # a stage below the eval size is also evaluated at its own size (top1_stage): scaled by pixels
    eval_s = [
        one_eval * (1 + (sp.image_size / info.eval_size) ** 2 if sp.image_size != info.eval_size else 1)
        for sp in stages
    ]
    min_steps = max(1, warmup_steps(steps_per_epoch, recipe) + 1)
    measured_in_s = share(time.perf_counter() - t_start)  # counts against the budget
    left_s = max(budget_s - measured_in_s, 0.0)

    def plan_for(times: list[float], evals: list[float] | None = None) -> int:
        return plan_steps(
            left_s,
            stage_step_s=times,
            steps_per_epoch=steps_per_epoch,
            eval_s=eval_s if evals is None else evals,
            eval_every=recipe.eval_every_epochs,
            min_steps=min_steps,
        )

    steps = plan_for(step_s)
    compiled: dict[str, Any] = {"used": False}
    if try_compile and why_not:  # failed, or not faster enough at the largest size: the rest not compiled
        compiled = {"used": False, **why_not}
    elif try_compile:  # the compile time is spent either way: keep compiled if it plans enough more steps
        compiled_steps = plan_for(compiled_s)
        used = compiled_steps >= AUTO_COMPILE_MIN_GAIN * steps
        compiled = {
            "used": used,
            "eager_step_s": [round(t, 5) for t in step_s],
            "compiled_step_s": [round(t, 5) for t in compiled_s],
            "eager_steps": steps,
            "compiled_steps": compiled_steps,
        }
        if used:
            step_s, steps = compiled_s, compiled_steps
    progressive, sizes = {}, [sp.image_size for sp in stages]
    if p.enabled and len(stages) > 1 and p.min_epochs > 0:
        # the last stage's size is the fixed-size schedule's one stage (enabled=false: max size)
        progressive = fixed_or_progressive(steps / steps_per_epoch, p.min_epochs)
        if not progressive["used"]:
            progressive["progressive_steps"] = steps
            progressive["regularization"] = p.fallback_regularization
            progressive["set"] = fallback_sets(stages, p.fallback_regularization)
            (fallback,) = all_stages(
                fallback_progressive(p, progressive["set"]),
                train_size=info.train_size,
                dropout=info.dropout,
                drop_path=info.drop_path,
                eval_size=recipe.eval_size,
            )
            fallback_s = step_s[-1]
            if replace(fallback, index=0, n_stages=1) != replace(stages[-1], index=0, n_stages=1):
                # another regularization than the last stage's ("first" in the demo: no RandAugment, 7-11% more
                # images a second on the 2-core Zen 3, benchmarks/RESULTS.md): the one stage is timed as it will
                # train, compiled if the run compiles (a changed dropout rate may recompile: counted, like all
                # the measuring), and the plan is for the budget left after it
                progressive["last_stage_step_s"] = round(step_s[-1], 5)
                if compiled["used"]:
                    parts.task.bind(nets[True], parts.task.runtime)
                fallback_s = share(
                    _time_steps(
                        step, stage_batches(fallback), warm=warm, timed=timed, device=runtime.device, agree=share
                    )
                )
                measured_in_s = share(time.perf_counter() - t_start)
                left_s = max(budget_s - measured_in_s, 0.0)
            step_s, eval_s, sizes = [fallback_s], eval_s[-1:], sizes[-1:]
            steps = plan_for(step_s, eval_s)
    planned = planned_seconds(
        steps, stage_step_s=step_s, steps_per_epoch=steps_per_epoch, eval_s=eval_s, eval_every=recipe.eval_every_epochs
    )
    return {
        "budget_s": budget_s,
        "steps": steps,
        "epochs": -(-steps // steps_per_epoch),
        "planned_s": round(planned, 2),
        "margin": MARGIN,
        "stage_sizes": sizes,
        "step_s": [round(s, 5) for s in step_s],
        "steps_per_epoch": steps_per_epoch,
        "eval_s": round(one_eval, 3),
        "measured_in_s": round(measured_in_s, 2),
        "left_s": round(left_s, 2),
        "evaluation": "counted in the budget",
        "measuring": "counted in the budget",
        "compile": compiled,
        "progressive": progressive,
    }


# what a recorded plan must hold for a run to train it (plan_budget's return value)
_PLAN_KEYS = ("budget_s", "steps", "epochs", "steps_per_epoch", "step_s", "stage_sizes", "planned_s", "eval_s")
_PLAN_KEYS += ("measured_in_s", "compile", "progressive")


def plan_source(run_dir: str) -> dict[str, Any]:
    """``run_dir``'s config.json, when it holds a plan a run can train (``--plan-from``); refused in one
    line naming the file when the folder is not a run, the run had no budget, or its plan lacks a key.
    Cheap: called before the data loads, so a mistyped folder costs nothing."""
    folder = Path(run_dir)
    if not (folder / "config.json").is_file():
        raise UsageError(f"--plan-from {run_dir}: no config.json there (not an effv2 run folder)")
    cfg = read_config(folder)
    plan, path = cfg.get("plan"), folder / "config.json"
    if not isinstance(plan, dict) or not plan:
        raise UsageError(f'{path}: that run was not trained to a time budget (no "plan"); --plan-from needs one')
    missing = [k for k in _PLAN_KEYS if k not in plan]
    if missing:
        raise UsageError(f"{path}: its plan lacks {', '.join(missing)} (an older or edited config.json)")
    return cfg


def recorded_plan(
    run_dir: str, *, steps_per_epoch: int, batch_size: int, world_size: int, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """The time-budget plan recorded in ``run_dir``'s config.json, for a new run that trains it instead of
    measuring its own (``--plan-from``): a copy with ``from`` (the folder) and ``hard_stop_s`` (the source
    run's stop, its recipe's ``time_budget_s`` after the measuring was taken out) set. Besides
    plan_source's refusals, refused when the steps would mean other epochs or other batches: another
    global batch size, process count or training set (config.json's ``data_fingerprint``). The model
    and the rest of the recipe may differ (the plan is then only the source run's step count)."""
    cfg = plan_source(run_dir)
    folder = Path(run_dir)
    plan, path = cfg["plan"], folder / "config.json"
    recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}
    theirs = {
        "batch_size": recipe.get("batch_size", batch_size),
        "processes": cfg.get("world_size", world_size),
        "steps an epoch": plan["steps_per_epoch"],
    }
    ours = {"batch_size": batch_size, "processes": world_size, "steps an epoch": steps_per_epoch}
    for key, value in theirs.items():
        if value != ours[key]:
            why = (
                "each process's BatchNorm statistics and random streams would differ"
                if key == "processes"
                else "its steps would be other batches"
            )
            raise UsageError(f"{path}: its plan was made for {key} {value}, this run has {ours[key]}: {why}")
    recorded = cfg.get("data_fingerprint")
    if recorded is not None:
        diff = fingerprint_changes(recorded, fingerprint)
        if diff:
            raise UsageError(
                f"{path}: its plan was made for another training split (data_fingerprint differs: "
                f"{', '.join(diff)}; the data, seed and val_fraction must be the same)"
            )
    stop = recipe.get("time_budget_s")
    if not isinstance(stop, (int, float)) or stop <= 0:
        raise UsageError(f"{path}: its recipe has no time_budget_s (the hard stop of a budgeted run)")
    return {
        **plan,
        "from": str(folder),
        "hard_stop_s": float(stop),
        "replicas": recorded_replicas(cfg["recipe"]),  # a run recorded before the key: 1
    }
