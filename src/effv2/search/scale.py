"""Compound scaling with EfficientNetV2's caps, and latency-aware compound scaling (LACS).

Compound scaling (EfficientNet): one knob phi scales depth by alpha^phi, width by beta^phi and
image size by gamma^phi (alpha = 1.2, beta = 1.1, gamma = 1.15 by default). phi is solved by
bisection on the real count of the scaled model (parameters or MACs, counted exactly on the meta
device) or on its latency measured on this device.

EfficientNetV2's changes (paper section 3.3, "S to M/L"): the image size is capped (480 px by
default); the compute the capped resolution would have added, (r_uncapped / r_capped)^2, is
added instead as extra layers in the last stages (2 by default), the way M and L grow stages 5
and 6 more than S does.

LACS (EfficientNet-X, Li et al. 2021): instead of fixed coefficients, search (alpha, beta, gamma)
so that the model scaled to a latency target maximises ``accuracy_proxy * (latency / target)^w``.
Their finding, kept here as a prior of the grid: depth grows at least as fast as width and size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import UsageError
from ..models.efficientnetv2 import EfficientNetV2
from ..models.spec import ModelCard
from .cost import REWARD_W, model_cost, model_params

TARGETS: tuple[str, ...] = ("params", "macs", "latency_ms")
MAX_MULT = 16.0  # ArchSpec's bound on width_mult / depth_mult

Measure = Callable[[ModelCard], float]  # latency in ms of a card on this device


@dataclass(frozen=True, kw_only=True)
class Coefficients:
    alpha: float = 1.2  # depth: layers x alpha^phi
    beta: float = 1.1  # width: channels x beta^phi
    gamma: float = 1.15  # resolution: image size x gamma^phi

    def __post_init__(self) -> None:
        for k in ("alpha", "beta", "gamma"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not 1.0 <= v <= 4.0:
                raise UsageError(f"--{k}: expected a number in [1, 4], got {v!r}")
        if self.alpha == self.beta == self.gamma == 1.0:
            raise UsageError("coefficients: alpha, beta and gamma are all 1; nothing would scale")


@dataclass(frozen=True, kw_only=True)
class ScaleLimits:
    max_size: int = 480  # V2's cap on the eval image size
    extra_stages: int = 2  # stages that take the capped resolution's compute as extra layers
    size_divisor: int = 4  # image sizes are rounded to a multiple of this

    def __post_init__(self) -> None:
        if self.max_size < 8 or self.size_divisor < 1 or self.extra_stages < 0:
            raise UsageError("scale limits: need max_size >= 8, size_divisor >= 1, extra_stages >= 0")


def _round_size(x: float, divisor: int) -> int:
    return max(divisor, int(round(x / divisor)) * divisor)


def compound_scale(
    card: ModelCard, phi: float, coeffs: Coefficients = Coefficients(), limits: ScaleLimits = ScaleLimits()
) -> ModelCard:
    """The card scaled by ``phi``: depth and width multipliers, image sizes, V2's cap and extra layers."""
    d, w, r = coeffs.alpha**phi, coeffs.beta**phi, coeffs.gamma**phi
    spec = card.spec
    width, depth = spec.width_mult * w, spec.depth_mult * d
    if not (0 < width <= MAX_MULT and 0 < depth <= MAX_MULT):
        raise UsageError(f"phi={phi:.3g} gives width x{width:.3g}, depth x{depth:.3g}: outside (0, {MAX_MULT:g}]")
    smallest = max(limits.size_divisor, spec.total_stride)
    want_eval = card.eval_size * r
    eval_size = max(smallest, min(_round_size(want_eval, limits.size_divisor), limits.max_size))
    train_size = max(
        smallest, min(_round_size(eval_size * card.train_size / card.eval_size, limits.size_divisor), eval_size)
    )
    rows = spec.stages
    extra = 1.0
    if want_eval > limits.max_size and limits.extra_stages:
        extra = (want_eval / eval_size) ** 2  # the MACs the capped resolution would have added
        k = min(limits.extra_stages, len(rows))
        rows = rows[:-k] + tuple(replace(s, repeats=math.ceil(s.repeats * extra)) for s in rows[-k:])
    new_spec = replace(spec, stages=rows, width_mult=round(width, 6), depth_mult=round(depth, 6))
    note = (
        f"compound-scaled from {card.name}: phi {phi:.4g} (alpha {coeffs.alpha:g}, beta {coeffs.beta:g}, "
        f"gamma {coeffs.gamma:g}): depth x{d:.3f}, width x{w:.3f}, size {card.eval_size} -> {eval_size} px"
        + (
            f" (capped at {limits.max_size}; last {limits.extra_stages} stages x{extra:.2f} layers)"
            if extra > 1
            else ""
        )
    )
    return replace(
        card,
        name=f"{card.name}_phi{phi:.3g}",
        spec=new_spec,
        train_size=train_size,
        eval_size=eval_size,
        notes=note,
        tags=tuple(card.tags) + ("scaled",),
    )


