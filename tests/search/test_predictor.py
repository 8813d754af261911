"""The performance predictor: encoding, Spearman, and ranking held-out architectures of a known
accuracy function (the synthetic one: depth, Fused early / MBConv late, kernels, expansion, SE)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from effv2.errors import UsageError
from effv2.search import encode, get_space, model_cost, predictor_report, spearman, synthetic_top1
from effv2.search.predictor import MLPEnsemble, RidgePredictor, feature_names

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = get_space("pico")


def synthetic_trials(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        spec = SPACE.sample(rng)
        cost = model_cost(spec, image_size=16, in_chans=1, num_classes=10)
        rows.append(
            {"spec": spec.to_dict(), "top1": synthetic_top1(spec, SPACE.base), "params": cost.params, "macs": cost.macs}
        )
    return rows


def test_spearman_matches_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # scipy.stats.spearmanr
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_encoding_reads_the_stage_rows() -> None:
    spec = SPACE.base
    cost = model_cost(spec, image_size=16, in_chans=1, num_classes=10)
    x = encode(spec, cost)
    names = feature_names(len(spec.stages))
    assert x.shape == (len(names),)
    f = dict(zip(names, x))
    assert f["s1.fused"] == 1 and f["s3.fused"] == 0 and f["s3.se"] == 1 and f["s2.e4"] == 1
    assert f["s1.layers"] == 1 and f["depth"] == 3 and f["log10_params"] == pytest.approx(np.log10(cost.params))


@pytest.mark.parametrize("model", ["ridge", "mlp"])
def test_predictor_ranks_held_out_architectures(model) -> None:
    rep = predictor_report(synthetic_trials(80), model=model, test_fraction=0.25, seed=1)
    assert rep["n_train"] == 60 and rep["n_test"] == 20
    assert rep["spearman"] > 0.8, rep
    assert rep["mae"] < 2.0, rep


def test_ensemble_spread_and_determinism() -> None:
    rows = synthetic_trials(30, seed=2)
    from effv2.search.predictor import features

    x, y = features(rows), np.array([r["top1"] for r in rows])
    a = MLPEnsemble(members=3, steps=100, seed=5).fit(x, y).predict(x)
    b = MLPEnsemble(members=3, steps=100, seed=5).fit(x, y).predict(x)
    assert np.allclose(a[0], b[0]) and (a[1] >= 0).all() and a[1].max() > 0
    mean, std = RidgePredictor().fit(x, y).predict(x)
    assert (std == 0).all() and spearman(mean, y) > 0.9


def test_too_few_trials_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="at least 6 finished trials"):
        predictor_report(synthetic_trials(4))
