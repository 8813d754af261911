"""The recipe schema: one typed tree of frozen dataclasses, each checking itself when built.

``Recipe`` is the root; a field whose type is a dataclass is a nested section (today
``progressive``), handled by walker.py purely by its type. Every class calls ``check_fields``
first in ``__post_init__`` (types, ints to floats, lists to tuples), then checks its ranges and
cross-field rules, naming the dotted key of each offending value.

Units: ``lr``, ``warmup_lr`` and ``min_lr`` are per 256 images. The trainer uses
``lr * batch_size / 256`` (the official code's ``lr_base * batch_size / 256``), and ``warmup_lr`` and
``min_lr`` scale the same way (the official code scales ``lr_min`` likewise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import UsageError
from . import walker
from .values import RecipeError, parse_duration, require
from .walker import check_fields

# Per-optimizer epsilon when ``eps`` is null: TF RMSProp as the official code (1e-3), torch AdamW's 1e-8.
DEFAULT_EPS = {"rmsprop_tf": 1e-3, "adamw": 1e-8, "sgd": 0.0}


@dataclass(frozen=True)
class ProgressiveConfig:
    """Progressive learning with adaptive regularization (paper Algorithm 1; see schedule.py)."""

    enabled: bool = True  # false: one stage at max_size with every regularization at its max
    variant: Literal["paper", "code"] = "paper"  # "paper": Algorithm 1 / Table 6; "code": the released code
    n_stages: int = 4  # M in the paper (4 on ImageNet); epochs are split evenly, later stages take the rest
    min_size: int = 128  # image size of stage 0 ("paper"); the "code" size rule starts from it too
    max_size: int | None = None  # image size of the last stage; null = the model's train size (see max_size_from)
    max_size_from: Literal["train", "eval"] = "train"  # which model size a null max_size becomes ("eval": fine-tuning)
    randaug_min: float = 5  # RandAugment magnitude of stage 0 (scale 10; values above 10 extrapolate)
    randaug_max: float = 15  # RandAugment magnitude of the last stage
    mixup_min: float = 0  # Mixup alpha of stage 0 (0 = off)
    mixup_max: float = 0  # Mixup alpha of the last stage
    cutmix_min: float = 0  # CutMix alpha of stage 0 (0 = off; the "code" variant sets cutmix = mixup)
    cutmix_max: float = 0  # CutMix alpha of the last stage
    dropout_min: float = 0.1  # classifier dropout of stage 0 ("paper" only; "code" keeps dropout fixed)
    dropout_max: float | None = None  # dropout of the last stage; null = the model's dropout
    drop_path_min: float | None = None  # stochastic depth of stage 0; null = no schedule (fixed at drop_path_max)
    drop_path_max: float | None = None  # stochastic depth of the last stage; null = the model's drop_path
    # with a time budget: progressive only when the plan fits at least this many epochs, else every step
    # at the last stage's size (as enabled=false); 0 = always progressive (training/budget.py)
    min_epochs: float = 0
    # the regularization of that fixed-size fallback: the last stage's ("last", as enabled=false) or the
    # first stage's ("first": RandAugment, Mixup, CutMix, dropout and drop_path at stage 0's values)
    fallback_regularization: Literal["last", "first"] = "last"

    _bool_key = "enabled"  # `progressive: false` in a layer is `progressive.enabled: false`

    def __post_init__(self) -> None:
        check_fields(self, "progressive.")
        k = "progressive."
        require(self.n_stages >= 1, k + "n_stages", "must be an integer >= 1", self.n_stages)
        require(self.min_epochs >= 0, k + "min_epochs", "must be >= 0", self.min_epochs)
        require(self.min_size >= 1, k + "min_size", "must be a positive image size", self.min_size)
        require(
            self.max_size is None or self.max_size >= 1,
            k + "max_size",
            "must be a positive image size or null",
            self.max_size,
        )
        for name in ("randaug", "mixup", "cutmix"):
            for end in ("min", "max"):
                v = getattr(self, f"{name}_{end}")
                require(v >= 0, f"{k}{name}_{end}", "must be >= 0", v)
        for name in ("dropout_min", "dropout_max", "drop_path_min", "drop_path_max"):
            v = getattr(self, name)
            problem = "must be in [0, 1)" + ("" if name == "dropout_min" else " or null")
            require(v is None or 0 <= v < 1, k + name, problem, v)
        if not self.enabled:
            return  # a single stage uses only the max values; stale min values are harmless
        # Regularization grows with image size (the paper's premise): every min <= its max.
        if self.max_size is not None:
            require(
                self.min_size <= self.max_size,
                k + "min_size",
                f"must be <= progressive.max_size={self.max_size} (or set progressive.enabled=false)",
                self.min_size,
            )
        for name in ("randaug", "mixup", "cutmix"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            require(lo <= hi, f"{k}{name}_min", f"must be <= progressive.{name}_max={hi}", lo)
        if self.variant == "paper" and self.dropout_max is not None:
            require(
                self.dropout_min <= self.dropout_max,
                k + "dropout_min",
                f"must be <= progressive.dropout_max={self.dropout_max}",
                self.dropout_min,
            )
        if self.drop_path_min is not None and self.drop_path_max is not None:
            require(
                self.drop_path_min <= self.drop_path_max,
                k + "drop_path_min",
                f"must be <= progressive.drop_path_max={self.drop_path_max}",
                self.drop_path_min,
            )


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs besides the model and the data. Saved as config.json["recipe"]."""

    # -- identity
    name: str = "base"  # the recipe's name (a shipped recipe's file stem, or a user file's stem)
    description: str = ""  # one paragraph: what it is for and why the numbers are what they are
    follows: str = ""  # the source it follows, e.g. "paper Table 6" or "official code datasets.py"
    # -- what one step computes (effv2.training.tasks: a registered name, checked when the run is built)
    task: str = "classify"  # "classify": supervised cross-entropy; techniques register their own tasks
    # -- length and batch
    epochs: int = 10  # training epochs; progressive stages split them (schedule.stage_bounds)
    # stop after this many optimizer steps (0 = epochs x steps per epoch): the last epoch may then be
    # partial and the lr decays over max_steps; the time-budget plan sets it so the schedule fills the budget
    max_steps: int = 0
    batch_size: int = 128  # global batch (all processes together); per process = batch_size / world size
    eval_batch_size: int = 256  # batch for evaluation (no gradients, so larger is fine)
    # -- optimizer (optim.py)
    optimizer: Literal["sgd", "adamw", "rmsprop_tf"] = "sgd"
    lr: float = 0.1  # peak learning rate per 256 images; the trainer uses lr * batch_size / 256
    momentum: float = 0.9  # SGD momentum / RMSProp momentum (unused by AdamW)
    nesterov: bool = False  # SGD only
    weight_decay: float = 1e-5  # on conv/linear weights only; L2 on the gradient (sgd, rmsprop_tf), decoupled (adamw)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    eps: float | None = None  # null = per-optimizer default: rmsprop_tf 1e-3 (inside the sqrt), adamw 1e-8
    rmsprop_decay: float = 0.9  # RMSProp's square-average decay (TF "decay", torch "alpha")
    # -- learning-rate schedule (lr.py)
    lr_schedule: Literal["cosine", "linear", "exponential", "constant", "step"] = "cosine"
    warmup_epochs: float = 0  # linear warmup length (may be fractional); warmup steps = int(epochs * steps/epoch)
    warmup_lr: float = 0  # lr at step 0 of the warmup, per 256 images like lr (0 = from zero, as the official code)
    min_lr: float = 0  # floor: cosine ends here; exponential and step never go below; per 256 images like lr
    decay_rate: float = 0.97  # exponential/step: multiply the lr by this ...
    decay_epochs: float = 2.4  # ... every this many epochs (staircase, clock starting at step 0 like TF)
    # -- loss and weights
    label_smoothing: float = 0.1
    ema_decay: float = 0  # EMA of weights and BN statistics (0 = off); TF warm-up min(decay, (1+n)/(10+n))
    grad_clip: float = 0  # max global gradient norm (0 = off)
    # -- speed
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # auto = fast_defaults: bf16 on AMX CPUs and Ampere+ GPUs
    # auto = effv2.bench.machine.fast_defaults (measured: on for CPU and CUDA)
    channels_last: Literal["auto"] | bool = "auto"
    # torch.compile the model (static shapes: one graph per image size). "auto": only a time-budgeted run
    # of 5 minutes or more on a CPU that computes bf16 natively tries it, and keeps it only when the
    # compiled plan has at least 1.05x the eager plan's steps (training/budget.py, compile_candidate)
    compile: Literal["auto"] | bool = False
    # train a shard of each batch per CPU core, one thread each, in one process (runtime/replicas.py).
    # "auto": as many as torch's intra-op threads on a CPU in fp32 (measured there), eager, one process,
    # 16 images a shard at least; else 1. BatchNorm then normalises each shard by itself, as under DDP
    replicas: Literal["auto"] | int = "auto"
    # -- progressive learning (schedule.py)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    # -- data
    eval_size: int | None = None  # evaluation image size; null = the model's eval size
    # average the logits of each image and its mirror when evaluating: true = every evaluation; "auto" = the
    # per-epoch evaluations without, then the best checkpoint on validation both ways and the better one
    # (validation decides, never test) for the final test evaluation
    eval_flip: Literal["auto"] | bool = False
    randaug_ops: int = 2  # RandAugment ops per image (the official code: 2 of 16)
    # official: the 16-op pool and level_to_arg of google/automl's autoaugment.py, an op per image;
    # torchvision: torchvision's RandAugment on the official magnitude scale, an op per 8 images
    randaug_impl: Literal["official", "torchvision"] = "official"
    hflip: bool = True  # random horizontal flips in training
    # auto: pad_crop for in-memory sets (Fashion-MNIST, CIFAR), random_resized for image files
    crop: Literal["auto", "pad_crop", "random_resized", "none"] = "auto"
    # random_resized crops: the area range as fractions of the image. (0.08, 1) is torchvision's and
    # EfficientNetV1's; the official V2 ImageNet code uses (0.05, 1) (preprocessing.py:35 @6a54c87)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # the per-image policy after crop and flip: "randaugment" (randaug_* and the stage's magnitude),
    # "autoaugment" (the official policy v0, data/autoaugment.py: the B0-B3 configs), "none"
    augment: Literal["randaugment", "autoaugment", "none"] = "randaugment"
    # one noise-filled square of side cutout x image size per image, after the policy (0 = off; the
    # official fine-tuning: 0.5, i.e. pad_size = size // 4, preprocessing.py:102-106 @6a54c87)
    cutout: float = 0
    # cross-replica BatchNorm when more than one process trains: "auto" = on for CUDA (torch's
    # SyncBatchNorm), true = also on CPU (effv2's all-reduce BN: torch's rejects CPU tensors), false = off
    sync_bn: Literal["auto"] | bool = False
    # -- run control
    checkpoint_every_steps: int = 0  # also save checkpoints/last every N optimizer steps (0 = only at epoch ends)
    eval_every_epochs: int = 1  # evaluate every N epochs (and always after the last)
    max_nonfinite_steps: int = 5  # stop after this many non-finite steps in a row (each one is skipped)
    num_workers: int = 0  # data loader worker processes (0 = in the training process)
    # seeded, stratified hold-out of train used for per-epoch evaluation and the best checkpoint;
    # 0 = no hold-out, allowed only for sources with a val split of their own (a val/ folder, split=val rows)
    val_fraction: float = 0.1
    seed: int = 0  # seeds weights, data order and augmentation
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; bitwise repeatable runs)
    time_budget_s: float = 0  # stop cleanly (checkpoint, summary) after this much training time; 0 = no budget
    # Plan the run to fit this wall time ("10m", "2h"; `--time-budget`): the epochs come from step
    # times measured at each progressive stage's size before training (training/budget.py), recorded
    # in config.json; it is also the hard stop when time_budget_s is 0. null: epochs as given.
    time_budget: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # also builds Recipe(progressive={...}) from the dict
        for key in ("epochs", "batch_size", "eval_batch_size", "eval_every_epochs", "max_nonfinite_steps"):
            require(getattr(self, key) >= 1, key, "must be an integer >= 1", getattr(self, key))
        for key in ("randaug_ops", "checkpoint_every_steps", "num_workers", "seed", "max_steps"):
            require(getattr(self, key) >= 0, key, "must be an integer >= 0", getattr(self, key))
        for key in ("weight_decay", "warmup_epochs", "grad_clip", "time_budget_s"):
            require(getattr(self, key) >= 0, key, "must be >= 0", getattr(self, key))
        if self.time_budget is not None:
            try:
                parse_duration(self.time_budget, "recipe key time_budget:")
            except UsageError as exc:
                raise RecipeError("time_budget", str(exc).split(": ", 1)[-1]) from None
        require(
            self.replicas == "auto" or self.replicas >= 1, "replicas", "must be auto or an integer >= 1", self.replicas
        )
        require(self.lr > 0, "lr", "must be > 0", self.lr)
        require(0 <= self.warmup_lr <= self.lr, "warmup_lr", f"must be in [0, lr={self.lr}]", self.warmup_lr)
        require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}]", self.min_lr)
        require(
            self.warmup_epochs <= self.epochs, "warmup_epochs", f"must be <= epochs={self.epochs}", self.warmup_epochs
        )
        require(0 < self.decay_rate <= 1, "decay_rate", "must be in (0, 1]", self.decay_rate)
        require(self.decay_epochs > 0, "decay_epochs", "must be > 0", self.decay_epochs)
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        require(not self.nesterov or self.momentum > 0, "nesterov", "needs momentum > 0", self.nesterov)
        require(all(0 <= b < 1 for b in self.betas), "betas", "each must be in [0, 1)", list(self.betas))
        require(self.eps is None or self.eps > 0, "eps", "must be > 0 or null", self.eps)
        require(0 <= self.rmsprop_decay < 1, "rmsprop_decay", "must be in [0, 1)", self.rmsprop_decay)
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)", self.label_smoothing)
        require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 = off)", self.ema_decay)
        require(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)", self.val_fraction)
        lo, hi = self.crop_scale
        require(0 < lo <= hi <= 1, "crop_scale", "must be [min, max] with 0 < min <= max <= 1", list(self.crop_scale))
        require(0 <= self.cutout <= 1, "cutout", "must be in [0, 1] (0 = off)", self.cutout)
        require(
            self.eval_size is None or self.eval_size >= 1,
            "eval_size",
            "must be a positive image size or null",
            self.eval_size,
        )

    @property
    def optimizer_eps(self) -> float:
        """``eps``, or the optimizer's default when null."""
        return DEFAULT_EPS[self.optimizer] if self.eps is None else self.eps

    @property
    def scaled_lr(self) -> float:
        """The peak lr the trainer uses: ``lr * batch_size / 256``."""
        return self.lr * self.batch_size / 256


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """A JSON-ready dict (nested ``progressive``, ``betas`` as a list); ``recipe_from_dict`` inverts it."""
    return walker.to_dict(recipe)


def recipe_from_dict(d: dict[str, Any], *, where: str = "recipe") -> Recipe:
    """Build and validate a recipe from a (possibly partial) dict; missing keys take the defaults."""
    return walker.from_dict(Recipe, d, where=where)


def valid_keys() -> list[str]:
    """Every key `--set` accepts, dotted for nested fields."""
    return walker.valid_keys(Recipe)
