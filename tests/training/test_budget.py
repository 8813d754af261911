"""Training to a time budget: the planner is a pure function of measured times; a planned run records
its plan, follows it on --resume and resumes bit for bit after a kill."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from effv2.training.budget import plan_epochs, planned_seconds

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))
sys.path.insert(0, str(HERE.parent))
import run_golden  # noqa: E402

from support import checkpoint_tensors, pico_train_args, run_cli  # noqa: E402

SETS = [
    "batch_size=32",
    "eval_batch_size=64",
    "progressive.n_stages=2",
    "progressive.min_size=16",
    "progressive.max_size=24",
    "eval_size=24",
    "amp=none",
    "num_workers=0",
    "deterministic=true",
    "checkpoint_every_steps=4",
    "time_budget_s=3600",
]


def test_planned_seconds_and_plan_are_pinned():
    # 2 stages at 0.1 s and 0.3 s per step, 10 steps per epoch, 1 s per evaluation, every epoch
    t = planned_seconds(4, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, eval_every=1)
    assert t == pytest.approx(2 * 10 * 0.1 + 2 * 10 * 0.3 + 4 * 1.0)  # 12 s
    assert planned_seconds(5, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, eval_every=2) == pytest.approx(
        2 * 10 * 0.1 + 3 * 10 * 0.3 + 3 * 1.0
    )  # the later stage takes the odd epoch; evals at 2, 4 and 5
    # 12 s fits 0.95 * 13 = 12.35; 5 epochs (16 s) does not
    assert plan_epochs(13, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0) == 4
    assert plan_epochs(1, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, min_epochs=2) == 2


@pytest.mark.skipif(not run_golden.SHARED.is_dir(), reason="shared Fashion-MNIST not available")
def test_a_budgeted_run_records_its_plan_and_resumes_bitwise(tmp_path):
    data = run_golden.write_subset(tmp_path / "fm")

    def train_args(out, *extra, sets=SETS):
        return pico_train_args(data, out, sets, *extra)

    part = tmp_path / "part"
    killed = run_cli(*train_args(part, "--time-budget", "3s"), kill_at=9)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cfg = json.loads((part / "config.json").read_text())
    plan = cfg["plan"]
    assert plan["epochs"] == cfg["recipe"]["epochs"] >= 2 and plan["planned_s"] <= 0.95 * 3
    assert plan["stage_sizes"] == [16, 24] and all(s > 0 for s in plan["step_s"])
    assert cfg["layers"]["plan"]["set"]["epochs"] == plan["epochs"]
    resumed = run_cli("train", "--resume", str(part), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((part / "config.json").read_text())["plan"] == plan  # the recorded plan, not a new one
    # the same schedule without a budget: bit for bit the same weights
    ref = run_cli(*train_args(tmp_path / "ref", sets=[*SETS, f"epochs={plan['epochs']}"]))
    assert ref.returncode == 0, ref.stderr[-2000:]
    a, b = (
        checkpoint_tensors(part / "checkpoints" / "last.safetensors"),
        checkpoint_tensors(tmp_path / "ref" / "checkpoints" / "last.safetensors"),
    )
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
