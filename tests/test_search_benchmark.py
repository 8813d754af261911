"""benchmarks/search_fmnist.py: the second selection rule and the wall-time refit, without training."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest

from effv2.models import create_model
from effv2.search import get_space

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sf():
    spec = importlib.util.spec_from_file_location("search_fmnist", ROOT / "benchmarks" / "search_fmnist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(n, spec, top1, step_ms, backbone=False):
    return {"trial": n, "spec": spec.to_dict(), "top1": top1, "step_ms": step_ms, "params": 1000,
            "backbone": backbone}


def test_accuracy_pick_is_the_most_accurate_trial_no_slower_than_the_backbone(sf, tmp_path) -> None:
    space = get_space("pico")
    a, b, c = (space.sample(__import__("random").Random(i)) for i in range(3))
    done = [_row(0, space.base, 80.0, 10.0, backbone=True), _row(1, a, 95.0, 11.0),  # best but slower: out
            _row(2, b, 85.0, 9.0), _row(3, c, 85.0, 8.0)]  # tie on top-1: the faster wins
    best = sf.accuracy_pick(done, space, tmp_path)
    assert best["trial"] == 3
    card = json.loads((tmp_path / "accuracy_pick_spec.json").read_text())
    assert "trial 3" in card["notes"]
    create_model(str(tmp_path / "accuracy_pick_spec.json"), num_classes=10, in_chans=1)  # a model that builds
    assert sf.accuracy_pick([done[0], _row(1, a, 95.0, 11.0)], space, tmp_path) is None  # nothing fast enough


def test_a_run_that_ends_early_is_replanned_and_trained_again(sf, tmp_path, monkeypatch) -> None:
    calls = []

    def fake_train(model, data, run_dir, *, epochs, overrides, **kw):
        calls.append((Path(run_dir).name, epochs, overrides))
        return {"epochs": epochs, "completed": True, "train_s": 10.0 * epochs, "img_per_s": 1.0, "test_top1": 90.0}

    monkeypatch.setattr(sf, "train", fake_train)
    monkeypatch.setattr(sf, "epochs_for", lambda *a, **k: (5, 1.0))
    args = types.SimpleNamespace(data_dir=None, seed=0, device="cpu")
    row = sf.train_for("mini", "efficientnetv2_pico", tmp_path / "mini", 100.0, args, 1000)
    # 5 epochs took 50 s of a 100 s budget: re-planned to int(5 * 100 / 50 * 0.95) = 9 epochs, from scratch;
    # 9 epochs take 90 s, within 85%: no second re-plan
    assert calls == [("mini", 5, ["time_budget_s=100"]), ("mini-fit", 9, ["time_budget_s=100"])]
    assert row["planned"] == "5 -> 9" and row["epochs"] == 9
    # a rerun re-plans from the finished calibration run, whatever a new step timing says
    calls.clear()
    monkeypatch.setattr(sf, "epochs_for", lambda *a, **k: (2, 1.0))
    monkeypatch.setattr(sf, "_train_once", lambda model, run_dir, epochs, budget_s, args: (
        calls.append((Path(run_dir).name, epochs)) or
        {"epochs": 5 if Path(run_dir).name == "mini" else epochs, "completed": True,
         "train_s": {"mini": 50.0, "mini-fit": 80.0}.get(Path(run_dir).name, 95.0), "img_per_s": 1.0,
         "test_top1": 90.0}))
    # the calibration's own 5 epochs count, not the new timing's 2; 9 epochs in 80 s is still short: once more
    assert sf.train_for("mini", "efficientnetv2_pico", tmp_path / "mini", 100.0, args, 1000)["planned"] == "5 -> 9 -> 10"
    assert calls == [("mini", 2), ("mini-fit", 9), ("mini-fit2", 10)]
    monkeypatch.undo()
    monkeypatch.setattr(sf, "train", fake_train)
    monkeypatch.setattr(sf, "epochs_for", lambda *a, **k: (5, 1.0))
    calls.clear()
    sf.train_for("mini", "efficientnetv2_pico", tmp_path / "other", 55.0, args, 1000)
    assert [c[0] for c in calls] == ["other"]  # 50 s of 55 s is within 85%: kept
