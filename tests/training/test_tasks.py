"""The task seam: a new task in one file (tests/training/two_loss_task.py) trains through the unchanged
loop, its parts are logged, its state is checkpointed and a killed run resumes bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))
sys.path.insert(0, str(HERE.parent))
import run_golden  # noqa: E402

from support import checkpoint_tensors, pico_train_args, run_cli  # noqa: E402

PLUGIN = HERE / "two_loss_task.py"
SETS = [
    "epochs=2",
    "batch_size=32",
    "eval_batch_size=64",
    "progressive.n_stages=2",
    "progressive.min_size=16",
    "progressive.max_size=24",
    "eval_size=24",
    "amp=none",
    "ema_decay=0.9",
    "num_workers=0",
    "deterministic=true",
    "checkpoint_every_steps=3",
    "task=two_loss",
]

pytestmark = pytest.mark.skipif(not run_golden.SHARED.is_dir(), reason="shared Fashion-MNIST not available")


def _run(data: Path, out: Path, kill_at: int | None = None, resume: bool = False) -> subprocess.CompletedProcess:
    args = ["train", "--resume", str(out), "--quiet"] if resume else pico_train_args(data, out, SETS)
    return run_cli(*args, kill_at=kill_at, plugin=PLUGIN)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint_tensors(path, ("model", "ema", "optim", "task"))


def test_a_task_in_one_file_logs_its_parts_keeps_its_state_and_resumes_bitwise(tmp_path):
    data = run_golden.write_subset(tmp_path / "fmnist")
    full = _run(data, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:  # the loop logged the task's parts without knowing their names
        assert r["train_ce"] > 0 and r["train_logit_l2"] > 0
        assert r["train_loss"] == pytest.approx(r["train_ce"] + 0.01 * r["train_logit_l2"], rel=1e-5)
    a = _tensors(tmp_path / "full" / "checkpoints" / "last.safetensors")
    assert int(a["task/steps"]) == 14 and float(a["task/penalty_mean"]) > 0  # 2 epochs x 7 steps (232 images)
    assert not any(k.startswith("task/model.") for k in a)  # the model is stored once, as "model"

    killed = _run(data, tmp_path / "part", kill_at=5)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _run(data, tmp_path / "part", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    b = _tensors(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
