"""The progressive trainer: a short loop whose phases have names.

    fit() -> for each epoch: enter_stage() -> train_epoch() [train_step() ...] -> evaluate() -> save()

Everything random is a pure function of (seed, epoch, batch, rank) in the data pipeline, and the
global RNGs (dropout, stochastic depth) are saved in every checkpoint, so a run resumed from a
step checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..data.loader import Batch, eval_batches, steps_per_epoch, train_batches
from ..data.sources import DataBundle
from ..errors import UsageError
from ..io.atomic import atomic_write_text
from ..io.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from ..models import EfficientNetV2, create_model
from ..models.flops import count_params
from .distributed import Dist, all_reduce_sum, any_true, barrier
from .ema import make_ema
from .lr import lr_at
from .optim import build_optimizer
from .recipe import Recipe, recipe_to_dict
from .report import Progress, append_jsonl, plot_curves, read_jsonl
from .schedule import StageParams, stage_of_epoch, stage_params


# Fault injection for the reliability tests: the process SIGKILLs itself right after this optimizer
# step (after any checkpoint of that step was written). Unset in normal use.
_FAULT_KILL_AT_STEP = int(os.environ.get("EFFV2_FAULT_KILL_AT_STEP", "0") or 0)


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is left intact."""


@dataclass
class TrainState:
    """Where the run is. JSON-able; saved in every checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next batch index inside the epoch
    global_step: int = 0  # optimizer steps taken (skipped non-finite steps not counted)
    images_seen: int = 0
    best_top1: float = -1.0
    wall_s: float = 0.0  # training wall time accumulated over all sessions of the run
    nonfinite_total: int = 0
    nonfinite_run: int = 0  # consecutive non-finite steps
    last_train_loss: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device, batch_size: int | None = None) -> torch.dtype | None:
    """'auto' = effv2's measured fast default for this device (bench.machine.fast_defaults):
    bf16 on CPUs with native bf16 (AMX or AVX512-BF16) and on Ampere+ GPUs, fp16 on older GPUs, off elsewhere."""
    if amp == "auto":
        from ..bench.machine import fast_defaults

        amp = fast_defaults(device, batch_size=batch_size)["amp"]
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def resolve_channels_last(setting: str | bool, device: torch.device) -> bool:
    if setting == "auto":
        from ..bench.machine import fast_defaults

        return bool(fast_defaults(device)["channels_last"])
    return bool(setting)


AMP_NAMES = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_execution(amp: str, channels_last: str | bool, device: torch.device,
                      batch_size: int | None = None) -> dict[str, Any]:
    """How the trainer runs on ``device``: ``{"amp": "none"|"bf16"|"fp16", "channels_last": bool}``,
    the settings step timing must use to time what training actually does."""
    return {"amp": AMP_NAMES[resolve_amp(amp, device, batch_size)],
            "channels_last": resolve_channels_last(channels_last, device)}


def init_overrides(src_spec, model_name: str) -> dict[str, Any]:
    """Padding and BN eps travel with converted weights (tf_ checkpoints need TF 'same' padding)."""
    from ..models import get_card

    own = get_card(model_name).spec
    if own.scaled_stages() != src_spec.scaled_stages() or own.stem_channels != src_spec.stem_channels:
        raise UsageError(f"--init weights are a different architecture from {model_name}; "
                         f"convert them for the matching model")
    return {k: getattr(src_spec, k) for k in ("padding", "bn_eps") if getattr(src_spec, k) != getattr(own, k)}


def load_init_weights(path: str):
    from .inference import load_for_inference

    return load_for_inference(path)


def adapt_and_load(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load pretrained weights for fine-tuning: a new classifier when the class count differs, and a
    stem summed over its RGB filters when the data is grayscale (what timm's adapt_input_conv does)."""
    own = model.state_dict()
    state = dict(state)
    for key in [k for k in state if k.startswith("classifier.")]:
        if key not in own or own[key].shape != state[key].shape:
            del state[key]  # keep the freshly initialised head
    w = state.get("stem.conv.weight")
    if w is not None and w.shape[1] != own["stem.conv.weight"].shape[1]:
        if own["stem.conv.weight"].shape[1] != 1:
            raise UsageError(f"{source}: stem has {w.shape[1]} input channels, the data {own['stem.conv.weight'].shape[1]}")
        state["stem.conv.weight"] = w.sum(dim=1, keepdim=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        bad = (unexpected or [k for k in missing if not k.startswith("classifier.")])[0]
        raise UsageError(f"{source}: weights do not fit the model (first differing key {bad!r})")


def channel_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Fit per-channel mean/std to the data's channel count (grayscale data on an RGB card: average)."""
    if len(values) == channels:
        return tuple(values)
    return (float(sum(values) / len(values)),) * channels


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class Trainer:
    recipe: Recipe
    model_name: str
    bundle: DataBundle
    out_dir: Path
    dist: Dist = field(default_factory=Dist)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quiet: bool = False
    resume: bool = False
    init: str | None = None  # weights to start from (fine-tuning): effv2 convert output or a run's checkpoint

    # -- set-up -------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        r = self.recipe
        seed_everything(r.seed, r.deterministic)
        init = load_init_weights(self.init) if self.init else None
        self.model: EfficientNetV2 = create_model(
            self.model_name, num_classes=len(self.bundle.classes), in_chans=self.bundle.in_chans,
            **(init_overrides(init.model.spec, self.model_name) if init else {}))
        if init is not None and not self.resume:
            adapt_and_load(self.model, init.model.state_dict(), str(self.init))
        self.card = self.model.card
        self.eval_size = r.eval_size or self.card.eval_size
        self.base_dropout, self.base_drop_path = self.card.dropout, self.card.drop_path
        self.mean = channel_stats(self.card.mean, self.bundle.in_chans)
        self.std = channel_stats(self.card.std, self.bundle.in_chans)
        self.amp_dtype = resolve_amp(r.amp, self.device, r.batch_size)
        self.channels_last = resolve_channels_last(r.channels_last, self.device)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model, r.ema_decay) if r.ema_decay > 0 else None
        self.batch_per_rank = r.batch_size // self.dist.world_size
        self.base_lr = r.scaled_lr  # recipe lr is per 256 images
        self.optimizer = build_optimizer(self.model, r, lr=self.base_lr)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.steps_per_epoch = steps_per_epoch(len(self.bundle.train), r.batch_size // self.dist.world_size,
                                               self.dist.world_size)
        self.total_steps = self.steps_per_epoch * r.epochs
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)
        if r.compile:
            self.net = torch.compile(self.net)
        self.state = TrainState()
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.skipped_path = self.out_dir / "skipped.jsonl"
        self._skipped_seen: set[str] = set()
        if self.resume:
            self._load_last()

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def log(self, msg: str) -> None:
        if self.is_main and not self.quiet:
            print(msg, flush=True)

    # -- checkpoints ----------------------------------------------------------------------------
    def _meta_state(self) -> dict[str, Any]:
        return {**self.state.to_dict(), "classes": list(self.bundle.classes), "in_chans": self.bundle.in_chans,
                "num_classes": len(self.bundle.classes), "eval_size": self.eval_size, "model": self.model_name,
                "mean": list(self.mean), "std": list(self.std)}

    def save(self, which: str) -> None:
        """Rank 0 writes; every rank waits so none runs ahead of a checkpoint it may need."""
        if self.is_main:
            save_checkpoint(checkpoint_path(self.out_dir, which), model=self.model, optimizer=self.optimizer,
                            ema=self.ema, state=self._meta_state(), recipe=recipe_to_dict(self.recipe))
        barrier(self.dist)

    def _load_last(self) -> None:
        path = checkpoint_path(self.out_dir, "last")
        if not path.exists():  # killed before its first checkpoint: start over with the same config
            self.log(f"{self.out_dir}: no checkpoint yet; starting the run from the beginning")
            for stale in (self.metrics_path, self.skipped_path):
                stale.unlink(missing_ok=True) if self.is_main else None
            return
        ckpt = load_checkpoint(path, model=self.model, optimizer=self.optimizer, ema=self.ema,
                               restore_rng_state=True)
        self.state = TrainState.from_dict(ckpt.state)
        if self.is_main:  # drop metrics written after the checkpoint we resume from (they will be redone)
            kept = [m for m in read_jsonl(self.metrics_path) if m.get("step", 0) <= self.state.global_step]
            atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
            self._skipped_seen = {r["path"] for r in read_jsonl(self.skipped_path)}
        self.log(f"resumed from {path} at epoch {self.state.epoch} batch {self.state.batch} "
                 f"(step {self.state.global_step})")

    # -- phases -------------------------------------------------------------------------------
    def stage_for(self, epoch: int) -> StageParams:
        p = self.recipe.progressive
        stage = stage_of_epoch(epoch, self.recipe.epochs, p.n_stages if p.enabled else 1)
        return stage_params(stage, p, train_size=self.card.train_size, dropout=self.base_dropout,
                            drop_path=self.base_drop_path)

    def enter_stage(self, sp: StageParams) -> None:
        """Adaptive regularisation: the stage sets dropout and stochastic depth on the model."""
        self.model.set_drop_rate(sp.dropout)
        self.model.set_drop_path_rate(sp.drop_path)
        min_size = self.model.spec.total_stride
        if sp.image_size < min_size:
            raise UsageError(f"image size {sp.image_size} px (stage {sp.index}) is smaller than the model's "
                             f"total stride {min_size}; raise progressive.min_size")

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Soft targets (mixup/cutmix) and hard labels both go through cross_entropy; label smoothing
        # applies to either (PyTorch smooths probability targets too).
        return F.cross_entropy(logits.float(), y, label_smoothing=self.recipe.label_smoothing)

    def train_step(self, batch: Batch) -> tuple[float, bool]:
        """One optimizer step. Returns (loss, stepped). Non-finite steps are skipped on all ranks."""
        r = self.recipe
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(self.state.global_step, steps_per_epoch=self.steps_per_epoch, recipe=r,
                            base_lr=self.base_lr)
        x = batch.x.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.x
        with self._autocast():
            logits = self.net(x)
        loss = self.loss_fn(logits, batch.y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        max_norm = r.grad_clip if r.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # One host transfer per step for both numbers: the finiteness check must precede the step.
        loss_v, norm_v = torch.stack([loss.detach().float(), grad_norm.detach().float()]).tolist()
        bad = not (math.isfinite(loss_v) and math.isfinite(norm_v))
        if any_true(bad, self.dist, self.device):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            return float("nan"), False
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss_v, True

    def _note_skipped(self, records: list[dict]) -> None:
        if not self.is_main:
            return
        for rec in records:
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
        self.log(f"warning: non-finite loss or gradient at step {s.global_step} (epoch {s.epoch}, batch "
                 f"{batch_index}, rank {self.dist.rank}); step skipped ({s.nonfinite_run} in a row)")
        if s.nonfinite_run >= self.recipe.max_nonfinite_steps:
            raise NonFiniteError(
                f"{s.nonfinite_run} non-finite steps in a row at step {s.global_step} (epoch {s.epoch}, batch "
                f"{batch_index}, rank {self.dist.rank}); stopped, last good checkpoint left intact in "
                f"{checkpoint_path(self.out_dir, 'last')}")

    def train_epoch(self, sp: StageParams, deadline: float | None) -> bool:
        """Train the rest of the current epoch. Returns False when the time budget ran out."""
        r, s = self.recipe, self.state
        self.net.train()
        batches = train_batches(
            self.bundle.train, batch_size=self.batch_per_rank, image_size=sp.image_size,
            randaug_magnitude=sp.randaug_magnitude, randaug_ops=r.randaug_ops, mixup_alpha=sp.mixup_alpha,
            cutmix_alpha=sp.cutmix_alpha, num_classes=len(self.bundle.classes), seed=r.seed, epoch=s.epoch,
            start_batch=s.batch, rank=self.dist.rank, world_size=self.dist.world_size,
            num_workers=r.num_workers, device=self.device, mean=self.mean, std=self.std,
            hflip=r.hflip, crop=r.crop, channels_last=self.channels_last)
        bar = Progress(self.steps_per_epoch, f"epoch {s.epoch + 1}/{r.epochs} stage {sp.index + 1} "
                       f"{sp.image_size}px", enabled=self.is_main and not self.quiet, initial=s.batch)
        t_start, losses = time.perf_counter(), []
        try:
            for batch in batches:
                if batch.bad:
                    self._note_skipped(batch.bad)
                loss, stepped = self.train_step(batch)
                self._check_nonfinite(stepped, s.batch)
                s.batch += 1
                if stepped:
                    s.global_step += 1
                    s.images_seen += batch.x.shape[0] * self.dist.world_size
                    losses.append(loss)
                bar.update(batch.x.shape[0] * self.dist.world_size, loss=loss, lr=self.optimizer.param_groups[0]["lr"])
                if r.checkpoint_every_steps and stepped and s.global_step % r.checkpoint_every_steps == 0:
                    s.wall_s += time.perf_counter() - t_start
                    t_start = time.perf_counter()
                    self.save("last")
                if _FAULT_KILL_AT_STEP and s.global_step == _FAULT_KILL_AT_STEP and stepped:
                    os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume tests
                if deadline is not None and time.perf_counter() > deadline:
                    s.wall_s += time.perf_counter() - t_start
                    s.last_train_loss = float(np.mean(losses)) if losses else float("nan")
                    return False
        finally:
            bar.close()
        s.wall_s += time.perf_counter() - t_start
        s.last_train_loss = float(np.mean(losses)) if losses else float("nan")
        s.epoch, s.batch = s.epoch + 1, 0
        return True

    @torch.no_grad()
    def evaluate(self, imageset, model: nn.Module | None = None, size: int | None = None) -> dict[str, float]:
        model = model if model is not None else self.eval_model
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # correct1, correct5, loss_sum, n
        for batch in eval_batches(imageset, batch_size=self.recipe.eval_batch_size, image_size=size or self.eval_size,
                                  rank=self.dist.rank, world_size=self.dist.world_size,
                                  num_workers=self.recipe.num_workers, device=self.device, mean=self.mean,
                                  std=self.std, channels_last=self.channels_last):
            if batch.bad:
                self._note_skipped(batch.bad)
            if batch.y.shape[0] == 0:  # every file of this eval batch was unreadable
                continue
            with self._autocast():
                logits = model(batch.x).float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices  # (B, k)
            hit = top.eq(batch.y[:, None])
            totals += torch.stack([hit[:, 0].sum(), hit.any(1).sum(),
                                   F.cross_entropy(logits, batch.y, reduction="sum"),
                                   torch.tensor(batch.y.shape[0], device=self.device)]).double()
        all_reduce_sum(totals, self.dist)
        model.train(was_training)
        n = max(totals[3].item(), 1.0)
        return {"top1": 100 * totals[0].item() / n, "top5": 100 * totals[1].item() / n,
                "loss": totals[2].item() / n, "n": int(totals[3].item())}

    @property
    def eval_model(self) -> nn.Module:
        # The EMA model is what the official code evaluates and exports.
        return self.ema.module if self.ema is not None else self.model

    def record(self, sp: StageParams, ev: dict[str, float]) -> dict[str, Any]:
        s = self.state
        rec = {"epoch": s.epoch, "stage": sp.index, "image_size": sp.image_size, "eval_size": self.eval_size,
               "top1": round(ev["top1"], 4), "top5": round(ev["top5"], 4), "loss": round(ev["loss"], 6),
               "train_loss": round(s.last_train_loss, 6), "lr": self.optimizer.param_groups[0]["lr"],
               "images_seen": s.images_seen, "wall_s": round(s.wall_s, 2), "step": s.global_step,
               "randaug": sp.randaug_magnitude, "mixup": sp.mixup_alpha, "cutmix": sp.cutmix_alpha,
               "dropout": sp.dropout, "ema": self.ema is not None}
        if self.is_main:
            append_jsonl(self.metrics_path, rec)
        return rec

    # -- the whole run ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        r, s = self.recipe, self.state
        self.log(f"training {self.model_name} ({count_params(self.model):,} params) on {self.bundle.source}: "
                 f"{len(self.bundle.train):,} images, {len(self.bundle.classes)} classes, {r.epochs} epochs, "
                 f"batch {r.batch_size}, amp {self.amp_dtype or 'off'}, channels_last {self.channels_last}, "
                 f"world {self.dist.world_size}")
        if self.is_main and self.bundle.skipped:
            self._note_skipped(self.bundle.skipped)
        deadline = time.perf_counter() + max(r.time_budget_s - s.wall_s, 0) if r.time_budget_s > 0 else None
        completed = True
        while s.epoch < r.epochs:
            sp = self.stage_for(s.epoch)
            self.enter_stage(sp)
            completed = self.train_epoch(sp, deadline)
            if completed and s.epoch % r.eval_every_epochs and s.epoch < r.epochs:
                self.save("last")
                continue
            rec = self.record(sp, self.evaluate(self.bundle.val))
            self.log(f"epoch {rec['epoch'] if completed else s.epoch + 1}/{r.epochs} stage {sp.index + 1} "
                     f"size {sp.image_size}: top1 {rec['top1']:.2f}% top5 {rec['top5']:.2f}% "
                     f"loss {rec['loss']:.4f} ({s.wall_s:.0f}s)")
            improved = rec["top1"] > s.best_top1
            s.best_top1 = max(s.best_top1, rec["top1"])
            self.save("last")
            if improved:
                self.save("best")
            if not completed:
                self.log(f"time budget of {r.time_budget_s:.0f}s reached; stopping")
                break
        return self.finish(completed)

    def finish(self, completed: bool) -> dict[str, Any]:
        s = self.state
        metrics = read_jsonl(self.metrics_path) if self.is_main else []
        final = metrics[-1] if metrics else {}
        summary: dict[str, Any] = {
            "model": self.model_name, "data": self.bundle.source, "params": count_params(self.model),
            "epochs": s.epoch, "completed": completed, "top1": final.get("top1"), "top5": final.get("top5"),
            "best_top1": s.best_top1, "train_s": round(s.wall_s, 2), "wall_s": round(s.wall_s, 2),
            "images_seen": s.images_seen, "img_per_s": round(s.images_seen / max(s.wall_s, 1e-9), 1),
            "nonfinite_steps": s.nonfinite_total, "skipped_files": len(self._skipped_seen),
            "run_dir": str(self.out_dir), "effv2_version": __version__, "torch_version": torch.__version__,
        }
        if self.bundle.test is not None and self.bundle.test is not self.bundle.val:
            test = self.evaluate(self.bundle.test)
            summary.update(test_top1=round(test["top1"], 4), test_top5=round(test["top5"], 4), test_n=test["n"])
        elif self.bundle.test is not None:
            summary.update(test_top1=final.get("top1"), test_top5=final.get("top5"))
        if self.is_main:
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            with contextlib.suppress(Exception):  # a plot must never fail a finished run
                plot_curves(metrics, self.out_dir / "curves.png",
                            title=f"{self.model_name} on {self.bundle.source}")
            self.print_summary(summary)
        return summary

    def print_summary(self, summary: dict[str, Any]) -> None:
        if self.quiet:
            return
        lines = [f"done: {summary['model']} on {summary['data']}, {summary['epochs']} epochs in "
                 f"{summary['train_s']:.0f}s ({summary['img_per_s']:.0f} img/s)",
                 f"  eval top1 {summary['top1']:.2f}%  best {summary['best_top1']:.2f}%"]
        if "test_top1" in summary and summary["test_top1"] is not None:
            lines.append(f"  test top1 {summary['test_top1']:.2f}%  top5 {summary['test_top5']:.2f}%")
        if summary["skipped_files"]:
            lines.append(f"  skipped {summary['skipped_files']} unreadable files (see {self.skipped_path})")
        if summary["nonfinite_steps"]:
            lines.append(f"  skipped {summary['nonfinite_steps']} non-finite steps")
        lines.append(f"  run folder: {summary['run_dir']}")
        print("\n".join(lines), flush=True)
