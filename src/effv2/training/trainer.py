"""The progressive trainer: one short loop over built parts, its phases named.

    fit() -> for each epoch: enter_stage() -> train_epoch() [step(...) ...] -> evaluate() -> save()

How a step flows: the data streams (effv2.data.streams) yield ``{name: Batch}``; the loop sets the
lr (LRSchedule) and calls the TrainStep (step.py), which asks the task (tasks/) for ``{"loss",
parts...}``, backpropagates (GradScaler for fp16), clips, checks finiteness on every rank, steps
the optimizer, updates the EMA and calls the task's ``after_step``. The loop logs whatever parts
the task returned (``train_<part>``) without knowing their names, switches stages (calling the
task's ``on_stage``), evaluates (evaluate.py), checkpoints every part (io.checkpoint) and calls
the callbacks.

Everything random is a pure function of (seed, epoch, batch, rank) in the data pipeline, and the
global RNGs (dropout, stochastic depth) are saved in every checkpoint, so a run resumed from a
step checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data.sources import DataBundle
from ..data.streams import StepContext, stream_steps, train_steps
from ..errors import UsageError
from ..io.atomic import atomic_write_text
from ..io.checkpoint import checkpoint_path, load_checkpoint, previous_path, save_checkpoint
from ..models.flops import count_params
from ..runtime import Runtime
from ..runtime.distributed import RankRNG, any_true, barrier, gather_objects
from .build import Parts, train_step
from .callbacks import Callback, call_hooks
from .evaluate import evaluate
from .lr import LRSchedule, total_steps
from .report import Progress, append_jsonl, read_jsonl
from .run_end import RunEnd
from .schedule import StageParams, stage_of_epoch, stage_params
from .state import NonFiniteError, RunInfo, TrainState


class Trainer(RunEnd):
    def __init__(
        self,
        *,
        recipe: Any,
        parts: Parts,
        bundle: DataBundle,
        info: RunInfo,
        runtime: Runtime,
        out_dir: Path,
        quiet: bool = False,
        resume: bool = False,
        recipe_dict: dict | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
    ) -> None:
        self.recipe, self.parts, self.bundle, self.info, self.runtime = recipe, parts, bundle, info, runtime
        self.out_dir, self.quiet, self.callbacks = Path(out_dir), quiet, list(callbacks)
        self.recipe_dict = recipe_dict or {}
        self.dist = runtime.dist
        self.model: nn.Module = parts.model
        self.step = train_step(parts, runtime, recipe)
        self.batch_per_rank = recipe.batch_size // self.dist.world_size
        self.steps_per_epoch = stream_steps(parts.streams[0], self._context(self.info.train_size, 0, 0, 0))
        self.lr = LRSchedule.from_recipe(recipe, steps_per_epoch=self.steps_per_epoch, base_lr=recipe.scaled_lr)
        self.total_steps = total_steps(self.steps_per_epoch, recipe)  # max_steps may end the last epoch early
        self.state = TrainState()
        self._rates: dict[int, deque[float]] = {}  # seconds per step, a stage's last 3 epochs this session (re-plans)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.skipped_path = self.out_dir / "skipped.jsonl"
        self._skipped_seen: set[str] = set()
        self._pending_skipped: list[dict] = []
        self.rank_rng = RankRNG(self.dist) if self.dist.enabled else None
        if resume:
            self._load_last()

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def planned_epochs(self) -> int:
        """Epochs the run will train: the recipe's, or more after a re-plan that lengthened it."""
        return max(self.recipe.epochs if not self.state.replans else 0, -(-self.total_steps // self.steps_per_epoch))

    @property
    def eval_model(self) -> nn.Module:
        # The EMA model is what the official code evaluates and exports.
        return self.parts.ema.module if self.parts.ema is not None else self.model

    def log(self, msg: str) -> None:
        if self.is_main and not self.quiet:
            print(msg, flush=True)

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint_parts(self) -> dict[str, Any]:
        return {**self.parts.checkpoint_parts(), "rank_rng": self.rank_rng}

    def save(self, which: str) -> None:
        """Rank 0 writes every part; every rank waits so none runs ahead of a checkpoint it may need."""
        self._flush_skipped()
        if self.rank_rng is not None:
            self.rank_rng.gather()
        if self.is_main:
            save_checkpoint(
                checkpoint_path(self.out_dir, which),
                self._checkpoint_parts(),
                state={**self.state.to_dict(), **self.info.to_meta()},
                recipe=self.recipe_dict,
            )
        barrier(self.dist)

    def _load_last(self) -> None:
        """Continue from checkpoints/last; if it is missing or damaged, from last.prev (and say so).
        A run with metrics but no readable checkpoint is refused rather than restarted over them."""
        last = checkpoint_path(self.out_dir, "last")
        candidates = [p for p in (last, previous_path(last)) if p.exists()]
        if not candidates:
            if read_jsonl(self.metrics_path):
                raise UsageError(
                    f"{self.out_dir}: metrics.jsonl has results but no checkpoint is left in "
                    f"{last.parent}; refusing to restart over them (move the folder away to start anew)"
                )
            self.log(f"{self.out_dir}: no checkpoint yet; starting the run from the beginning")
            for stale in (self.metrics_path, self.skipped_path):
                stale.unlink(missing_ok=True) if self.is_main else None
            return
        errors = []
        for path in candidates:
            try:
                # A version-1 checkpoint has no GradScaler state: the scaler then starts afresh.
                ckpt = load_checkpoint(
                    path,
                    self._checkpoint_parts(),
                    restore_rng_state=self.rank_rng is None,
                    optional=("scaler", "rank_rng"),
                )
                break
            except UsageError as exc:
                errors.append(str(exc))
        else:
            raise UsageError(f"{self.out_dir}: no usable checkpoint: " + " | ".join(errors))
        if errors:
            self.log(f"warning: {errors[0]}; resuming from the previous checkpoint {path}")
        self.state = TrainState.from_dict(ckpt.state)
        for t0, total in self.state.replans:  # a re-planned budget run continues its re-planned schedule
            self.lr, self.total_steps = self.lr.with_replan(t0, total), total
        if self.is_main:  # drop metrics written after the checkpoint we resume from (they will be redone)
            kept = [m for m in read_jsonl(self.metrics_path) if m.get("step", 0) <= self.state.global_step]
            atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
            self._skipped_seen = {r["path"] for r in read_jsonl(self.skipped_path)}
        self.log(
            f"resumed from {path} at epoch {self.state.epoch} batch {self.state.batch} (step {self.state.global_step})"
        )

    # -- phases -------------------------------------------------------------------------------
    def stage_for(self, epoch: int) -> StageParams:
        p = self.recipe.progressive
        stage = stage_of_epoch(epoch, self.recipe.epochs, p.n_stages if p.enabled else 1)
        return stage_params(
            stage, p, train_size=self.info.train_size, dropout=self.info.dropout, drop_path=self.info.drop_path
        )

    def enter_stage(self, sp: StageParams) -> None:
        """Adaptive regularisation is the task's (by default: dropout and stochastic depth)."""
        self.parts.task.on_stage(sp)

    def _context(self, image_size: int, randaug: float, mixup: float, cutmix: float) -> StepContext:
        r = self.recipe
        return StepContext(
            batch_size=self.batch_per_rank,
            image_size=image_size,
            randaug_magnitude=randaug,
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            num_classes=len(self.info.classes),
            seed=r.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=r.num_workers,
            device=self.runtime.device,
            mean=self.info.mean,
            std=self.info.std,
            channels_last=self.runtime.channels_last,
        )

    def _note_skipped(self, records: list[dict]) -> None:
        """Files that failed on this rank; written to skipped.jsonl (once per path) at the next save."""
        self._pending_skipped.extend(records)
        if not self.dist.enabled:
            self._flush_skipped()

    def _flush_skipped(self) -> None:
        """Collective under torchrun: every rank's skipped files reach rank 0's skipped.jsonl."""
        pending, self._pending_skipped = self._pending_skipped, []
        for records in gather_objects(pending, self.dist):
            for rec in records if self.is_main else ():
                if rec["path"] not in self._skipped_seen:
                    self._skipped_seen.add(rec["path"])
                    append_jsonl(self.skipped_path, rec)

    def _check_nonfinite(self, stepped: bool, batch_index: int) -> None:
        s = self.state
        if stepped:
            s.nonfinite_run = 0
            return
        s.nonfinite_total += 1
        s.nonfinite_run += 1
        self.log(
            f"warning: non-finite loss or gradient at step {s.global_step} (epoch {s.epoch}, batch "
            f"{batch_index}, rank {self.dist.rank}); step skipped ({s.nonfinite_run} in a row)"
        )
        if s.nonfinite_run >= self.recipe.max_nonfinite_steps:
            raise NonFiniteError(
                f"{s.nonfinite_run} non-finite steps in a row at step {s.global_step} (epoch {s.epoch}, batch "
                f"{batch_index}, rank {self.dist.rank}); stopped, last good checkpoint left intact in "
                f"{checkpoint_path(self.out_dir, 'last')}"
            )

    def train_epoch(self, sp: StageParams, deadline: float | None) -> bool:
        """Train the rest of the current epoch. Returns False when the time budget ran out."""
        r, s = self.recipe, self.state
        self.model.train()
        self.parts.task.train()
        ctx = self._context(sp.image_size, sp.randaug_magnitude, sp.mixup_alpha, sp.cutmix_alpha)
        steps = train_steps(self.parts.streams, ctx, epoch=s.epoch, start_batch=s.batch)
        bar = Progress(
            min(self.steps_per_epoch, s.batch + self.total_steps - s.global_step),
            f"epoch {s.epoch + 1}/{self.planned_epochs} stage {sp.index + 1} {sp.image_size}px",
            enabled=self.is_main and not self.quiet,
            initial=s.batch,
        )
        t_start, sums, taken = time.perf_counter(), {}, 0
        try:
            for batches in steps:
                if s.global_step >= self.total_steps:
                    break
                for b in batches.values():
                    if b.bad:
                        self._note_skipped(b.bad)
                res = self.step(batches, s.global_step, lr=self.lr(s.global_step))
                self._check_nonfinite(res.stepped, s.batch)
                s.batch += 1
                n = batches["labelled"].x.shape[0] * self.dist.world_size
                if res.stepped:
                    s.global_step += 1
                    s.images_seen += n
                    taken += 1
                    for k, v in res.parts.items():
                        sums.setdefault(k, []).append(v)
                bar.update(n, **res.parts, lr=self.step.optimizer.param_groups[0]["lr"])
                if r.checkpoint_every_steps and res.stepped and s.global_step % r.checkpoint_every_steps == 0:
                    s.wall_s += time.perf_counter() - t_start
                    t_start = time.perf_counter()
                    self.save("last")
                if res.stepped:
                    for cb in self.callbacks:
                        cb.on_step_end(self)
                # the budget is decided once for all ranks: none may stop while another waits in a collective
                if deadline is not None and any_true(time.perf_counter() > deadline, self.dist, self.runtime.device):
                    s.wall_s += time.perf_counter() - t_start
                    self._epoch_means(sums)
                    return False
        finally:
            bar.close()
        s.wall_s += time.perf_counter() - t_start
        self._epoch_means(sums)
        s.epoch, s.batch = s.epoch + 1, 0
        return True

    def _epoch_means(self, sums: dict[str, list[float]]) -> None:
        means = {k: float(np.mean(v)) for k, v in sums.items()}
        self.state.last_train_loss = means.pop("loss", float("nan"))
        self.state.last_train_parts = means

    def evaluate(
        self, imageset, model: nn.Module | None = None, size: int | None = None, flip: bool | None = None
    ) -> dict[str, float]:
        """``flip`` None: the recipe's ``eval_flip`` when it is true (not "auto", decided at the end)."""
        return evaluate(
            model if model is not None else self.eval_model,
            imageset,
            runtime=self.runtime,
            image_size=size or self.info.eval_size,
            mean=self.info.mean,
            std=self.info.std,
            batch_size=self.recipe.eval_batch_size,
            num_workers=self.recipe.num_workers,
            on_bad=self._note_skipped,
            flip=self.recipe.eval_flip is True if flip is None else flip,
        )

    def record(self, sp: StageParams, ev: dict[str, float], at_stage: dict[str, float] | None = None) -> dict[str, Any]:
        s = self.state
        rec = {
            "epoch": s.epoch,
            "stage": sp.index,
            "image_size": sp.image_size,
            "eval_size": self.info.eval_size,
            "top1": round(ev["top1"], 4),
            "top5": round(ev["top5"], 4),
            "loss": round(ev["loss"], 6),
            "train_loss": round(s.last_train_loss, 6),
            **{f"train_{k}": round(v, 6) for k, v in s.last_train_parts.items()},
            "lr": self.step.optimizer.param_groups[0]["lr"],
            "images_seen": s.images_seen,
            "wall_s": round(s.wall_s, 2),
            "step": s.global_step,
            "randaug": sp.randaug_magnitude,
            "mixup": sp.mixup_alpha,
            "cutmix": sp.cutmix_alpha,
            "dropout": sp.dropout,
            "ema": self.parts.ema is not None,
        }
        if at_stage is not None:
            rec["top1_stage"] = round(at_stage["top1"], 4)
        if s.replans:
            rec["planned_steps"] = self.total_steps
        if self.is_main:
            append_jsonl(self.metrics_path, rec)
        return rec

    def _replan(self, deadline: float | None, sp: StageParams, epoch_s: float, epoch_steps: int, eval_s: float) -> None:
        """Fit the rest of a time-budgeted run to the time actually left (not under --deterministic,
        whose fixed plan resumes bit for bit). A plan made from a few seconds of timing is only as good
        as the machine's steadiness (on a shared VM the same step drifted 25% within a minute): after
        each evaluated epoch the steps still to train are recomputed from the stage's step time, the
        median of its last three epochs, so one epoch slowed or sped up by a neighbour on the VM does not
        re-plan the run on its own (later stages scaled by image area until they are measured). When the
        steps differ from the plan by more than 2% of the steps still to train the schedule is re-planned:
        the lr keeps its progress and spreads the rest over the new length (lr.LRSchedule.with_replan),
        extra epochs belong to the last stage. Each re-plan is kept in the state (checkpointed), so a
        resumed run continues the same schedule."""
        r, s = self.recipe, self.state
        if deadline is None or r.deterministic or not r.max_steps or epoch_steps < self.steps_per_epoch // 2:
            return
        self._rates.setdefault(sp.index, deque(maxlen=3)).append(epoch_s / epoch_steps)
        p = r.progressive
        m = p.n_stages if p.enabled else 1

        def rate(j: int) -> float:
            if j in self._rates:
                return statistics.median(self._rates[j])
            size = self.stage_for_index(j).image_size
            return rate(sp.index) * (size / sp.image_size) ** 2

        target = 0.95 * (deadline - time.perf_counter())
        t, steps, epoch, spe = 0.0, 0, s.epoch, self.steps_per_epoch
        while epoch < 10 * r.epochs:
            j = stage_of_epoch(epoch, r.epochs, m)
            if t + spe * rate(j) + eval_s <= target:
                t, steps, epoch = t + spe * rate(j) + eval_s, steps + spe, epoch + 1
                continue
            steps += max(0, int((target - t - eval_s) / rate(j)))
            break
        total = gather_objects(s.global_step + steps, self.dist)[0]  # rank 0 decides for all ranks
        # 2% of the steps still to train, not of the whole run: near the end a whole-run threshold left
        # 4-5% of a 10-minute budget unused (three runs on the Zen 4 EPYC, benchmarks/RESULTS.md)
        if abs(total - self.total_steps) <= 0.02 * max(self.total_steps - s.global_step, 1):
            return
        self.log(
            f"re-planned: {total} steps instead of {self.total_steps} (the last epoch ran at "
            f"{1e3 * self._rates[sp.index][-1]:.0f} ms/step, median of the stage's last three "
            f"{1e3 * rate(sp.index):.0f}; {deadline - time.perf_counter():.0f}s left)"
        )
        s.replans.append([s.global_step, total])
        self.lr, self.total_steps = self.lr.with_replan(s.global_step, total), total

    def stage_for_index(self, stage: int) -> StageParams:
        p = self.recipe.progressive
        return stage_params(
            stage, p, train_size=self.info.train_size, dropout=self.info.dropout, drop_path=self.info.drop_path
        )

    # -- the whole run ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        r, s, rt = self.recipe, self.state, self.runtime
        self.log(
            f"training {self.info.model_name} ({count_params(self.model):,} params) on {self.bundle.source}: "
            f"{len(self.bundle.train):,} images, {len(self.bundle.classes)} classes, {r.epochs} epochs, "
            f"batch {r.batch_size}, task {self.parts.task.name}, amp {rt.amp_dtype or 'off'}, "
            f"channels_last {rt.channels_last}, replicas {rt.replicas}, world {self.dist.world_size}"
        )
        if self.is_main and self.bundle.skipped:
            self._note_skipped(self.bundle.skipped)
        call_hooks(self.callbacks, "on_fit_start", self)
        deadline = time.perf_counter() + max(r.time_budget_s - s.wall_s, 0) if r.time_budget_s > 0 else None
        completed = True
        while s.global_step < self.total_steps and (s.epoch < r.epochs or s.replans):
            sp = self.stage_for(s.epoch)
            self.enter_stage(sp)
            wall0, step0 = s.wall_s, s.global_step
            completed = self.train_epoch(sp, deadline)
            last = s.global_step >= self.total_steps or (s.epoch >= r.epochs and not s.replans)
            if completed and s.epoch % r.eval_every_epochs and not last:
                self.save("last")
                continue
            # A model trained at a smaller size than it is evaluated at scores far lower at the eval size
            # (train/test resolution discrepancy: mini trained at 24 px, 86% val at 24 px, 51% at 28 px,
            # 61% with BN re-estimated at 28 px; benchmarks/RESULTS.md). So while a stage trains below
            # the eval size, the model is also evaluated at the stage's own size (top1_stage): the number
            # that says how training goes. Selection (best checkpoint) stays at the eval size.
            t_eval = time.perf_counter()
            at_stage = (
                self.evaluate(self.bundle.val, size=sp.image_size) if sp.image_size != self.info.eval_size else None
            )
            rec = self.record(sp, self.evaluate(self.bundle.val), at_stage)
            if completed and not last:
                self._replan(deadline, sp, s.wall_s - wall0, s.global_step - step0, time.perf_counter() - t_eval)
            # the stage's own figure first: it is the one that says how training goes
            stage_part = (
                f"top1 {at_stage['top1']:.2f}% at {sp.image_size}px; at the {self.info.eval_size}px eval size "
                if at_stage
                else ""
            )
            self.log(
                f"epoch {rec['epoch'] if completed else s.epoch + 1}/{self.planned_epochs} stage {sp.index + 1} "
                f"size {sp.image_size}: {stage_part}top1 {rec['top1']:.2f}% top5 {rec['top5']:.2f}% "
                f"loss {rec['loss']:.4f} ({s.wall_s:.0f}s)"
            )
            improved = rec["top1"] > s.best_top1
            s.best_top1 = max(s.best_top1, rec["top1"])
            if improved:  # best before last: a kill between the two leaves last still naming the old best
                self.save("best")
            self.save("last")
            for cb in self.callbacks:
                cb.on_epoch_end(self, rec)
            if not completed:
                self.log(f"time budget of {r.time_budget_s:.0f}s reached; stopping")
                break
        summary = self.finish(completed)
        call_hooks(self.callbacks, "on_fit_end", self, summary)
        return summary
