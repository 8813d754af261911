"""Whole-epoch training throughput: effv2's trainer vs a timm ``train.py``-style loop, same model and data.

    python benchmarks/epoch_throughput.py [--data-dir DIR] [--jpeg-images 6000] [--jpeg-size 56]
        [--threads 2] [--batch-size 256] [--limit N] [--no-record]

One training epoch of efficientnetv2_mini at 28 px, batch 256, data loading and optimizer step
included (evaluation excluded), on two data sets:

- ``fashion-mnist``: the in-memory idx files (the train split less effv2's 10% val hold-out, the
  same images on both sides). effv2 cuts and augments whole batches as tensor ops in the training
  process; the timm side reads the same uint8 tensor through a torchvision-FashionMNIST-style
  Dataset (PIL image per sample; RandomCrop(28, padding=3, reflect), flip, ToTensor,
  Normalize(0.5, 0.5)) and a torch DataLoader (2 workers, no pinned memory, drop_last).
- a JPEG folder: ``--jpeg-images`` Fashion-MNIST training images written as RGB JPEGs of
  ``--jpeg-size`` px into class subfolders; effv2 trains on the folder (``num_workers=2``), the
  timm side uses torchvision ImageFolder over the same training files (RandomResizedCrop(28), flip,
  ToTensor, Normalize) with 2 workers.

Both sides run the same augmentation: effv2 with ``crop=pad_crop`` (Fashion-MNIST) or
``crop=random_resized`` (JPEGs), flips, and RandAugment off (``progressive.randaug_max=0``), since
the timm train.py default has no RandAugment; no EMA, no progressive resizing.

The timm model is timm's own ``EfficientNet`` class built with the efficientnetv2_mini stage table
(as ``_gen_efficientnetv2_base`` builds timm's V2 models); that it is the same network is checked by
copying effv2's weights into it (``effv2.models.convert.transfer_weights``) and comparing logits.
The timm loop follows timm's ``train_one_epoch``: autocast forward + LabelSmoothingCrossEntropy(0.1),
backward, ``optimizer.step()``, ``loss.item()``, ``zero_grad()``, ``lr_scheduler.step_update()``;
optimizer ``create_optimizer_v2(model, "sgd", lr=0.2, momentum=0.9, weight_decay=5e-4)`` (Nesterov,
no weight decay on biases / BN, as effv2's recipe). It runs twice: with timm's defaults (fp32,
eager, NCHW) and with the flags effv2 picks on this machine (``effv2.bench.machine.fast_defaults``:
on an AMX CPU channels_last + bf16 autocast = train.py ``--channels-last --amp --amp-dtype bfloat16``).

Prints a table and appends it to benchmarks/RESULTS.md with the machine and versions (not with
``--no-record``). ``--limit N`` trains on N images only (smoke tests; needs ``--batch-size`` <= N).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from PIL import Image
from timm.loss import LabelSmoothingCrossEntropy
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet, round_channels
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from effv2.bench.machine import cpu_info, fast_defaults
from effv2.data.imagesets import FileImageSet, TensorImageSet
from effv2.data.sources import DataBundle, load_source
from effv2.models import create_model, get_card
from effv2.models.convert import transfer_weights
from effv2.runtime import AMP_DTYPES, resolve_amp, resolve_channels_last
from effv2.training.api import train

HERE = Path(__file__).resolve().parent
MODEL = "efficientnetv2_mini"
RECIPE = "fmnist-cpu"
SIZE = 28  # efficientnetv2_mini's training size
LR, MOMENTUM, WEIGHT_DECAY, SMOOTHING = 0.2, 0.9, 5e-4, 0.1  # fmnist-cpu's
# efficientnetv2_mini in timm's arch-string notation: the stem 24 -> 24 Fused-MBConv e1 keeps its
# residual only with "_skip" (as timm's own V2 tables write it).
TIMM_ARCH = [
    ["cn_r1_k3_s1_e1_c24_skip"],
    ["er_r2_k3_s2_e4_c48"],
    ["er_r2_k3_s2_e4_c96"],
    ["ir_r2_k3_s1_e4_c160_se0.25"],
]
EVAL_IMAGES = 512  # val images kept for effv2's end-of-epoch evaluation (not timed; only to keep it short)


# --------------------------------------------------------------------------- the model on both sides
def build_timm_mini(in_chans: int, num_classes: int = 10) -> EfficientNet:
    """efficientnetv2_mini as a timm EfficientNet, with the kwargs of timm's _gen_efficientnetv2_base."""
    card = get_card(MODEL)
    round_chs_fn = partial(round_channels, multiplier=1.0, round_limit=0.0)
    return EfficientNet(
        block_args=decode_arch_def(TIMM_ARCH),
        num_features=round_chs_fn(card.spec.head),
        stem_size=card.spec.stem,
        in_chans=in_chans,
        num_classes=num_classes,
        round_chs_fn=round_chs_fn,
        act_layer=torch.nn.SiLU,
        norm_layer=partial(torch.nn.BatchNorm2d, eps=card.spec.bn_eps),
    )


