"""The loop on its own, with a fake task: it logs whatever parts a task returns, calls the stage and
step hooks, skips a non-finite step without changing anything, and never knows what the task is."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from effv2.config import recipe_from_dict
from effv2.data.imagesets import TensorImageSet
from effv2.data.sources import DataBundle
from effv2.data.streams import train_steps
from effv2.runtime import Runtime
from effv2.training.build import build_parts
from effv2.training.state import RunInfo
from effv2.training.step import TrainStep
from effv2.training.tasks import Task
from effv2.training.trainer import Trainer


class FakeTask(Task):
    """Mean squared logits (pushes the tiny model's output to zero), plus a constant part to log."""

    def __init__(self, model, bad_steps=()):
        super().__init__(model)
        self.bad_steps, self.stages, self.after = set(bad_steps), [], []

    def forward(self, batches, step):
        out = self.net(batches["labelled"].x)
        loss = out.pow(2).mean()
        if step in self.bad_steps:
            loss = loss * float("nan")
        return {"loss": loss, "answer": torch.tensor(42.0)}

    def on_stage(self, stage):
        self.stages.append((stage.index, stage.image_size))

    def after_step(self, step):
        self.after.append(step)


def _bundle(n=64, size=8) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n, dtype=torch.int64) % 4
    data = TensorImageSet(images, labels)
    return DataBundle(data, data, None, ["a", "b", "c", "d"], 1, size, [], "fake")


def _trainer(tmp_path, task_factory, **recipe):
    rec = recipe_from_dict(
        {
            "epochs": 2,
            "batch_size": 16,
            "eval_batch_size": 32,
            "lr": 2.0,
            "ema_decay": 0,
            "label_smoothing": 0,
            "progressive": {
                "n_stages": 2,
                "min_size": 6,
                "max_size": 8,
                "randaug_min": 0,
                "randaug_max": 0,
                "dropout_min": 0,
                "dropout_max": 0,
                "drop_path_max": 0,
            },
            **recipe,
        }
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16, 4))
    runtime = Runtime()
    parts = build_parts(rec, model, runtime, bundle=_bundle())
    parts.task = task_factory(model)
    info = RunInfo(
        model_name="fake",
        classes=["a", "b", "c", "d"],
        in_chans=1,
        train_size=8,
        eval_size=8,
        mean=(0.5,),
        std=(0.5,),
        dropout=0.0,
        drop_path=0.0,
    )
    return Trainer(recipe=rec, parts=parts, bundle=_bundle(), info=info, runtime=runtime, out_dir=tmp_path, quiet=True)


def test_loop_logs_the_tasks_parts_and_calls_its_hooks(tmp_path):
    trainer = _trainer(tmp_path, FakeTask)
    x = torch.rand(8, 1, 8, 8) * 2 - 1  # what the loader feeds: (x - 0.5) / 0.5
    before = trainer.model(x).pow(2).mean().item()
    summary = trainer.fit()
    task = trainer.parts.task
    assert task.stages == [(0, 6), (1, 8)]  # one call per stage, with the stage's image size
    assert task.after == list(range(8))  # 64 images / 16 per step x 2 epochs, every step taken
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_answer"] for r in rows] == [42.0, 42.0]  # a part the loop has never heard of
    assert trainer.model(x).pow(2).mean().item() < 0.9 * before  # the loop really optimised the task's loss
    assert summary["epochs"] == 2 and summary["nonfinite_steps"] == 0


def test_a_nonfinite_step_changes_nothing(tmp_path):
    trainer = _trainer(tmp_path, lambda m: FakeTask(m, bad_steps={0}))
    step: TrainStep = trainer.step
    before = [p.detach().clone() for p in trainer.model.parameters()]
    batch = next(train_steps(trainer.parts.streams, trainer._context(8, 0, 0, 0), epoch=0))
    res = step(batch, 0, lr=0.1)
    assert not res.stepped and all(math.isnan(v) for v in res.parts.values())
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.parts.task.after == []  # no after_step for a skipped step
    res = step(batch, 1, lr=0.1)
    assert res.stepped and res.parts["answer"] == 42.0
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
