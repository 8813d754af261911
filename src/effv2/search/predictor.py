"""A neural performance predictor over stage rows (in the spirit of AIO-P / GENNAPE).

Each architecture is encoded from its stage rows, the same data a person reads in the stage
table: per stage, Fused vs MBConv, kernel, expansion (one-hot and log), SE on/off, layers,
log2 channels, stride; then totals: log params, log MACs, depth. Two regressors are offered:

- ``ridge``: closed-form ridge regression, the baseline;
- ``mlp``: an ensemble of small MLPs (bootstrap resamples, different seeds); the spread of the
  ensemble is the uncertainty used for exploration when screening.

Judged as the papers judge predictors: Spearman rank correlation (SRCC) and MAE on held-out
trials (:func:`predictor_report`). In a search (``--predictor-screen K``) the predictor ranks K
sampled candidates before any of them is trained and only the best is trained.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..models.spec import ArchSpec
from .cost import Cost, model_cost

EXPANDS = (1, 4, 6)
PREDICTORS: tuple[str, ...] = ("mlp", "ridge")
STAGE_FEATURES = ("fused", "kernel", "e1", "e4", "e6", "log_expand", "se", "layers", "log2_channels", "stride2")


def feature_names(n_stages: int) -> list[str]:
    names = [f"s{i}.{f}" for i in range(1, n_stages + 1) for f in STAGE_FEATURES]
    return names + ["log10_params", "log10_macs", "depth"]


def encode(spec: ArchSpec, cost: Cost) -> np.ndarray:
    """The feature vector of one architecture (see :func:`feature_names`)."""
    feats: list[float] = []
    for s in spec.scaled_stages():
        feats += [
            float(s.block == "fused"),
            (s.kernel - 3) / 2.0,
            *(float(s.expand == e) for e in EXPANDS),
            math.log(s.expand),
            float(s.se > 0),
            float(s.repeats),
            math.log2(s.out),
            float(s.stride == 2),
        ]
    feats += [math.log10(cost.params), math.log10(max(cost.macs, 1)), float(spec.num_blocks)]
    return np.asarray(feats, dtype=np.float64)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties (no scipy needed); nan if constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):  # ties share their average rank
        tie = x == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


@contextlib.contextmanager
def _one_thread():
    """Tiny matrices: thread hand-offs cost more than the maths (50x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Standardizer:
    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(0)
        std = x.std(0)
        self.std = np.where(std > 1e-12, std, 1.0)  # constant features (e.g. channels) stay 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


@dataclass
class RidgePredictor:
    alpha: float = 1.0
    _xs: _Standardizer | None = field(default=None, repr=False)
    _w: np.ndarray | None = field(default=None, repr=False)
    _b: float = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgePredictor:
        self._xs = _Standardizer(x)
        z = self._xs(x)
        self._b = float(y.mean())
        self._w = np.linalg.solve(z.T @ z + self.alpha * np.eye(z.shape[1]), z.T @ (y - self._b))
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std); ridge has no spread, std is zero."""
        if self._w is None or self._xs is None:
            raise RuntimeError("predict before fit")
        mean = self._xs(x) @ self._w + self._b
        return mean, np.zeros_like(mean)


@dataclass
class MLPEnsemble:
    """``members`` MLPs (in -> hidden -> hidden -> 1, SiLU), each fit full-batch with Adam on a
    bootstrap resample of the trials; mean and std over members."""

    members: int = 5
    hidden: int = 64
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-3
    seed: int = 0
    _nets: list[nn.Module] = field(default_factory=list, repr=False)
    _xs: _Standardizer | None = field(default=None, repr=False)
    _y: tuple[float, float] = (0.0, 1.0)

    def fit(self, x: np.ndarray, y: np.ndarray) -> MLPEnsemble:
        self._xs = _Standardizer(x)
        y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
        self._y = (y_mean, y_std)
        xt = torch.as_tensor(self._xs(x), dtype=torch.float32)  # (N, F)
        yt = torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)  # (N,)
        self._nets = []
        with _one_thread():
            for m in range(self.members):
                self._nets.append(self._fit_member(m, xt, yt))
        return self

    def _fit_member(self, m: int, xt: torch.Tensor, yt: torch.Tensor) -> nn.Module:
        g = torch.Generator().manual_seed(self.seed * 1000 + m)
        idx = torch.randint(len(xt), (len(xt),), generator=g) if self.members > 1 else torch.arange(len(xt))
        net = nn.Sequential(
            nn.Linear(xt.shape[1], self.hidden),
            nn.SiLU(),
            nn.Linear(self.hidden, self.hidden),
            nn.SiLU(),
            nn.Linear(self.hidden, 1),
        )
        with torch.no_grad():  # seeded init U(-1/sqrt(fan_in), 1/sqrt(fan_in)), independent of the global RNG
            for layer in (mod for mod in net if isinstance(mod, nn.Linear)):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        xb, yb = xt[idx], yt[idx]  # the member's bootstrap resample
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(net(xb).squeeze(-1), yb).backward()
            opt.step()
        return net.eval()

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._nets or self._xs is None:
            raise RuntimeError("predict before fit")
        xt = torch.as_tensor(self._xs(x), dtype=torch.float32)
        with torch.no_grad(), _one_thread():
            out = torch.stack([net(xt).squeeze(-1) for net in self._nets]).double().numpy()  # (M, N)
        out = out * self._y[1] + self._y[0]
        return out.mean(0), out.std(0)


def make_predictor(name: str, *, seed: int = 0) -> RidgePredictor | MLPEnsemble:
    if name == "ridge":
        return RidgePredictor()
    if name == "mlp":
        return MLPEnsemble(seed=seed)
    raise UsageError(f"--predictor {name!r} is not one of {', '.join(PREDICTORS)}")


# -- records: finished trials as plain dicts ----------------------------------------------------
def _spec_of(value: Any) -> ArchSpec:
    if isinstance(value, ArchSpec):
        return value
    if isinstance(value, dict):
        return ArchSpec.from_dict(value)
    if isinstance(value, str):
        return ArchSpec.from_str(value)
    raise UsageError(f"trial spec: expected an ArchSpec, dict or spec string, got {type(value).__name__}")


def features(records: Iterable[dict[str, Any]], *, image_size: int = 32) -> np.ndarray:
    """Encode records ``{"spec": ..., "params"?: int, "macs"?: int}``; missing counts are computed."""
    rows = []
    for r in records:
        spec = _spec_of(r["spec"])
        if r.get("params") and r.get("macs"):
            cost = Cost(params=int(r["params"]), macs=int(r["macs"]))
        else:
            cost = model_cost(spec, image_size=image_size)
        rows.append(encode(spec, cost))
    if len({len(r) for r in rows}) > 1:
        raise UsageError("predictor: the trials have different numbers of stages (one search space at a time)")
    return np.stack(rows)


def predictor_report(
    trials: Sequence[dict[str, Any]],
    *,
    model: str = "mlp",
    target: str = "top1",
    test_fraction: float = 0.25,
    seed: int = 0,
    image_size: int = 32,
) -> dict[str, Any]:
    """Fit on a random (seeded) part of the finished trials, score the held-out rest.

    ``trials``: dicts with ``spec`` (ArchSpec, dict or spec string), the ``target`` value and
    optionally ``params``/``macs``. Returns ``{"model", "target", "spearman", "mae", "n_train",
    "n_test"}``.
    """
    rows = [t for t in trials if t.get(target) is not None and math.isfinite(float(t[target]))]
    if len(rows) < 6:
        raise UsageError(f"predictor: need at least 6 finished trials with {target!r}, have {len(rows)}")
    x = features(rows, image_size=image_size)
    y = np.asarray([float(t[target]) for t in rows])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    n_test = max(2, int(round(len(rows) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    pred = make_predictor(model, seed=seed).fit(x[train], y[train])
    mean, _ = pred.predict(x[test])
    return {
        "model": model,
        "target": target,
        "spearman": spearman(mean, y[test]),
        "mae": float(np.abs(mean - y[test]).mean()),
        "n_train": int(len(train)),
        "n_test": int(n_test),
    }
