"""What a search trial costs and how good it is: the proxy trainer and a synthetic stand-in.

An evaluator is any callable ``evaluate(spec, trial_dir) -> metrics`` returning at least
``top1`` (percent). It may also have:

- ``step_time(spec) -> seconds``: one training step at the proxy size and batch on this device
  (the paper's S); the search normalises it by the backbone's step time;
- ``task``: a :class:`TaskInfo` (input channels, classes, proxy image size, batch) used to count
  parameters and MACs;
- ``describe() -> dict``: what the proxy is, stored in the study for the record.

:class:`ProxyEvaluator` is the real one (short progressive training through
:func:`effv2.training.api.train`, step timing through :func:`effv2.bench.timing.time_train_step`).
:class:`SyntheticEvaluator` is a deterministic function of the stage rows, for tests and for
trying the search machinery (samplers, storage, resume, workers, predictor) in seconds.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..models.efficientnetv2 import EfficientNetV2
from ..models.spec import ArchSpec
from .cost import model_cost


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    in_chans: int = 3
    num_classes: int = 1000
    image_size: int = 224  # proxy image size: where step time and MACs are measured
    batch_size: int = 64  # proxy batch: where step time is measured


def equal_time_epochs(seconds: float, *, step_s: float, steps_per_epoch: int, overhead: float = 1.2) -> int:
    """Epochs of a candidate that fit in ``seconds`` of proxy training: its measured step time x
    steps per epoch x ``overhead`` for data loading and evaluation (pure; at least 1)."""
    if not (seconds > 0 and step_s > 0 and steps_per_epoch >= 1 and overhead >= 1):
        raise UsageError(
            f"equal-time proxy: need seconds, step_s > 0, steps_per_epoch >= 1, overhead >= 1; got "
            f"{seconds!r}, {step_s!r}, {steps_per_epoch!r}, {overhead!r}"
        )
    return max(1, int(seconds // (overhead * step_s * steps_per_epoch)))


def proxy_size_for(train_size: int) -> int:
    """Default proxy size: 3/4 of the backbone's train size, a multiple of 4 (28 px -> 20 px, 192 -> 144)."""
    return max(8, int(round(train_size * 0.75 / 4)) * 4)


