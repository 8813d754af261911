"""`train(...)`: the one entry point behind `effv2 train`, the demo, the benchmarks and the search.

Order matters: everything a user can get wrong (model, recipe keys, data path, sizes) is checked
before any work starts, so mistakes cost seconds and print one line.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Recipe, recipe_from_dict, recipe_to_dict, resolve_recipe
from ..config.fitted import measure_facts
from ..config.values import parse_duration
from ..data.order import derive_seed
from ..data.order import steps_per_epoch as count_steps
from ..data.sources import DataBundle, list_sources, load_source
from ..errors import UsageError
from ..inference.pretrained import Pretrained, is_named, resolve_pretrained
from ..models import create_model, get_card
from ..runtime import compile_cache, resolve_runtime
from ..runtime import deterministic as deterministic_mode
from ..runtime.distributed import barrier, cleanup, gather_objects
from ..runtime.malloc import keep_freed_memory
from ..runtime.replicas import recorded_replicas
from .budget import (
    compile_candidate,
    fallback_progressive,
    fallback_words,
    plan_budget,
    plan_source,
    recorded_plan,
)
from .build import adapt_and_load, build_model, build_parts, channel_stats, init_overrides, seed_everything
from .callbacks import Callback
from .logging_sinks import logging_callbacks, parse_log
from .run_folder import absolute, check_out_dir, check_resume, data_fingerprint, read_config, run_lock, write_config
from .state import RunInfo
from .trainer import Trainer


def _validate(recipe: Recipe, model: str, bundle: DataBundle) -> None:
    card = get_card(model)
    stride = card.spec.total_stride
    p = recipe.progressive
    smallest = p.min_size if p.enabled else (p.max_size or card.train_size)
    if smallest < stride:
        raise UsageError(f"progressive.min_size={smallest} px is smaller than {model}'s total stride {stride}")
    if (recipe.eval_size or card.eval_size) < stride:
        raise UsageError(
            f"eval_size={recipe.eval_size or card.eval_size} px is smaller than {model}'s total stride {stride}"
        )
    if recipe.batch_size > len(bundle.train):
        raise UsageError(f"batch_size={recipe.batch_size} is larger than the training set ({len(bundle.train)} images)")


def _resume_config(out: Path, epochs: int | None, given: dict[str, Any]) -> tuple[dict[str, Any], Recipe]:
    """config.json of the run to resume, with ``epochs`` applied (extending a run is meaningful);
    every other option would silently change a run in mid-flight, so it is refused by name."""
    refused = [name for name, value in given.items() if value not in (None, [], {}, ())]
    if refused:
        raise UsageError(
            f"--resume continues a run exactly as configured; {', '.join(refused)} cannot be changed "
            f"(only --epochs can extend it); start a new run with another --out instead"
        )
    cfg = read_config(out)
    rec = recipe_from_dict(cfg["recipe"])
    rec = replace(rec, replicas=recorded_replicas(cfg["recipe"]))  # a run from before the key: 1
    if epochs is not None and epochs != rec.epochs:
        rec = replace(rec, epochs=epochs, max_steps=0)  # a budget plan's step cap no longer applies
        cfg["recipe"] = recipe_to_dict(rec)
        cfg.setdefault("layers", {})[f"resume@{time.strftime('%Y-%m-%dT%H:%M:%S')}"] = {
            "source": "--resume --epochs",
            "set": {"epochs": epochs, "max_steps": 0},
        }
    return cfg, rec


def train(
    model: str | None,
    data: str | DataBundle | None,
    out_dir: str | Path,
    *,
    recipe: str | None = None,
    overrides: list[str] | dict | None = None,
    data_dir: str | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    quiet: bool = False,
    deterministic: bool | None = None,
    resume: bool = False,
    device: str = "auto",
    download: bool = False,
    init: str | None = None,
    overwrite: bool = False,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    pretrained: str | None = None,
    log: str | list[str] | tuple[str, ...] | None = None,
    plan_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` into ``out_dir`` and return the run's summary.

    With ``resume=True`` the model, data and recipe come from ``out_dir/config.json`` and training
    continues from ``out_dir/checkpoints/last.safetensors`` (``epochs`` may extend the run; any
    other option is refused). ``overwrite`` lets a new run use a non-empty folder that is not a run.
    ``init`` / ``pretrained``: start from these weights (any ``--pretrained`` SOURCE:
    effv2.inference.pretrained); the run trains and evaluates with their mean/std, and ``model``
    defaults to their architecture.
    ``log``: where metrics go besides metrics.jsonl and curves.png (``"csv"``, ``"tensorboard"``,
    both, or ``"none"``; logging_sinks.py); None: csv, or on resume what the run was started with.
    ``plan_from``: a run folder whose time-budget plan (config.json's ``"plan"``) this run trains instead
    of measuring its own: the same steps, epochs, hard stop, compile decision and fallback, so that a
    ``--deterministic`` run killed and resumed can be checked against an uninterrupted one bit for bit.
    """
    out = Path(out_dir).expanduser().absolute()
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        check_out_dir(out, resume=resume, overwrite=overwrite)
    with run_lock(out, enabled=main_rank):  # held from the first check to the last write
        return _train(
            out,
            model,
            data,
            recipe=recipe,
            overrides=overrides,
            data_dir=data_dir,
            seed=seed,
            epochs=epochs,
            quiet=quiet,
            deterministic=deterministic,
            resume=resume,
            device=device,
            download=download,
            init=init,
            callbacks=callbacks,
            log=log,
            pretrained=pretrained,
            plan_from=plan_from,
        )


