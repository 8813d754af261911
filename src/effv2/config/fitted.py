"""The "data-fitted" recipe layer: defaults measured from an image folder or CSV with no recipe of its own.

The shipped recipes are tuned for named data sets; a folder someone points ``--data`` at gets the
generic ``base`` recipe, whose dataclass defaults (10 epochs, batch 128, the model's 192-300 px
sizes, RandAugment 5 -> 15 with the official absolute-pixel ops) fit ImageNet, not 1,500 images of
28 px (10 steps an epoch, 100 steps in all, every image upsampled 7x and translated off the canvas).
This layer fills, from a few measured facts, what no recipe, ``--set`` or ``--epochs`` has set:

    batch_size     largest power of two <= train images / 40 (>= 40 steps an epoch), clamped to
                   [16, 128], and never above the training set (then its largest power of two)
    epochs         raised so the run has at least MIN_STEPS optimizer steps (never below the
                   epochs the lower layers give, never above MAX_EPOCHS); not set when a time
                   budget plans the run (the plan decides the length)
    sizes          only when the images are smaller than the model's train size: max_size and
                   eval_size = the median shorter side rounded up to a multiple of 8, at least the
                   model's total stride and at most its train/eval size; min_size = 3/4 of it
                   rounded to a multiple of 8 (at least the stride)
    randaug_impl   "torchvision" below 224 px: its translate/shear are fractions of the image, where
                   the official ops translate up to 10 px per magnitude unit (wiping a 28 px image)
    randaug_*      max = 15 x size / 300 (the paper's 15 at 300 px, scaled with the size like its
                   Table 6), clamped to [2, 15]; min = max / 3 (the paper's 5 -> 15)

The layer sits just above the dataset layer (defaults <- model <- dataset <- data-fitted <- recipe
<- overrides <- filled), so every recipe key and ``--set`` still wins; values it derives from a key
set above it (epochs from a given batch size, min_size from a given max_size) use that key's value.
Everything here is a pure function of :class:`DataFacts` and the upper layers' keys;
:func:`measure_facts` reads the facts from a loaded DataBundle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

LAYER = "data-fitted"
MIN_STEPS = 1000  # optimizer steps a run gets at least (benchmarks/RESULTS.md "Defaults fitted to a folder")
MAX_EPOCHS = 200  # bound for tiny folders (8 images would otherwise ask for 1,000 epochs)
STEPS_PER_EPOCH = 40  # the batch is chosen so an epoch has at least this many steps
BATCH_MIN, BATCH_MAX = 16, 128
OFFICIAL_RANDAUG_FROM = 224  # px: below this the official absolute-pixel ops are replaced by torchvision's
SIDE_SAMPLE = 256  # images whose headers are read for the median side


@dataclass(frozen=True)
class DataFacts:
    """What the layer is fitted to, measured on the training split."""

    images: int  # training images (after the val hold-out)
    classes: int
    median_side: int  # median shorter side in px of ``sampled`` training images
    sampled: int  # images whose size was read (an evenly spaced sample)

    def describe(self) -> str:
        return (
            f"measured: {self.images} training images, {self.classes} classes, median shorter side "
            f"{self.median_side} px (of {self.sampled} sampled)"
        )


def _round8(x: float) -> int:
    return max(8, int(math.floor(x / 8 + 0.5)) * 8)


def _ceil8(x: float) -> int:
    return max(8, int(math.ceil(x / 8)) * 8)


def fit_batch_size(images: int) -> int:
    """Power of two with >= STEPS_PER_EPOCH steps an epoch, in [BATCH_MIN, BATCH_MAX], <= ``images``."""
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    target = max(1, images // STEPS_PER_EPOCH)
    batch = min(BATCH_MAX, max(BATCH_MIN, 1 << (target.bit_length() - 1)))
    while batch > images:
        batch //= 2
    return batch


def fit_epochs(images: int, batch_size: int, epochs: int, *, min_steps: int | None = None) -> int:
    """``epochs`` raised so that epochs x (images // batch_size) >= min_steps (None: MIN_STEPS), at
    most MAX_EPOCHS."""
    min_steps = MIN_STEPS if min_steps is None else min_steps
    per_epoch = max(1, images // batch_size)
    return max(epochs, min(MAX_EPOCHS, -(-min_steps // per_epoch)))


def fit_sizes(median_side: int, *, train_size: int, eval_size: int, stride: int) -> dict[str, int] | None:
    """``{"min_size", "max_size", "eval_size"}`` near the images' resolution; None when the images are
    at least the model's train size (its own sizes then apply)."""
    if median_side >= train_size:
        return None
    top = max(stride, min(train_size, _ceil8(median_side)))
    return {
        "min_size": max(stride, min(top, _round8(0.75 * top))),
        "max_size": top,
        "eval_size": max(stride, min(eval_size, _ceil8(median_side))),
    }


def fit_min_size(max_size: int, stride: int) -> int:
    """Stage 0's size for a given last-stage size: 3/4 of it, a multiple of 8, at least the stride."""
    return max(stride, min(max_size, _round8(0.75 * max_size)))


def fit_randaugment(size: int) -> dict[str, Any]:
    """RandAugment for a last-stage size: implementation and magnitude range."""
    top = round(min(15.0, max(2.0, 15.0 * size / 300)), 1)
    out: dict[str, Any] = {"randaug_min": round(top / 3, 1), "randaug_max": top}
    if size < OFFICIAL_RANDAUG_FROM:
        out["randaug_impl"] = "torchvision"
    return out


def fitted_layer(
    facts: DataFacts,
    *,
    train_size: int,
    eval_size: int,
    stride: int,
    lower: dict[str, Any],
    upper: dict[str, Any],
    default_epochs: int = 10,
) -> dict[str, Any]:
    """The layer's flat patch (dotted keys). ``lower``: the flat keys the layers below set (their
    ``epochs``, else ``default_epochs``, is the floor); ``upper``: the flat keys of the recipe and
    overrides above it, which the patch leaves alone and takes as given where a fitted value
    depends on them."""
    out: dict[str, Any] = {}
    batch = upper.get("batch_size")
    if batch is None:
        batch = out["batch_size"] = fit_batch_size(facts.images)
    if not {"epochs", "max_steps", "time_budget"} & set(upper):
        floor = lower.get("epochs", default_epochs)
        epochs = fit_epochs(facts.images, batch, floor)
        if epochs != floor:
            out["epochs"] = epochs
    sizes = (
        fit_sizes(facts.median_side, train_size=train_size, eval_size=eval_size, stride=stride)
        if facts.median_side > 0
        else None  # no readable header: the model's sizes
    )
    top = upper.get("progressive.max_size")  # null when a recipe leaves it to the "filled" layer
    if sizes is not None:
        if "progressive.max_size" not in upper:
            out["progressive.max_size"] = top = sizes["max_size"]
        if "progressive.min_size" not in upper:
            out["progressive.min_size"] = fit_min_size(top if top is not None else sizes["max_size"], stride)
        if "eval_size" not in upper:
            out["eval_size"] = sizes["eval_size"]
    size = top if top is not None else train_size
    aug = fit_randaugment(size)
    if "randaug_impl" in upper or upper.get("augment", "randaugment") != "randaugment":
        aug.pop("randaug_impl", None)
    lo, hi = upper.get("progressive.randaug_min"), upper.get("progressive.randaug_max")
    if hi is None:
        out["progressive.randaug_max"] = hi = aug["randaug_max"]
    if lo is None:
        out["progressive.randaug_min"] = min(aug["randaug_min"], hi)
    if "randaug_impl" in aug:
        out["randaug_impl"] = aug["randaug_impl"]
    return out


def measure_facts(bundle: Any, *, sample: int = SIDE_SAMPLE) -> DataFacts:
    """The facts of a loaded DataBundle's training split (image headers only, no decoding)."""
    from ..data.folders import median_short_side
    from ..data.imagesets import FileImageSet

    train = bundle.train
    if isinstance(train, FileImageSet):
        side, sampled = median_short_side(train.paths, limit=sample)
    else:  # in-memory (N, C, H, W): every image has the same size
        side, sampled = int(min(train.images.shape[-2:])), len(train)
    return DataFacts(images=len(train), classes=len(bundle.classes), median_side=side, sampled=sampled)


def facts_record(facts: DataFacts) -> dict[str, Any]:
    """The facts as config.json records them (under the layer's "facts")."""
    return asdict(facts)
