"""Optimizers: SGD and AdamW from torch.optim, and RMSpropTF (TF's RMSProp, the official optimizer).

Weight decay rule (one place, applied to every optimizer): conv and linear *weights* decay;
biases and every BatchNorm parameter do not. Concretely: a parameter with more than one dimension
(conv kernels (O, I, kh, kw), linear weights (O, I)) goes to the decay group; every 1-D parameter
(BN gamma and beta, conv/linear biases, SE biases) goes to the no-decay group. The official code
does the same by name: L2 on variables matching ``.*(kernel|weight):0$``.

How the decay acts: SGD and RMSpropTF add ``weight_decay * w`` to the gradient (L2, as the official
code adds ``weight_decay * sum(w**2) / 2`` to the loss); AdamW decays decoupled
(``w -= lr * weight_decay * w``), torch's definition.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..config.schema import DEFAULT_EPS  # per-optimizer epsilon when a recipe's eps is null


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups, always in this order: [decay (ndim > 1), no decay (ndim <= 1)]. Frozen
    parameters (requires_grad=False) are left out."""
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fused_ok(groups: list[dict[str, Any]]) -> bool:
    """Fused kernels where every parameter is a floating CUDA tensor; torch's default elsewhere."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


OPTIMIZERS = tuple(DEFAULT_EPS)  # the recipe's optimizer names


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The optimizer's own settings (the recipe's optimizer keys; ``lr`` already scaled to the batch)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None  # None: DEFAULT_EPS[name]
    rmsprop_decay: float = 0.9

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; one of {', '.join(OPTIMIZERS)}")

    @classmethod
    def from_recipe(cls, recipe: Any, lr: float | None = None) -> OptimizerConfig:
        """``lr`` defaults to ``recipe.lr * batch_size / 256``."""
        return cls(
            name=recipe.optimizer,
            lr=recipe.lr * recipe.batch_size / 256 if lr is None else lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
            betas=tuple(recipe.betas),
            eps=recipe.eps,
            rmsprop_decay=recipe.rmsprop_decay,
        )

    @property
    def resolved_eps(self) -> float:
        return DEFAULT_EPS[self.name] if self.eps is None else self.eps


def build_optimizer(model: nn.Module, cfg: OptimizerConfig | Any, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer over ``model`` (parameter groups: :func:`param_groups`). ``cfg`` is an
    :class:`OptimizerConfig` or a recipe (then ``OptimizerConfig.from_recipe(recipe, lr)``); the
    trainer overwrites every group's lr each step from its LRSchedule."""
    if not isinstance(cfg, OptimizerConfig):
        cfg = OptimizerConfig.from_recipe(cfg, lr)
    elif lr is not None:
        cfg = replace(cfg, lr=lr)
    groups = param_groups(model, cfg.weight_decay)
    speed = {"fused": True} if _fused_ok(groups) else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **speed)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.resolved_eps, **speed)
    return RMSpropTF(groups, lr=cfg.lr, alpha=cfg.rmsprop_decay, eps=cfg.resolved_eps, momentum=cfg.momentum)


class RMSpropTF(torch.optim.Optimizer):
    """TensorFlow's RMSProp (tf.compat.v1.train.RMSPropOptimizer / Keras RMSprop with momentum).

    Per parameter w with gradient g (weight decay as L2 on the gradient first: g += wd * w):

        ms  <- ms + (1 - alpha) * (g**2 - ms)          ms starts at ONES (torch: zeros)
        mom <- momentum * mom + lr * g / sqrt(ms + eps) eps INSIDE the sqrt (torch: outside);
        w   <- w - mom                                  lr inside the momentum buffer (torch: outside)

    The three differences from torch.optim.RMSprop matter: with eps = 1e-3 inside the sqrt and ms
    starting at 1 the first steps are small instead of lr * g / |g| jumps. Equal to
    timm.optim.RMSpropTF with its defaults (lr_in_momentum=True, decoupled_decay=False,
    centered=False); this copy keeps timm an optional dependency.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        alpha: float = 0.9,
        eps: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        if lr < 0 or eps <= 0 or not 0 <= alpha < 1 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(
                f"RMSpropTF: bad hyper-parameters lr={lr} alpha={alpha} eps={eps} "
                f"momentum={momentum} weight_decay={weight_decay}"
            )
        super().__init__(
            params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
        )

    def _init_state(self, p: Tensor, momentum: float) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
            if momentum > 0:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("RMSpropTF does not support sparse gradients")
            states = [self._init_state(p, group["momentum"]) for p in params]
            for st in states:
                st["step"] += 1
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            if foreach:
                by_kind: dict[tuple, list[int]] = defaultdict(list)
                for i, p in enumerate(params):
                    by_kind[(p.device, p.dtype)].append(i)
                for idx in by_kind.values():
                    self._update_foreach([params[i] for i in idx], [states[i] for i in idx], group)
            else:
                for p, st in zip(params, states):
                    self._update_one(p, st, group)
        return loss

    @staticmethod
    def _update_one(p: Tensor, st: dict[str, Tensor], group: dict[str, Any]) -> None:
        g = p.grad
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        sq = st["square_avg"]
        sq.add_(g * g - sq, alpha=1.0 - group["alpha"])  # TF's order of operations
        rms = sq.add(group["eps"]).sqrt_()  # eps inside the sqrt
        if group["momentum"] > 0:
            buf = st["momentum_buffer"]
            buf.mul_(group["momentum"]).addcdiv_(g, rms, value=group["lr"])  # lr inside the buffer
            p.sub_(buf)
        else:
            p.addcdiv_(g, rms, value=-group["lr"])

    @staticmethod
    def _update_foreach(params: list[Tensor], states: list[dict[str, Tensor]], group: dict[str, Any]) -> None:
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        sqs = [st["square_avg"] for st in states]
        diff = torch._foreach_mul(grads, grads)
        torch._foreach_sub_(diff, sqs)
        torch._foreach_add_(sqs, diff, alpha=1.0 - group["alpha"])
        rms = torch._foreach_add(sqs, group["eps"])
        torch._foreach_sqrt_(rms)
        if group["momentum"] > 0:
            bufs = [st["momentum_buffer"] for st in states]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_addcdiv_(bufs, grads, rms, value=group["lr"])
            torch._foreach_sub_(params, bufs)
        else:
            torch._foreach_addcdiv_(params, grads, rms, value=-group["lr"])