def check_parity(in_chans: int, num_classes: int = 10, batch: int = 4) -> float:
    """Max |logit difference| (eval, fp32) after copying an effv2 model's weights into the timm build."""
    torch.manual_seed(0)
    ours = create_model(MODEL, num_classes=num_classes, in_chans=in_chans)
    with torch.no_grad():  # non-trivial BN statistics, so eps and BN order matter
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    theirs = build_timm_mini(in_chans, num_classes)
    if sum(p.numel() for p in ours.parameters()) != sum(p.numel() for p in theirs.parameters()):
        raise AssertionError("timm build and effv2 model differ in parameter count")
    transfer_weights(ours, theirs)
    ours.eval()
    theirs.eval()
    x = torch.randn(batch, in_chans, SIZE, SIZE)
    with torch.no_grad():
        return float((ours(x) - theirs(x)).abs().max())


def fast_flags() -> dict[str, Any]:
    """effv2's execution defaults on this CPU, as the timm run uses them."""
    d = fast_defaults("cpu")
    return {"amp": {"bf16": torch.bfloat16, "fp16": torch.float16}.get(d["amp"]), "channels_last": d["channels_last"]}


def flags_label(amp: torch.dtype | None, channels_last: bool) -> str:
    dtype = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(amp, "fp32")
    return f"{dtype}, {'channels_last' if channels_last else 'NCHW'}, eager"


def warmup(in_chans: int, batch: int, configs: list[tuple[torch.dtype | None, bool]], steps: int = 2) -> None:
    """A few untimed steps per execution config, so no timed run pays oneDNN's first-call set-up alone."""
    for amp, cl in configs:
        torch.manual_seed(0)
        model = build_timm_mini(in_chans).train()
        fmt = torch.channels_last if cl else torch.contiguous_format
        model.to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(batch, in_chans, SIZE, SIZE).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (batch,))
        for _ in range(steps):
            with torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()


# --------------------------------------------------------------------------- data
def shrink(bundle: DataBundle, limit: int | None) -> DataBundle:
    """The first ``limit`` training images (all when None), a small val set and no test set:
    effv2 evaluates after the epoch, outside the timed part; only the training split matters here."""
    train_set = bundle.train if not limit else bundle.train.subset(range(min(limit, len(bundle.train))))
    val = bundle.val.subset(range(min(EVAL_IMAGES, len(bundle.val))))
    return replace(bundle, train=train_set, val=val, test=None)


def class_folder_names(classes: list[str]) -> list[str]:
    """File-system-safe folder names that sort in class order (``0_T_shirt_top``, ...)."""
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}_{re.sub(r'[^A-Za-z0-9]+', '_', c).strip('_')}" for i, c in enumerate(classes)]


