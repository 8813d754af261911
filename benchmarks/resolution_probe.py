"""Why per-epoch evaluation reads ~35% during the 24 px stage of the demo: train efficientnetv2_mini at
24 px only (2 epochs, 20,000 Fashion-MNIST images, fmnist-cpu recipe, no EMA), then evaluate the
validation split at 24 px and at 28 px, and at 28 px again after re-estimating the BatchNorm statistics
at 28 px (cumulative average over 30 training batches). Run: python benchmarks/resolution_probe.py
"""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "golden"))
import gzip  # noqa: E402
import tempfile  # noqa: E402

import run_golden

from effv2.data.loader import train_batches
from effv2.data.sources import load_source
from effv2.runtime import Runtime
from effv2.training.api import train
from effv2.training.evaluate import evaluate
from effv2.training.inference import load_for_inference

torch.set_num_threads(2)
d = Path(tempfile.mkdtemp())
src = run_golden.SHARED  # ../shared/data/fashion-mnist
(d / "fm").mkdir()
for split, n in (("train", 20000), ("t10k", 2000)):
    for kind in ("images-idx3", "labels-idx1"):
        arr = run_golden._idx(src / f"{split}-{kind}-ubyte.gz")[:n]
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(x.to_bytes(4, "big") for x in arr.shape)
        with gzip.open(d / "fm" / f"{split}-{kind}-ubyte.gz", "wb") as fh:
            fh.write(header + arr.numpy().tobytes())
train(
    "efficientnetv2_mini",
    "fashion-mnist",
    d / "r",
    recipe="fmnist-cpu",
    data_dir=str(d / "fm"),
    overrides=[
        "epochs=2",
        "progressive.enabled=true",
        "progressive.n_stages=2",
        "progressive.max_size=24",
        "eval_size=28",
        "ema_decay=0",
    ],
    quiet=True,
)
lm = load_for_inference(d / "r")
b = load_source("fashion-mnist", data_dir=str(d / "fm"), val_fraction=0.1)
rt = Runtime(channels_last=True)
m = rt.place(lm.model)
for size in (24, 28):
    print("eval at", size, evaluate(m, b.val, runtime=rt, image_size=size, mean=lm.mean, std=lm.std)["top1"])
# re-estimate BN statistics at 28 px (cumulative average over 30 train batches)
m2 = copy.deepcopy(m)
for mod in m2.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
        mod.reset_running_stats()
        mod.momentum = None
m2.train()
with torch.no_grad():
    for _i, bt in zip(
        range(30),
        train_batches(
            b.train,
            batch_size=256,
            image_size=28,
            randaug_magnitude=0,
            mixup_alpha=0,
            cutmix_alpha=0,
            num_classes=10,
            seed=0,
            epoch=0,
            mean=lm.mean,
            std=lm.std,
            crop="none",
            channels_last=True,
        ),
    ):
        m2(bt.x)
print(
    "eval at 28 after BN re-estimation at 28:",
    evaluate(m2, b.val, runtime=rt, image_size=28, mean=lm.mean, std=lm.std)["top1"],
)