@dataclass(frozen=True, kw_only=True)
class ScaleResult:
    card: ModelCard
    phi: float
    target: str
    value: float
    achieved: dict[str, float]  # params, macs (at eval size) and latency_ms when measured
    error_pct: float  # 100 * (achieved - value) / value on the target metric
    evaluations: int
    coeffs: Coefficients
    history: list[tuple[float, float]] = field(default_factory=list)  # (phi, metric) tried

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.card.to_dict(),
            "scaling": {
                "phi": self.phi,
                "target": self.target,
                "value": self.value,
                "achieved": self.achieved,
                "error_pct": self.error_pct,
                "alpha": self.coeffs.alpha,
                "beta": self.coeffs.beta,
                "gamma": self.coeffs.gamma,
            },
        }


def count(card: ModelCard, *, in_chans: int, num_classes: int) -> dict[str, float]:
    cost = model_cost(card.spec, image_size=card.eval_size, in_chans=in_chans, num_classes=num_classes)
    return {"params": float(cost.params), "macs": float(cost.macs)}


def scale_to_target(
    card: ModelCard,
    target: str,
    value: float,
    *,
    coeffs: Coefficients = Coefficients(),
    limits: ScaleLimits = ScaleLimits(),
    in_chans: int = 3,
    num_classes: int = 1000,
    measure: Measure | None = None,
    iters: int | None = None,
) -> ScaleResult:
    """Solve phi so that the scaled model's ``target`` metric hits ``value``; the closest phi found
    by bracketing then bisection is returned (the metric moves in steps: channels round to 8,
    layers to whole blocks)."""
    if target not in TARGETS:
        raise UsageError(f"--target {target!r} is not one of {', '.join(TARGETS)}")
    if not value > 0:
        raise UsageError(f"--target {target} {value!r}: expected a positive value")
    if target == "latency_ms" and measure is None:
        raise UsageError("latency_ms target: a latency measure is required")
    iters = iters if iters is not None else (10 if target == "latency_ms" else 30)
    hist: dict[float, float] = {}

    def metric(phi: float) -> float:
        if phi not in hist:
            c = compound_scale(card, phi, coeffs, limits)
            if target == "latency_ms":
                hist[phi] = float(measure(c))
            elif target == "params":
                hist[phi] = float(model_params(c.spec, in_chans=in_chans, num_classes=num_classes))
            else:
                hist[phi] = count(c, in_chans=in_chans, num_classes=num_classes)[target]
        return hist[phi]

    # phi range where the multipliers stay inside ArchSpec's bounds
    bounds = [
        math.log(MAX_MULT / m) / math.log(b)
        for m, b in ((card.spec.width_mult, coeffs.beta), (card.spec.depth_mult, coeffs.alpha))
        if b > 1
    ]
    phi_max = min(bounds) if bounds else 8.0
    phi_min = -phi_max
    lo, hi = 0.0, 0.0
    if metric(0.0) < value:
        step = 1.0
        while metric(hi) < value:
            lo, hi = hi, min(hi + step, phi_max)
            if lo == phi_max:
                raise UsageError(
                    f"--target {target} {value:g}: beyond reach (at most {metric(phi_max):.4g} "
                    f"with width/depth multipliers <= {MAX_MULT:g})"
                )
            step *= 1.5
    else:
        step = 1.0
        while metric(lo) > value:
            hi, lo = lo, max(lo - step, phi_min)
            if hi == phi_min:
                raise UsageError(f"--target {target} {value:g}: below reach (at least {metric(phi_min):.4g})")
            step *= 1.5
    for _ in range(iters):  # invariant: metric(lo) <= value <= metric(hi)
        mid = 0.5 * (lo + hi)
        if metric(mid) < value:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-4:
            break
    phi = min(hist, key=lambda p: (abs(hist[p] - value), abs(p)))
    best = compound_scale(card, phi, coeffs, limits)
    achieved = count(best, in_chans=in_chans, num_classes=num_classes)
    if measure is not None:
        achieved["latency_ms"] = hist[phi] if target == "latency_ms" else float(measure(best))
    err = 100.0 * (achieved[target] - value) / value
    return ScaleResult(
        card=best,
        phi=phi,
        target=target,
        value=value,
        achieved=achieved,
        error_pct=err,
        evaluations=len(hist),
        coeffs=coeffs,
        history=sorted(hist.items()),
    )