def write_jpeg_folder(images: TensorImageSet, classes: list[str], root: Path, n: int, size: int) -> Path:
    """The first ``n`` images as RGB JPEGs of ``size`` px (bilinear upscale) in ROOT/CLASS/ folders."""
    names = class_folder_names(classes)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    n = min(n, len(images))
    for i in range(n):
        img = Image.fromarray(images.images[i, 0].numpy()).convert("RGB")
        if size != img.width:
            img = img.resize((size, size), Image.BILINEAR)
        img.save(root / names[int(images.labels[i])] / f"{i:06d}.jpg", quality=90)
    return root


class TensorImageDataset(Dataset):
    """torchvision FashionMNIST's __getitem__ over effv2's uint8 tensor: a PIL image per sample, then transforms."""

    def __init__(self, imageset: TensorImageSet, transform) -> None:
        self.images, self.labels, self.transform = imageset.images, imageset.labels, transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        img = self.images[i]
        img = Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy())
        return self.transform(img), int(self.labels[i])


def timm_dataset(bundle: DataBundle) -> Dataset:
    mean, std = get_card(MODEL).mean * bundle.in_chans, get_card(MODEL).std * bundle.in_chans
    if isinstance(bundle.train, TensorImageSet):
        tf = T.Compose(
            [
                T.RandomCrop(SIZE, padding=SIZE // 8, padding_mode="reflect"),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )
        return TensorImageDataset(bundle.train, tf)
    assert isinstance(bundle.train, FileImageSet)
    tf = T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    keep = set(bundle.train.paths)
    ds = torchvision.datasets.ImageFolder(bundle.location, transform=tf, is_valid_file=lambda p: p in keep)
    if len(ds) != len(bundle.train):
        raise AssertionError(f"ImageFolder found {len(ds)} of effv2's {len(bundle.train)} training files")
    return ds


# --------------------------------------------------------------------------- one epoch on each side
def effv2_epoch(bundle: DataBundle, out_dir: Path, *, batch_size: int, num_workers: int) -> dict[str, Any]:
    """One epoch of effv2's trainer (its own execution defaults); train time excludes the evaluation."""
    crop = "pad_crop" if isinstance(bundle.train, TensorImageSet) else "random_resized"
    overrides = [
        "epochs=1",
        "progressive.enabled=false",
        "ema_decay=0",
        f"batch_size={batch_size}",
        f"num_workers={num_workers}",
        f"crop={crop}",
        "progressive.randaug_max=0",
    ]
    s = train(MODEL, bundle, out_dir, recipe=RECIPE, overrides=overrides, quiet=True)  # deterministic mode is scoped
    rec = json.loads((out_dir / "config.json").read_text())["recipe"]
    amp = AMP_DTYPES[resolve_amp(rec["amp"], torch.device("cpu"), batch_size)]
    cl = resolve_channels_last(rec["channels_last"], torch.device("cpu"))
    return {
        "trainer": "effv2",
        "flags": flags_label(amp, cl),
        "images": s["images_seen"],
        "train_s": s["train_s"],
        "img_per_s": s["images_seen"] / max(s["train_s"], 1e-9),
        "overrides": overrides,
    }


def timm_epoch(
    bundle: DataBundle,
    *,
    batch_size: int,
    num_workers: int,
    amp: torch.dtype | None,
    channels_last: bool,
    label: str,
    seed: int = 0,
) -> dict[str, Any]:
    """One epoch of a loop in the style of timm train.py's train_one_epoch (no prefetcher, no EMA)."""
    torch.manual_seed(seed)
    model = build_timm_mini(bundle.in_chans, bundle.num_classes)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, "sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loader = DataLoader(
        timm_dataset(bundle),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=False,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    lr_scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=1, warmup_epochs=0, step_on_epochs=False, updates_per_epoch=len(loader)
    )
    loss_fn = LabelSmoothingCrossEntropy(smoothing=SMOOTHING)
    amp_autocast = partial(torch.autocast, device_type="cpu", dtype=amp) if amp is not None else contextlib.nullcontext
    model.train()
    num_updates, images, loss_sum = 0, 0, 0.0
    t0 = time.perf_counter()
    for inp, target in loader:
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(inp)
            loss = loss_fn(output, target)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * inp.size(0)
        images += inp.size(0)
        num_updates += 1
        optimizer.zero_grad()
        lr_scheduler.step_update(num_updates=num_updates)
    train_s = time.perf_counter() - t0
    return {
        "trainer": label,
        "flags": flags_label(amp, channels_last),
        "images": images,
        "train_s": train_s,
        "img_per_s": images / max(train_s, 1e-9),
        "mean_loss": loss_sum / max(images, 1),
    }


# --------------------------------------------------------------------------- the benchmark
def run_dataset(name: str, bundle: DataBundle, work: Path, *, batch_size: int, log=print) -> list[dict[str, Any]]:
    """effv2, timm-defaults and timm-with-effv2-flags epochs on one bundle; rows with a ``ratio`` each."""
    workers = 0 if isinstance(bundle.train, TensorImageSet) else 2  # effv2: in-memory sets need no workers
    fast = fast_flags()
    warmup(bundle.in_chans, batch_size, [(None, False), (fast["amp"], fast["channels_last"])])
    rows = [
        effv2_epoch(
            bundle,
            work / f"effv2-{re.sub(r'[^a-z0-9]+', '-', name.lower())}",
            batch_size=batch_size,
            num_workers=workers,
        )
    ]
    log(_fmt_row(name, rows[-1]))
    for label, amp, cl in (
        ("timm loop, timm defaults", None, False),
        ("timm loop, effv2's flags", fast["amp"], fast["channels_last"]),
    ):
        rows.append(timm_epoch(bundle, batch_size=batch_size, num_workers=2, amp=amp, channels_last=cl, label=label))
        log(_fmt_row(name, rows[-1]))
    for r in rows:
        r["data"] = name
        r["effv2_vs_this"] = rows[0]["img_per_s"] / r["img_per_s"]
    return rows


def _fmt_row(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name}: {r['trainer']} ({r['flags']}): {r['images']} images in {r['train_s']:.1f} s = "
        f"{r['img_per_s']:.0f} img/s"
    )


def run_benchmark(
    *, data_dir: str | None, jpeg_images: int, jpeg_size: int, batch_size: int, limit: int | None, work: Path, log=print
) -> dict[str, Any]:
    parity = {c: check_parity(c) for c in (1, 3)}
    if max(parity.values()) >= 1e-4:
        raise AssertionError(f"timm build differs from {MODEL}: max logit difference {parity}")
    fm = shrink(load_source("fashion-mnist", data_dir=data_dir), limit)
    rows = run_dataset("Fashion-MNIST (in memory)", fm, work, batch_size=batch_size, log=log)
    n_jpeg = min(jpeg_images, limit) if limit else jpeg_images
    folder = write_jpeg_folder(fm.train, fm.classes, work / "jpegs", n_jpeg, jpeg_size)
    jp = shrink(load_source(str(folder)), None)
    rows += run_dataset(f"JPEG folder ({n_jpeg} x {jpeg_size} px RGB)", jp, work, batch_size=batch_size, log=log)
    return {
        "rows": rows,
        "parity": parity,
        "fmnist_train": len(fm.train),
        "jpeg_train": len(jp.train),
        "jpeg_images": n_jpeg,
    }


def markdown(result: dict[str, Any], *, command: str, threads: int, batch_size: int) -> str:
    info = cpu_info()
    rows = result["rows"]
    effv2_flags = next(r["flags"] for r in rows if r["trainer"] == "effv2")
    lines = [
        f"## Epoch throughput: effv2 trainer vs a timm train.py-style loop ({datetime.date.today().isoformat()})",
        "",
        f"- command: `{command}`",
        f'- machine: `lscpu` model name "{info["model_name"]}", {info["cores"]} cores, {threads} torch threads; '
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
        f"Python {platform.python_version()}",
        f"- one epoch of {MODEL} at {SIZE} px, batch {batch_size}, SGD Nesterov lr {LR}, label smoothing "
        f"{SMOOTHING}, no EMA; time = the epoch's training loop with data loading (eval excluded); same "
        f"images on both sides ({result['fmnist_train']:,} Fashion-MNIST training images, the official train "
        f"split less effv2's val hold-out; {result['jpeg_train']:,} of the {result['jpeg_images']:,} JPEGs)",
        f"- effv2: `train()` with recipe {RECIPE} + `epochs=1 progressive.enabled=false ema_decay=0 "
        f"batch_size={batch_size}` and the same "
        f"augmentation as the timm side (`crop=pad_crop` / `crop=random_resized`, flips, "
        f"`progressive.randaug_max=0`); its defaults here: {effv2_flags}; Fashion-MNIST batches built in "
        f"process, JPEGs with 2 DataLoader workers",
        f"- timm: timm's `EfficientNet` built with the mini stage table `{TIMM_ARCH}` (effv2 weights copied "
        f"in: max logit difference {max(result['parity'].values()):.1e}); torch DataLoader, 2 workers, "
        f"per-sample torchvision transforms (Fashion-MNIST: PIL, RandomCrop(28, pad 3, reflect), flip, "
        f"ToTensor, Normalize; JPEGs: ImageFolder, RandomResizedCrop(28), flip, ToTensor, Normalize); "
        f'`create_optimizer_v2(model, "sgd", lr={LR}, momentum={MOMENTUM}, weight_decay={WEIGHT_DECAY})`, '
        f'LabelSmoothingCrossEntropy({SMOOTHING}); "timm defaults" = fp32, eager, NCHW; "effv2\'s flags" = '
        f"train.py `--channels-last` (+ `--amp --amp-dtype bfloat16` where effv2 uses bf16)",
        "",
        "| data | trainer | execution | images | epoch train time (s) | img/s | effv2 img/s / this |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['data']} | {r['trainer']} | {r['flags']} | {r['images']:,} | {r['train_s']:.1f} | "
            f"{r['img_per_s']:.0f} | {r['effv2_vs_this']:.2f}x |"
            for r in rows
        ],
        "",
    ]
    return "\n".join(lines)


