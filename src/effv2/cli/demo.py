"""`effv2 demo`: the main job. Train the default Fashion-MNIST recipe on the CPU, print test accuracy.

Data is found like every other source (--data-dir, $EFFV2_DATA, /usr/share/datasets/fashion-mnist);
when it is missing the demo fetches it itself: Debian's dataset-fashion-mnist package where apt-get
is available and permitted, else torchvision's download, else a one-line message saying what to do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from ..errors import UsageError
from .train import add_data_args

# The search's accuracy pick on Fashion-MNIST (effv2.models.registry, "fmnist"): at the demo's 10-minute
# budget it ties efficientnetv2_mini on validation on the bf16 Zen 5 and beats it on an AVX2 (fp32) stand-in.
DEMO_MODEL = "efficientnetv2_fmnist"
DEMO_RECIPE = "fmnist-cpu"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="train the default Fashion-MNIST recipe on the CPU and print the test accuracy")
    p.add_argument("--out", help="run folder (default runs/demo-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--time-budget",
        default="10m",
        metavar="DURATION",
        help="training time to plan for on this machine (default 10m; 'none': the recipe's 16 epochs)",
    )
    add_data_args(p)
    return p


def _try_apt() -> bool:
    """Install Debian's dataset-fashion-mnist when apt-get exists and we may use it (root, non-interactive)."""
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    print("Fashion-MNIST not found locally; installing Debian's dataset-fashion-mnist ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"],
    ):
        try:
            ok = (
                subprocess.run(
                    cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        if ok and cmd[1] == "install":
            return True
    return False


def find_fashion_mnist(data_dir: str | None, allow_download: bool = True, val_fraction: float = 0.1):
    """The demo's data: the training split less a seeded, stratified validation hold-out (what the
    best checkpoint is chosen on), and the test split, evaluated once at the end."""
    from ..data.sources import load_source

    try:
        return load_source("fashion-mnist", data_dir=data_dir, val_fraction=val_fraction)
    except UsageError as first:
        if _try_apt():
            try:
                return load_source("fashion-mnist", data_dir=data_dir, val_fraction=val_fraction)
            except UsageError:
                pass
        if allow_download:  # torchvision's download, into data_dir / $EFFV2_DATA / ~/.cache/effv2/data
            print("downloading Fashion-MNIST with torchvision ...", flush=True)
            try:
                return load_source("fashion-mnist", data_dir=data_dir, download=True, val_fraction=val_fraction)
            except Exception as exc:  # noqa: BLE001 - any network failure ends in the one-line message
                raise UsageError(f"Fashion-MNIST is not available: {first}; download failed too ({exc})") from None
        raise


def run(args: argparse.Namespace) -> int:
    from ..training.api import train

    bundle = find_fashion_mnist(args.data_dir, allow_download=True)
    out = args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    budget = [] if str(args.time_budget).lower() == "none" else [f"time_budget={args.time_budget}"]
    summary = train(
        DEMO_MODEL, bundle, out, recipe=DEMO_RECIPE, overrides=[*budget, *args.overrides], device=args.device
    )
    print(
        f"\nFashion-MNIST test accuracy: {summary['test_top1']:.2f}% top-1 with the {summary.get('test_weights')} "
        f"weights ({summary['train_s'] / 60:.1f} min of training on {args.device}; run folder {out})"
    )
    return 0
