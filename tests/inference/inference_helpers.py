"""Helpers for the inference tests: a pico run folder, image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from effv2.io.checkpoint import save_checkpoint
from effv2.models import create_model

CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BNs are the identity in eval mode, which would hide folding mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
    return model


def write_images(folder: Path, sizes=((40, 52), (33, 33), (64, 30))) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i}.png"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(p)
        paths.append(p)
    return paths


def make_run(root: Path, **overrides) -> Path:
    """A run folder as training leaves it: checkpoints/best.safetensors (model + EMA) and summary.json."""
    torch.manual_seed(0)
    model = randomize_bn(create_model("efficientnetv2_pico", num_classes=len(CLASSES), **overrides), 0)
    ema = randomize_bn(create_model("efficientnetv2_pico", num_classes=len(CLASSES), **overrides), 1)
    run = root / "run"
    state = {"classes": CLASSES, "num_classes": len(CLASSES), "eval_size": 32, "mean": [0.5], "std": [0.5]}
    save_checkpoint(run / "checkpoints" / "best.safetensors", {"model": model, "ema": ema}, state=state)
    (run / "summary.json").write_text('{"data": "toy", "top1": 42.5, "epochs": 1}\n')
    return run