def command_line(argv: list[str]) -> str:
    prefix = ""
    if "--data-dir" not in argv and os.environ.get("EFFV2_DATA"):
        prefix = f"EFFV2_DATA={shlex.quote(os.environ['EFFV2_DATA'])} "
    return prefix + "python benchmarks/epoch_throughput.py " + " ".join(shlex.quote(a) for a in argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files (else $EFFV2_DATA)")
    ap.add_argument("--jpeg-images", type=int, default=6000, help="Fashion-MNIST images written as JPEGs")
    ap.add_argument("--jpeg-size", type=int, default=56, help="side of the JPEGs in px (28 = native)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="train on only N images per data set (smoke tests)")
    ap.add_argument("--work-dir", default=None, help="where the JPEGs and run folders go (default: a temp dir)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, *, results: Path | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = run_benchmark(
            data_dir=args.data_dir,
            jpeg_images=args.jpeg_images,
            jpeg_size=args.jpeg_size,
            batch_size=args.batch_size,
            limit=args.limit,
            work=work,
        )
    text = markdown(result, command=command_line(argv), threads=args.threads, batch_size=args.batch_size)
    print(text)
    if not args.no_record:
        with open(results or HERE / "RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    result["markdown"] = text
    return result


if __name__ == "__main__":
    main()
    raise SystemExit(0)