# -- the real proxy --------------------------------------------------------------------------
@dataclass(kw_only=True)
class ProxyEvaluator:
    """Train each candidate briefly at a reduced size (paper: about 10 epochs, smaller images).

    The candidate's card (saved by the search as ``trial_dir/spec.json``) carries the proxy size as
    its train and eval size, so the progressive trainer grows images up to the proxy size and
    evaluates there. Accuracy is the val split's (never the test split's).
    """

    data: str
    backbone: str = "efficientnetv2_mini"  # recipe layers are resolved for this model
    data_dir: str | None = None
    epochs: int = 10
    image_size: int = 20  # proxy size
    batch_size: int | None = None  # None: the recipe's
    recipe: str | None = None
    overrides: tuple[str, ...] = ()  # extra recipe overrides, "key=value"
    time_budget_s: float | None = None  # per-trial cap passed to the trainer
    # Equal-time proxy: instead of ``epochs``, each candidate trains for as many epochs as fit in
    # this many seconds, planned from its own measured step time (equal_time_epochs). The proxy
    # accuracy is then accuracy per unit of training time, which is what a same-wall-time final
    # comparison measures; with ``epochs`` fixed, a slow net gets as many epochs as a fast one.
    equal_time_s: float | None = None
    train_subset: int | None = None  # train on a stratified subset of this many images
    val_subset: int | None = None  # evaluate on a stratified subset of this many images
    device: str = "auto"
    seed: int = 0
    timing_steps: int = 5
    timing_warmup: int = 2
    _bundle: Any = field(default=None, init=False, repr=False, compare=False)
    _batch: int | None = field(default=None, init=False, repr=False, compare=False)
    _resolved: list[str] | None = field(default=None, init=False, repr=False, compare=False)
    _recipe: Any = field(default=None, init=False, repr=False, compare=False)
    _steps: dict[ArchSpec, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"proxy epochs: expected at least 1, got {self.epochs}")
        if self.equal_time_s is not None and not self.equal_time_s > 0:
            raise UsageError(f"--proxy-time: expected a positive time, got {self.equal_time_s!r}")

    def __getstate__(self) -> dict[str, Any]:  # workers reload the data themselves
        state = dict(self.__dict__)
        state["_bundle"] = None
        return state

    # -- data and task ----------------------------------------------------------------------
    def bundle(self):
        if self._bundle is None:
            from ..data.order import stratified_split
            from ..data.sources import load_source

            b = load_source(self.data, data_dir=self.data_dir)
            b.test = None  # the search selects on val; the test split stays unseen (and is not evaluated per trial)
            for part, n in (("train", self.train_subset), ("val", self.val_subset)):
                items = getattr(b, part)
                if n is not None and n < len(items):
                    _, keep = stratified_split(items.label_list(), n / len(items), self.seed)
                    setattr(b, part, items.subset(keep))
            self._bundle = b
        return self._bundle

    def _overrides(self) -> list[str]:
        """Recipe overrides of every proxy run: epochs, the proxy size as the progressive maximum and
        the eval size, the first progressive size brought under it if the recipe's is larger, then
        the user's own ``--set`` values (last, so they win)."""
        if self._resolved is None:
            from ..config import resolve_recipe

            out = [f"epochs={self.epochs}", f"eval_size={self.image_size}", f"progressive.max_size={self.image_size}"]
            if self.batch_size is not None:
                out.append(f"batch_size={self.batch_size}")
            if self.time_budget_s is not None:
                out.append(f"time_budget_s={self.time_budget_s:g}")
            source = self.bundle().source
            rec, _ = resolve_recipe(
                self.recipe,
                model=self.backbone,
                dataset=source,
                overrides=out + ["progressive.min_size=1"] + list(self.overrides),
            )
            if "progressive.min_size=" not in " ".join(self.overrides):
                base, _ = resolve_recipe(self.recipe, model=self.backbone, dataset=source)
                out.append(f"progressive.min_size={min(base.progressive.min_size, self.image_size)}")
            self._resolved = out + list(self.overrides)
            self._batch = int(rec.batch_size)
            # The recipe the trainer will run: the step is timed from it (task, optimizer, amp, memory format).
            self._recipe = rec
        return list(self._resolved)

    def batch(self) -> int:
        """The batch the trainer will use (the recipe's unless given), so timing uses the same."""
        self._overrides()  # resolves the recipe once and remembers its batch size
        return int(self._batch or 0)

    @property
    def task(self) -> TaskInfo:
        b = self.bundle()
        return TaskInfo(
            in_chans=b.in_chans, num_classes=b.num_classes, image_size=self.image_size, batch_size=self.batch()
        )

    def describe(self) -> dict[str, Any]:
        # not asdict(): it would deep-copy the loaded data set held in _bundle
        d = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["overrides"] = self._overrides()
        d["kind"] = "proxy"
        d["execution"] = self.execution()  # how step times are measured (as the trainer runs)
        return d

    def _device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    # -- the two measurements ---------------------------------------------------------------
    def execution(self) -> dict[str, Any]:
        """The trainer's execution settings for the proxy runs, resolved for this device (effv2.runtime):
        ``{"amp": "none"|"bf16"|"fp16", "channels_last": bool, "replicas": n, "optimizer": name, "task": name}``
        (replicas as a proxy run trains them, so the timed step S is the trained one)."""
        from ..runtime import resolve_runtime

        self._overrides()
        rec = self._recipe
        rt = resolve_runtime(
            self._device(),
            amp=rec.amp,
            channels_last=rec.channels_last,
            batch_size=self.batch(),
            replicas=rec.replicas,
        )
        return {
            "amp": rt.amp,
            "channels_last": rt.channels_last,
            "replicas": rt.replicas,
            "optimizer": rec.optimizer,
            "task": getattr(rec, "task", "classify"),
        }

    def step_time(self, spec: ArchSpec) -> float:
        """One training step timed as the trainer runs it (the recipe's task, optimizer, amp and
        memory format on this device, effv2.training.build): the paper's S is the step time of real
        training."""
        from ..bench.timing import time_train_step

        t = self.task
        ex = self.execution()
        model = EfficientNetV2(spec, num_classes=t.num_classes, in_chans=t.in_chans)
        res = time_train_step(
            model,
            batch_size=t.batch_size,
            image_size=t.image_size,
            in_chans=t.in_chans,
            num_classes=t.num_classes,
            steps=self.timing_steps,
            warmup=self.timing_warmup,
            device=self._device(),
            amp=ex["amp"],
            channels_last=ex["channels_last"],
            recipe=self._recipe,
            replicas=ex["replicas"],
        )
        self._steps[spec] = float(res["step_s"])  # the equal-time proxy plans from the same timing
        return float(res["step_s"])

    def epochs_for(self, spec: ArchSpec) -> int:
        """This candidate's proxy epochs: ``epochs``, or with ``equal_time_s`` as many as fit in
        that time (from the step time the search measured for the reward, timed here if not)."""
        if self.equal_time_s is None:
            return self.epochs
        step_s = self._steps.get(spec) or self.step_time(spec)
        steps_per_epoch = max(1, len(self.bundle().train) // self.batch())
        return equal_time_epochs(self.equal_time_s, step_s=step_s, steps_per_epoch=steps_per_epoch)

    def __call__(self, spec: ArchSpec, trial_dir: Path) -> dict[str, Any]:
        from ..training.api import train

        card = Path(trial_dir) / "spec.json"
        epochs = self.epochs_for(spec)
        extra = [] if self.equal_time_s is None else [f"epochs={epochs}"]  # else the user's --set epochs wins
        summary = train(
            str(card),
            self.bundle(),
            Path(trial_dir) / "run",
            recipe=self.recipe,
            overrides=self._overrides() + extra,
            seed=self.seed,
            quiet=True,
            device=self.device,
        )
        keys = ("top1", "top5", "best_top1", "train_s", "wall_s", "images_seen", "img_per_s")
        out = {k: summary[k] for k in keys if k in summary}
        out["proxy_epochs"] = epochs
        gc.collect()  # free the trained model (and its CUDA memory) before the next candidate
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return out


# -- the synthetic stand-in ---------------------------------------------------------------------
def synthetic_top1(spec: ArchSpec, base: ArchSpec) -> float:
    """A known, smooth function of the stage rows that behaves like the paper's findings.

    Depth helps with diminishing returns; Fused-MBConv helps in the early half and hurts in the
    late half (paper Table 3); 5x5 kernels help late, hurt early; expansion helps (log); SE helps
    MBConv only. Deterministic, so tests can check that a predictor learns it.
    """
    n = len(spec.stages)
    depth = sum(s.repeats for s in spec.stages)
    base_depth = sum(s.repeats for s in base.stages)
    acc = 60.0 + 25.0 * (1.0 - math.exp(-depth / base_depth))
    for i, s in enumerate(spec.stages):
        late = i / max(1, n - 1)  # 0 for the first stage, 1 for the last
        fused = s.block == "fused"
        acc += 1.5 if fused == (late < 0.5) else -1.5
        acc += 0.8 * (2 * late - 1) if s.kernel >= 5 else 0.0
        acc += 1.0 * math.log(s.expand) / math.log(6)
        acc += (0.6 if not fused else -0.3) if s.se else 0.0
    return min(acc, 99.0)


def synthetic_step_s(spec: ArchSpec, *, macs: int, batch_size: int) -> float:
    """Step time of a made-up device: MACs (x3 for forward + backward), depthwise MBConv layers
    slower per MAC than Fused ones, plus a fixed cost per layer."""
    blocks = [s for s in spec.stages for _ in range(s.repeats)]
    mbconv = sum(s.block == "mbconv" for s in blocks) / len(blocks)
    return 1e-3 + 3 * macs * batch_size / 2e11 * (1.0 + mbconv) + 2e-4 * len(blocks)


@dataclass(kw_only=True)
class SyntheticEvaluator:
    """Deterministic accuracy and step time from the stage rows; ``delay_s`` pretends to train."""

    base: ArchSpec  # the backbone, for the depth normalisation
    image_size: int = 16
    in_chans: int = 1
    num_classes: int = 10
    batch_size: int = 32
    delay_s: float = 0.0

    @property
    def task(self) -> TaskInfo:
        return TaskInfo(
            in_chans=self.in_chans, num_classes=self.num_classes, image_size=self.image_size, batch_size=self.batch_size
        )

    def describe(self) -> dict[str, Any]:
        return {"kind": "synthetic", "image_size": self.image_size, "delay_s": self.delay_s}

    def step_time(self, spec: ArchSpec) -> float:
        macs = model_cost(spec, image_size=self.image_size, in_chans=self.in_chans, num_classes=self.num_classes).macs
        return synthetic_step_s(spec, macs=macs, batch_size=self.batch_size)

    def __call__(self, spec: ArchSpec, trial_dir: Path) -> dict[str, Any]:
        end = time.monotonic() + self.delay_s
        while time.monotonic() < end:  # small sleeps so a kill lands mid-"training"
            time.sleep(0.02)
        return {"top1": synthetic_top1(spec, self.base)}


def check_evaluator(evaluate: Any) -> None:
    if not callable(evaluate):
        raise UsageError(f"evaluate: expected a callable evaluate(spec, trial_dir), got {type(evaluate).__name__}")
