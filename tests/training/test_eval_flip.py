"""Flip-averaged evaluation (recipe key eval_flip): the logits of an image and its mirror averaged, and
with "auto" the choice made on the validation split before the test split is read once."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from effv2.config import Recipe
from effv2.data.imagesets import TensorImageSet
from effv2.runtime import Runtime
from effv2.training.evaluate import evaluate


class LeftRight(nn.Module):
    """Class 0 when the left half is brighter, else class 1: a mirror swaps its answer."""

    def forward(self, x):
        w = x.shape[-1] // 2
        d = x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3))
        return torch.stack([d, -d + 0.01], dim=1)


def _set(n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return TensorImageSet(images=x, labels=torch.zeros(n, dtype=torch.long))


def test_flip_averages_the_logits_of_the_image_and_its_mirror():
    rt, ds = Runtime(), _set()
    kw = dict(runtime=rt, image_size=8, mean=(0.5,), std=(0.5,), batch_size=5)
    plain = evaluate(LeftRight(), ds, **kw)
    flipped = evaluate(LeftRight(), ds, **kw, flip=True)
    # mirrored, d -> -d: the mean logits are (0, 0.01) for every image, so class 1 always wins
    assert flipped["top1"] == 0.0 and flipped["loss"] == pytest.approx(
        -torch.log_softmax(torch.tensor([0, 0.01]), 0)[0].item()
    )
    assert plain["top1"] != flipped["top1"] and plain["n"] == flipped["n"] == 16


def test_the_recipe_key_is_checked():
    assert Recipe(eval_flip="auto").eval_flip == "auto" and Recipe(eval_flip=True).eval_flip is True
    with pytest.raises(Exception, match="eval_flip"):
        Recipe(eval_flip="sometimes")


def test_auto_chooses_on_validation_and_reads_test_once(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "golden"))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import run_golden

    from support import pico_train_args, run_cli

    if not run_golden.SHARED.is_dir():
        pytest.skip("shared Fashion-MNIST not available")
    data = run_golden.write_subset(tmp_path / "fm")
    sets = ["epochs=1", "batch_size=32", "amp=none", "num_workers=0", "eval_flip=auto", "eval_size=16"]
    sets += ["progressive.enabled=false", "progressive.max_size=16"]
    proc = run_cli(*pico_train_args(data, tmp_path / "run", sets))
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"val_top1_plain", "val_top1_flip", "test_flip"} <= set(s)
    assert s["test_flip"] == (s["val_top1_flip"] > s["val_top1_plain"])
    # the plain validation score of the best weights is what selection saw
    assert s["val_top1_plain"] == pytest.approx(s["best_top1"], abs=1e-3)