# -- latency ---------------------------------------------------------------------------------------
def latency_measure(
    *,
    mode: str = "infer",
    batch_size: int = 1,
    in_chans: int = 3,
    num_classes: int = 1000,
    device: str = "cpu",
    steps: int = 10,
    warmup: int = 3,
    amp: str = "auto",
    channels_last: str | bool = "auto",
) -> Measure:
    """A measure(card) -> ms: ``infer`` at the eval size or ``train`` (one step) at the train size,
    median of ``steps`` after ``warmup`` (effv2.bench.timing). ``amp`` and ``channels_last``
    default to what the trainer runs on this device ("auto": effv2's fast defaults), so a
    latency target means the step effv2 will actually take; ``measure.execution`` says which."""
    from ..bench.timing import time_infer, time_train_step
    from ..runtime import resolve_runtime

    if mode not in ("infer", "train"):
        raise UsageError(f"--latency-mode {mode!r} is not one of infer, train")
    if amp not in ("auto", "none", "bf16", "fp16"):
        raise UsageError(f"--amp {amp!r} is not one of auto, none, bf16, fp16")
    rt = resolve_runtime(device, amp=amp, channels_last=channels_last, batch_size=batch_size)
    ex = {"amp": rt.amp, "channels_last": rt.channels_last}

    def measure(card: ModelCard) -> float:
        model = EfficientNetV2(card.spec, num_classes=num_classes, in_chans=in_chans, drop_rate=0.0, drop_path_rate=0.0)
        if mode == "infer":
            res = time_infer(
                model,
                batch_size=batch_size,
                image_size=card.eval_size,
                in_chans=in_chans,
                steps=steps,
                warmup=warmup,
                device=device,
                **ex,
            )
        else:
            res = time_train_step(
                model,
                batch_size=batch_size,
                image_size=card.train_size,
                in_chans=in_chans,
                num_classes=num_classes,
                steps=steps,
                warmup=warmup,
                device=device,
                **ex,
            )
        return 1e3 * float(res["step_s"])

    measure.execution = ex  # type: ignore[attr-defined]
    return measure


# -- LACS ------------------------------------------------------------------------------------------
def lacs_grid(*, flops_ratio: float = 2.0, tolerance: float = 0.12) -> list[Coefficients]:
    """Coefficient candidates: EfficientNet's constraint alpha * beta^2 * gamma^2 ~ 2 (MACs double per
    unit of phi) and EfficientNet-X's finding as a prior, depth at least as fast as width and size.
    13 triples, EfficientNet's (1.2, 1.1, 1.15) among them."""
    alphas = (1.2, 1.4, 1.6, 1.8, 2.0)
    others = (1.0, 1.05, 1.1, 1.15)
    grid = []
    for a, b, g in itertools.product(alphas, others, others):
        if abs(a * b * b * g * g - flops_ratio) <= tolerance and a >= max(b, g) and (b, g) != (1.0, 1.0):
            grid.append(Coefficients(alpha=a, beta=b, gamma=g))
    return grid


@dataclass(frozen=True, kw_only=True)
class LacsResult:
    best: ScaleResult
    rows: list[dict[str, Any]]  # one per coefficient triple: coefficients, phi, sizes, latency, proxy, reward


def lacs(
    card: ModelCard,
    target_ms: float,
    *,
    measure: Measure,
    accuracy_proxy: Callable[[ModelCard], float],
    grid: list[Coefficients] | None = None,
    w: float = REWARD_W,
    limits: ScaleLimits = ScaleLimits(),
    in_chans: int = 3,
    num_classes: int = 1000,
    iters: int = 8,
    log: Callable[[str], None] | None = None,
) -> LacsResult:
    """For each coefficient triple: scale to the latency target, score
    ``accuracy_proxy(card) * (latency / target)^w``; the best triple's model is the result."""
    grid = grid if grid is not None else lacs_grid()
    if not grid:
        raise UsageError("LACS: the coefficient grid is empty")
    results, rows = [], []
    for c in grid:
        res = scale_to_target(
            card,
            "latency_ms",
            target_ms,
            coeffs=c,
            limits=limits,
            in_chans=in_chans,
            num_classes=num_classes,
            measure=measure,
            iters=iters,
        )
        proxy = float(accuracy_proxy(res.card))
        score = proxy * (res.achieved["latency_ms"] / target_ms) ** w
        rows.append(
            {
                "alpha": c.alpha,
                "beta": c.beta,
                "gamma": c.gamma,
                "phi": res.phi,
                "depth_mult": res.card.spec.depth_mult,
                "width_mult": res.card.spec.width_mult,
                "eval_size": res.card.eval_size,
                "latency_ms": res.achieved["latency_ms"],
                "params": res.achieved["params"],
                "macs": res.achieved["macs"],
                "proxy": proxy,
                "reward": score,
            }
        )
        results.append((score, res))
        if log:
            r = rows[-1]
            log(
                f"alpha {c.alpha:g} beta {c.beta:g} gamma {c.gamma:g}: phi {res.phi:.3f}, {r['eval_size']} px, "
                f"{r['latency_ms']:.2f} ms, proxy {proxy:.4g}, reward {score:.4g}"
            )
    best = max(results, key=lambda t: t[0])[1]
    return LacsResult(best=best, rows=rows)


def macs_proxy(*, in_chans: int = 3, num_classes: int = 1000) -> Callable[[ModelCard], float]:
    """log10 MACs at the eval size: "more compute for the same latency". A stand-in for trained
    accuracy, which LACS proper uses (``effv2 scale --accuracy-proxy train``); it ignores how
    depth, width and size trade off in accuracy, so it favours whatever runs MACs fastest."""

    def proxy(card: ModelCard) -> float:
        return math.log10(count(card, in_chans=in_chans, num_classes=num_classes)["macs"])

    return proxy