def _train(
    out: Path,
    model,
    data,
    *,
    recipe,
    overrides,
    data_dir,
    seed,
    epochs,
    quiet,
    deterministic,
    resume,
    device,
    download,
    init,
    callbacks,
    log=None,
    pretrained=None,
    plan_from=None,
) -> dict[str, Any]:
    if seed is not None and not 0 <= seed < 2**63:
        raise UsageError(f"--seed {seed}: expected an integer in 0..2**63-1")
    given_log = parse_log(log) if log is not None else None  # a bad --log: one line before any work
    if resume:
        given = {
            "--plan-from": plan_from,
            "--model": model,
            "--data": data,
            "--recipe": recipe,
            "--set": overrides,
            "--seed": seed,
            "--deterministic": deterministic,
            "--init": init,
            "--pretrained": pretrained,
        }
        cfg, rec = _resume_config(out, epochs, given)
        model, source, init, pretrained = cfg["model"], cfg["data"], cfg.get("init"), cfg.get("pretrained")
        start = _start_weights(init, pretrained)  # its padding / BN eps and mean/std; the weights come from last
        data_dir = data_dir or cfg.get("data_dir")
        provenance = cfg.get("layers", {})
        bundle = None
        sinks = given_log if given_log is not None else parse_log(cfg.get("log"))  # logging never changes the run
        cfg["log"] = list(sinks)
    else:
        if init is not None and pretrained is not None:
            raise UsageError("give --init or --pretrained, not both (both start from weights)")
        init = absolute(init)
        if pretrained is not None and not is_named(pretrained):
            pretrained = absolute(pretrained)
        start = _start_weights(init, pretrained)  # a bad source: one line before anything else
        if model is None and start is not None:
            model = start.model.card.name if start.model.card is not None else None
        if model is None or data is None:
            raise UsageError("--model and --data are required (or --resume RUN_DIR)")
        model = absolute(model) if model.endswith(".json") else model
        get_card(model)  # unknown model -> one-line error before anything else
        source = data.source if isinstance(data, DataBundle) else absolute(str(data))
        data_dir = absolute(data_dir)
        extra = dict(overrides) if isinstance(overrides, dict) else list(overrides or [])
        if isinstance(extra, dict):
            if seed is not None:
                extra["seed"] = seed
            if epochs is not None:
                extra["epochs"] = epochs
            if deterministic is not None:
                extra["deterministic"] = deterministic
        else:
            extra += [f"seed={seed}"] if seed is not None else []
            extra += [f"epochs={epochs}"] if epochs is not None else []
            extra += [f"deterministic={'true' if deterministic else 'false'}"] if deterministic is not None else []
        rec, provenance = resolve_recipe(recipe, model=model, dataset=source, overrides=extra)
        bundle = data if isinstance(data, DataBundle) else None
        sinks = given_log if given_log is not None else parse_log(None)
    callbacks = [*logging_callbacks(sinks), *callbacks]  # a missing tensorboard package: an error before any work
    if plan_from is not None and not resume:  # a wrong folder: one line before the data loads
        if rec.time_budget is not None:
            raise UsageError(
                f"--plan-from trains the plan of {plan_from}; the recipe's time_budget={rec.time_budget} would "
                "plan another: drop it"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # under torchrun: checked once, shared (below)
            plan_source(absolute(str(plan_from)))
    if bundle is None:
        bundle = load_source(
            source, data_dir=data_dir, download=download, val_fraction=rec.val_fraction, split_seed=rec.seed
        )
    if resume:
        check_resume(out, cfg, bundle)
    elif not isinstance(data, DataBundle) and source.strip().lower() not in list_sources():
        # an image folder or CSV has no recipe of its own: resolve again with its measured facts
        # (the data-fitted layer, config/fitted.py; it never changes val_fraction or seed)
        rec, provenance = resolve_recipe(
            recipe, model=model, dataset=source, overrides=extra, fitted=measure_facts(bundle)
        )
    _validate(rec, model, bundle)
    if rec.batch_size % int(os.environ.get("WORLD_SIZE", "1")):
        raise UsageError(f"batch_size={rec.batch_size} is not divisible by the {os.environ['WORLD_SIZE']} processes")

    runtime = resolve_runtime(
        device,
        amp=rec.amp,
        channels_last=rec.channels_last,
        compile=rec.compile is True,  # "auto" is decided below, by measuring (a resumed run: already decided)
        batch_size=rec.batch_size,
        distributed=True,
        replicas=rec.replicas,
    )
    dist = runtime.dist
    try:
        plan = None
        budget_s = None if rec.time_budget is None or resume else parse_duration(rec.time_budget, "--time-budget")
        try_compile, why = compile_candidate(
            rec.compile, device_type=runtime.device.type, amp=runtime.amp, budget_s=budget_s
        )
        if try_compile and runtime.replicas > 1:  # replicas train eager: one of the two gives way
            if rec.replicas == "auto":  # compiling is measured, the replicas' rule is not: compile is tried
                runtime = replace(runtime, replicas=1)
            elif rec.compile == "auto":  # the recipe asked for replicas; compile was only "auto"
                try_compile = False
        if plan_from is not None and not resume:  # another run's plan: its budget and hard stop
            plan = _shared_recorded_plan(absolute(str(plan_from)), rec, bundle, dist)
            budget_s, try_compile = plan["budget_s"], False
            # the source's replicas too: another count is another step (its shards' BN statistics)
            if rec.replicas == "auto":
                runtime = replace(runtime, replicas=plan["replicas"])
            elif rec.replicas != plan["replicas"]:
                raise UsageError(
                    f"--plan-from {plan_from}: that run trained {plan['replicas']} replica(s) a step; this one "
                    f"asks for replicas={rec.replicas} (leave replicas auto to train as that run did)"
                )
            if dist.is_main and not quiet:
                print(f"plan: the one recorded in {plan['from']} (not measured here)", flush=True)
        elif budget_s is not None:
            if dist.is_main and not quiet:
                tried = " (eager and compiled: " + why + ")" if try_compile else ""
                print(f"measuring step times for a {rec.time_budget} budget{tried} ...", flush=True)
            # every rank measures (the steps are collective under DDP); rank 0's plan is the plan. Measured
            # in the mode the run trains in (deterministic: no cuDNN autotuning, deterministic kernels)
            with deterministic_mode(rec.deterministic):
                measured = plan_budget(
                    rec,
                    model,
                    bundle,
                    runtime,
                    run_info(rec, model, bundle, start),
                    budget_s=budget_s,
                    try_compile=try_compile,
                )
            plan = gather_objects(measured, dist)[0]
        if plan is not None:
            # the measuring (and compiling) was spent out of the budget: the hard stop moves by as much
            stop_s = plan.get("hard_stop_s") or max((rec.time_budget_s or budget_s) - plan["measured_in_s"], 1.0)
            fixed = plan["progressive"].get("used") is False  # too few epochs for progressive learning
            rec = replace(
                rec,
                epochs=plan["epochs"],
                max_steps=plan["steps"],
                time_budget_s=stop_s,
                compile=bool(plan["compile"]["used"]),
                progressive=fallback_progressive(rec.progressive, plan["progressive"]["set"])
                if fixed
                else rec.progressive,
            )
            provenance["plan"] = {
                "source": f"the plan of {plan['from']}"
                if "from" in plan
                else f"time budget {rec.time_budget}, measured on this machine",
                "set": {
                    "epochs": rec.epochs,
                    "max_steps": rec.max_steps,
                    "time_budget_s": rec.time_budget_s,
                    "compile": rec.compile,
                    **(plan["progressive"]["set"] if fixed else {}),
                },
            }
            if dist.is_main and not quiet:
                print(
                    f"plan: {plan['steps']} steps ({plan['steps'] / plan['steps_per_epoch']:.2f} epochs), "
                    f"{plan['planned_s']:.0f}s of {budget_s:.0f}s (step "
                    + ", ".join(f"{1e3 * t:.0f} ms at {sz}px" for t, sz in zip(plan["step_s"], plan["stage_sizes"]))
                    + f"; evaluation {plan['eval_s']:.1f}s; "
                    + (
                        f"as that run measured them; its hard stop {stop_s:.0f}s)"
                        if "from" in plan
                        else f"measured in {plan['measured_in_s']:.0f}s)"
                    ),
                    flush=True,
                )
                if fixed:
                    pr = plan["progressive"]
                    print(
                        f"progressive: off (its plan fits {pr['progressive_epochs']:.1f} epochs, under "
                        f"progressive.min_epochs {pr['min_epochs']:g}): every step at {plan['stage_sizes'][-1]}px "
                        + fallback_words(pr["set"], pr["regularization"]),
                        flush=True,
                    )
                c = plan["compile"]
                if "from" in plan:
                    print(f"compile: {'on' if c['used'] else 'off'} (as that run decided)", flush=True)
                elif "compiled_steps" in c:
                    print(
                        f"compile: {'on' if c['used'] else 'off'} (a step eager "
                        + ", ".join(f"{1e3 * t:.0f}" for t in c["eager_step_s"])
                        + " ms, compiled "
                        + ", ".join(f"{1e3 * t:.0f}" for t in c["compiled_step_s"])
                        + f" ms: {c['compiled_steps']} steps against {c['eager_steps']}; "
                        "compiling is counted in the budget; inductor cache "
                        f"{os.environ.get(compile_cache.ENV, 'torch default')})",
                        flush=True,
                    )
                elif "error" in c:
                    print(f"compile: off (torch.compile failed at {c['tried_at']}px: {c['error']}); training eager")
                elif "tried_at" in c:
                    print(
                        f"compile: off (at {c['tried_at']}px eager {1e3 * c['eager_step_s']:.0f} ms, compiled "
                        f"{1e3 * c['compiled_step_s']:.0f} ms a step: under 1.1x faster; the other sizes not "
                        "compiled; compiling is counted in the budget)",
                        flush=True,
                    )
        elif rec.compile == "auto":
            rec = replace(rec, compile=try_compile)  # recorded as decided, so --resume runs the same way
        if rec.compile is True and runtime.replicas > 1:  # decided by the plan or its source: replicas give way
            if rec.replicas != "auto":
                raise UsageError(
                    f"replicas={rec.replicas}: replicas train eager, and this run compiles (compile: false)"
                )
            runtime = replace(runtime, replicas=1)
        rec = replace(rec, replicas=runtime.replicas)  # recorded as decided, so --resume runs the same way
        runtime = replace(runtime, compile=rec.compile is True)
        if dist.is_main:
            if resume:
                write_config(out, cfg)  # --epochs may have extended it
            else:
                write_config(
                    out,
                    {
                        "model": model,
                        "data": source,
                        "data_dir": data_dir,
                        "init": init,
                        "pretrained": pretrained,
                        "init_data_config": start.data_config.to_dict() if start is not None else None,
                        "log": list(sinks),
                        "recipe": recipe_to_dict(rec),
                        "layers": provenance,
                        "data_fingerprint": data_fingerprint(bundle),
                        "data_splits": bundle.summary(),
                        "plan": plan,
                        "effv2_version": __version__,
                        "torch_version": torch.__version__,
                        "world_size": dist.world_size,
                        "device": str(runtime.device),
                        "malloc": keep_freed_memory() if runtime.device.type == "cpu" else None,
                    },
                )
                for stale in ("metrics.jsonl", "skipped.jsonl", "metrics.csv"):
                    (out / stale).unlink(missing_ok=True)
        barrier(dist)  # no rank starts before the folder is set up and locked
        with deterministic_mode(rec.deterministic):
            trainer = build_trainer(
                rec, model, bundle, runtime, out, init=start, resume=resume, quiet=quiet, callbacks=callbacks
            )
            return trainer.fit()
    finally:
        cleanup(dist)


def _shared_recorded_plan(folder: str, rec: Recipe, bundle: DataBundle, dist) -> dict[str, Any]:
    """``--plan-from``: rank 0 reads and checks the recorded plan; every rank gets that plan or raises
    the same one-line error (a folder missing on another node's disk never leaves a rank at a barrier)."""
    outcome: dict[str, Any] | str | None = None
    if dist.is_main:
        try:
            outcome = recorded_plan(
                folder,
                steps_per_epoch=count_steps(len(bundle.train), rec.batch_size // dist.world_size, dist.world_size),
                batch_size=rec.batch_size,
                world_size=dist.world_size,
                fingerprint=data_fingerprint(bundle),
            )
        except UsageError as exc:
            outcome = str(exc)
        except Exception as exc:  # a hand-edited config.json: still one line, and no rank left waiting
            outcome = f"{Path(folder) / 'config.json'}: not a plan --plan-from can read ({type(exc).__name__}: {exc})"
    outcome = gather_objects(outcome, dist)[0]
    if isinstance(outcome, str):
        raise UsageError(outcome)
    return outcome


def _start_weights(init: str | None, pretrained: str | None) -> Pretrained | None:
    """The weights a run starts from (``--init`` or ``--pretrained``), converted, with their preprocessing."""
    if pretrained is not None:
        return resolve_pretrained(pretrained, flag="--pretrained")
    return resolve_pretrained(init, flag="--init") if init is not None else None


def run_info(rec: Recipe, model: str, bundle: DataBundle, start: Pretrained | None = None) -> RunInfo:
    """What the run is; with ``start`` weights, their mean/std (a model converted from torchvision is
    fine-tuned with the ImageNet normalisation it learned, not the card's 0.5/0.5)."""
    card = get_card(model)
    stats = start.data_config if start is not None else card
    return RunInfo(
        model_name=model,
        classes=list(bundle.classes),
        in_chans=bundle.in_chans,
        train_size=card.train_size,
        eval_size=rec.eval_size or card.eval_size,
        mean=channel_stats(stats.mean, bundle.in_chans),
        std=channel_stats(stats.std, bundle.in_chans),
        dropout=card.dropout,
        drop_path=card.drop_path,
    )


def build_trainer(
    rec: Recipe,
    model: str,
    bundle: DataBundle,
    runtime,
    out: Path,
    *,
    init: str | Pretrained | None = None,
    resume: bool = False,
    quiet: bool = False,
    callbacks=(),
) -> Trainer:
    """Seed, build the parts (build.py) and hand them to a Trainer. ``init``: the start weights
    (resolved, or a path build_model loads); on resume only their architecture is used."""
    seed_everything(rec.seed)
    start = init if isinstance(init, Pretrained) else None
    if start is not None:
        net = create_model(
            model,
            num_classes=len(bundle.classes),
            in_chans=bundle.in_chans,
            **init_overrides(start.model.spec, model),
        )
        if not resume:
            adapt_and_load(net, start.model.state_dict(), start.source)
    else:
        net = build_model(
            model, num_classes=len(bundle.classes), in_chans=bundle.in_chans, init=init, load_init=not resume
        )
    info = run_info(rec, model, bundle, start)
    parts = build_parts(rec, net, runtime, bundle=bundle)
    if runtime.dist.rank > 0:  # same initial weights everywhere; each rank its own dropout/drop-path masks
        seed_everything(derive_seed(rec.seed, "rank", runtime.dist.rank))
    return Trainer(
        recipe=rec,
        parts=parts,
        bundle=bundle,
        info=info,
        runtime=runtime,
        out_dir=out,
        quiet=quiet,
        resume=resume,
        recipe_dict=recipe_to_dict(rec),
        callbacks=callbacks,
    )
