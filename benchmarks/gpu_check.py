"""GPU check: the effv2 paths that CPU tests cannot reach, run part by part on a CUDA machine.

    bash benchmarks/gpu_check.sh --out runs/gpu [--data-dir DIR] [--parts models,train,...]
    bash benchmarks/gpu_check.sh --out runs/gpu-dry --dry-run     # the same code paths on CPU, tiny sizes

Each part runs in its own subprocess with its own timeout and prints one line,
``PASS <part>``, ``FAIL <part>: <reason>`` or ``SKIP <part>: <reason>``; ``--out DIR/summary.json``
records the machine (GPU name, driver, CUDA and torch versions) and, per part, status, seconds and
numbers. Exit status: 1 when a part failed, else 0.

Parts: models (forward+backward of every model under fp32/bf16/fp16 autocast), train (short runs
with fp16, bf16, channels_last, torch.compile; SIGKILL + resume bitwise exact under deterministic
mode, with the non-deterministic kernels torch warned about), torchrun (1 process, and 2 on a 2-GPU
machine), eval_predict (``effv2 eval`` / ``effv2 predict`` on the trained run), export (`effv2 export`
to every format, checked on the device, and `effv2 predict` on the ONNX file), bench (effv2 vs timm
img/s and peak share), data (JPEG-folder loader img/s, and ``torchvision.io.decode_jpeg`` on the GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
PARTS = ("models", "train", "torchrun", "eval_predict", "export", "bench", "data")
# seconds per part (full run, dry run); --timeout-scale multiplies them
TIMEOUTS = {
    "models": (900, 180),
    "train": (2400, 360),
    "torchrun": (900, 120),
    "eval_predict": (600, 120),
    "export": (60, 60),
    "bench": (1800, 180),
    "data": (900, 120),
}
TRAIN_KEYS = ("model/", "ema/", "optim/")
NONDET_MARK = "does not have a deterministic implementation"


class Skip(Exception):
    """Raised by a part that cannot run here; the message is the reason."""


# --------------------------------------------------------------------------- arguments and summary
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for summary.json and the parts' run folders")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the same code paths (minutes, not hours)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files (default: $EFFV2_DATA, shared/data)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every part's timeout")
    p.add_argument("--_part", default=None, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        p.error(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    args.parts = parts
    if args.timeout_scale <= 0:
        p.error("--timeout-scale must be > 0")
    return args


def part_timeout(part: str, dry_run: bool, scale: float = 1.0) -> float:
    full, dry = TIMEOUTS[part]
    return (dry if dry_run else full) * scale


def _nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    gpus = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    return {"gpus": gpus, "driver_version": gpus[0][1] if gpus and len(gpus[0]) > 1 else None}


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    try:  # the installed distribution's version (importing effv2 here would cost seconds)
        from importlib.metadata import version

        info["effv2"] = version("effv2")
    except Exception:  # noqa: BLE001 - not installed: run from a checkout
        info["effv2"] = None
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    if torch.cuda.is_available():
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_name"] = torch.cuda.get_device_name(0)
        info["gpu_capability"] = list(torch.cuda.get_device_capability(0))
        info["cudnn"] = torch.backends.cudnn.version()
    smi = _nvidia_smi()
    info["driver_version"] = smi.get("driver_version")
    info["nvidia_smi_gpus"] = smi.get("gpus")
    return info


def write_summary(
    out: Path, machine: dict[str, Any], parts: dict[str, dict[str, Any]], dry_run: bool, total_s: float | None = None
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(1 for r in parts.values() if r["status"] == s) for s in ("PASS", "FAIL", "SKIP")}
    summary = {
        "dry_run": dry_run,
        "ok": counts["FAIL"] == 0,
        "total_s": total_s,
        "machine": machine,
        "counts": counts,
        "parts": parts,
    }
    path = out / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def status_line(part: str, result: dict[str, Any]) -> str:
    s = result["status"]
    return f"PASS {part}" if s == "PASS" else f"{s} {part}: {result.get('reason') or 'no reason given'}"


# --------------------------------------------------------------------------- the driver
# Parts that cannot run yet: SKIP with the reason, without starting a process for it.
STATIC_SKIPS: dict[str, str] = {}


def run_part_subprocess(part: str, args: argparse.Namespace) -> dict[str, Any]:
    if part in STATIC_SKIPS:
        return {"status": "SKIP", "reason": STATIC_SKIPS[part], "numbers": {}, "seconds": 0.0, "log": None}
    out = Path(args.out).absolute()
    result_file = out / "parts" / f"{part}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE), "--out", str(out), "--_part", part]
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    limit = part_timeout(part, args.dry_run, args.timeout_scale)
    log = out / "parts" / f"{part}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and its children (torchrun, loader workers)
            proc.wait()
            rc = None
    seconds = round(time.perf_counter() - t0, 2)
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    elif rc is None:
        result = {"status": "FAIL", "reason": f"timed out after {limit:g} s (log: {log})", "numbers": {}}
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        result = {"status": "FAIL", "reason": f"exit {rc} without a result: {tail[0][:300]}", "numbers": {}}
    if rc is None and result["status"] != "FAIL":
        result = {**result, "status": "FAIL", "reason": f"timed out after {limit:g} s"}
    result["seconds"] = seconds
    result["log"] = str(log)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_effv2"]:
        return effv2_runner(argv[1:])
    args = parse_args(argv)
    if args._part:
        return run_part_here(args._part, args)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for part in args.parts:
        results[part] = run_part_subprocess(part, args)
        print(status_line(part, results[part]), flush=True)
        write_summary(out, machine, results, args.dry_run)
    total = round(time.perf_counter() - t0, 1)
    path = write_summary(out, machine, results, args.dry_run, total_s=total)
    print(f"summary: {path} ({total:.0f} s)", flush=True)
    return 1 if any(r["status"] == "FAIL" for r in results.values()) else 0


def run_part_here(part: str, args: argparse.Namespace) -> int:
    out = Path(args.out).absolute()
    ctx = Context(out=out, dry_run=args.dry_run, data_dir=args.data_dir)
    result = run_part(part, ctx)
    path = out / "parts" / f"{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def run_part(part: str, ctx: Context) -> dict[str, Any]:
    """Run one part in this process: {"status", "reason", "numbers"} (exceptions become FAIL)."""
    numbers: dict[str, Any] = {}
    try:
        PART_FUNCS[part](ctx, numbers)
        problems = numbers.pop("_problems", [])
        if problems:
            return {"status": "FAIL", "reason": "; ".join(problems)[:2000], "numbers": numbers}
        return {"status": "PASS", "reason": None, "numbers": numbers}
    except Skip as e:
        return {"status": "SKIP", "reason": str(e) or "skipped", "numbers": numbers}
    except Exception as e:  # a part's failure is a result, not a crash of the check
        traceback.print_exc()
        numbers.pop("_problems", None)
        return {"status": "FAIL", "reason": f"{type(e).__name__}: {e}"[:2000], "numbers": numbers}


class Context:
    def __init__(self, out: Path, dry_run: bool, data_dir: str | None) -> None:
        import torch

        self.out = out
        self.dry_run = dry_run
        self.data_dir = data_dir
        self.cuda = torch.cuda.is_available() and not dry_run
        self.device = "cuda" if self.cuda else "cpu"

    def need_device(self) -> None:
        """A full run checks the GPU; without one it would silently check the CPU, so it is refused."""
        if not self.dry_run and not self.cuda:
            raise Skip("CUDA is not available (torch.cuda.is_available() is False); use --dry-run for CPU")


def _problem(numbers: dict[str, Any], text: str) -> None:
    numbers.setdefault("_problems", []).append(text)


# --------------------------------------------------------------------------- part: models
def part_models(ctx: Context, numbers: dict[str, Any]) -> None:
    import torch
    import torch.nn.functional as F

    from effv2.models import create_model, list_models

    ctx.need_device()
    dev = torch.device(ctx.device)
    names = ["efficientnetv2_pico", "efficientnetv2_mini"] if ctx.dry_run else list_models()
    # 64 px even in the dry run: at 32 px the last stage is 1x1, so with batch 2 BatchNorm normalises 2 values
    # per channel and the fp32 gradients reach 1e12 (measured on efficientnetv2_b0), which fp16 cannot hold
    size, batch = 64, 2
    modes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    numbers.update({"image_size": size, "batch_size": batch, "results": {}})
    for name in names:
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_chans=3).to(dev).train()
        row: dict[str, Any] = {}
        for mode, dtype in modes.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            x = torch.randn(batch, 3, size, size, device=dev)
            y = torch.randint(0, 10, (batch,), device=dev)
            try:
                ctxm = (
                    torch.autocast(dev.type, dtype=dtype)
                    if dtype is not None
                    else torch.autocast(dev.type, enabled=False)
                )
                with ctxm:
                    loss = F.cross_entropy(model(x), y)
            except RuntimeError as e:  # e.g. an autocast dtype this torch does not support on this device
                if dtype is not None and ctx.dry_run and "autocast" in str(e).lower():
                    row[mode] = f"SKIP: {e}"
                    continue
                raise
            loss.backward()
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            gmax = max((float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None), default=0.0)
            row[mode] = {
                "loss": float(loss),
                "no_grad": len(missing),
                "nonfinite_grad": len(bad),
                "max_abs_grad": gmax,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if not torch.isfinite(loss):
                _problem(numbers, f"{name} {mode}: loss {float(loss)}")
            if missing:
                _problem(numbers, f"{name} {mode}: {len(missing)} parameters without a gradient, e.g. {missing[0]}")
            if bad and mode == "fp16":  # unscaled fp16 may overflow; training's GradScaler skips such a step
                numbers.setdefault("notes", []).append(f"{name} fp16 (no loss scaling): {len(bad)} non-finite grads")
            elif bad:
                _problem(numbers, f"{name} {mode}: {len(bad)} non-finite gradients, e.g. {bad[0]}")
        numbers["results"][name] = row
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- data for training
def _idx(path: Path):
    import torch

    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return torch.frombuffer(bytearray(b[4 + 4 * nd :]), dtype=torch.uint8).view(*dims)


def write_subset(dst: Path, src: Path, n_train: int, n_test: int) -> Path:
    """A Fashion-MNIST subset in the idx layout (the first n images of each split), as tests/golden does."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            arr = _idx(src / name)[:n]
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
            with gzip.open(dst / name, "wb") as fh:
                fh.write(header + arr.numpy().tobytes())
    return dst


def find_fmnist(data_dir: str | None) -> Path | None:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    roots = [data_dir, os.environ.get("EFFV2_DATA"), str(HERE.parents[2] / "shared" / "data")]
    roots += [str(HERE.parents[1] / "shared" / "data")]
    for root in filter(None, roots):
        for cand in (Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"):
            if all((cand / n).is_file() for n in names):
                return cand
    return None


def fmnist_subset(ctx: Context) -> Path:
    dst = ctx.out / "fmnist_subset"
    if (dst / "t10k-labels-idx1-ubyte.gz").is_file():
        return dst
    src = find_fmnist(ctx.data_dir)
    if src is None:
        raise Skip("Fashion-MNIST idx files not found (--data-dir, $EFFV2_DATA or shared/data/fashion-mnist)")
    n_train, n_test = SUBSET[ctx.dry_run]
    return write_subset(dst, src, n_train, n_test)


# The demo's model and recipe. Full run: a 10,240/2,048-image subset, batch 128, 4 epochs = 288 optimizer
# steps, the recipe's own progressive schedule (24 -> 28 px, so torch.compile also meets a size change).
# Dry run: efficientnetv2_pico, 512/128 images, batch 32, 2 epochs of 14 steps at one size (32 px): mini's
# bf16/fp16 steps run emulated on a CPU without native support at ~2 s each (60 s a variant), pico's in 0.2 s.
TRAIN_MODEL, DRY_TRAIN_MODEL, TRAIN_RECIPE = "efficientnetv2_mini", "efficientnetv2_pico", "fmnist-cpu"
SUBSET = {False: (10240, 2048), True: (512, 128)}  # dry_run -> (train, test) images
TRAIN_BATCH = {False: 128, True: 32}


def train_overrides(ctx: Context) -> list[str]:
    common = [f"batch_size={TRAIN_BATCH[ctx.dry_run]}", "num_workers=0", "seed=0"]
    if not ctx.dry_run:
        return [*common, "epochs=4", "eval_batch_size=512", "warmup_epochs=0.5"]
    return [
        *common,
        "epochs=2",
        "eval_batch_size=128",
        "progressive.enabled=false",
        "progressive.max_size=32",
        "eval_size=32",
        "progressive.randaug_max=0",
        "ema_decay=0.9",
        "warmup_epochs=0",
    ]


def train_model(ctx: Context) -> str:
    return DRY_TRAIN_MODEL if ctx.dry_run else TRAIN_MODEL


def steps_per_epoch(ctx: Context) -> int:
    """Optimizer steps per epoch of the subset (train split less the 10% validation hold-out)."""
    return SUBSET[ctx.dry_run][0] * 9 // 10 // TRAIN_BATCH[ctx.dry_run]


def train_args(ctx: Context, data: Path, out: Path, extra: list[str]) -> list[str]:
    args = ["train", "--model", train_model(ctx), "--recipe", TRAIN_RECIPE, "--data", "fashion-mnist"]
    args += ["--data-dir", str(data), "--out", str(out), "--device", ctx.device, "--quiet", "--overwrite"]
    for s in [*train_overrides(ctx), *extra]:
        args += ["--set", s]
    return args


class _LossTap:
    """A TrainStep stand-in that appends each step's loss; every other attribute is the step's own."""

    def __init__(self, step, losses: list[float]) -> None:
        self._step, self._losses = step, losses

    def __call__(self, *a, **kw):
        res = self._step(*a, **kw)
        if res.stepped:
            self._losses.append(res.loss)
        return res

    def __getattr__(self, name: str):
        return getattr(self._step, name)


class Probe:
    """A training callback that records what the run really used: the runtime's settings, the GradScaler's
    scale, the weights' memory format, whether the forward is a compiled module, and every step's loss (read
    off the TrainStep's result by wrapping it at the first step; that step's loss is then missing)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.losses: list[float] = []

    def on_step_end(self, trainer) -> None:
        import torch

        if not self.seen:
            # a conv whose weight layout is unambiguous (1 input channel or 1x1 kernels fit both formats)
            convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
            conv = next((w for w in convs if w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1), convs[0])
            net = getattr(trainer.parts.task, "net", None)
            self.seen = {
                "runtime": trainer.runtime.describe(),
                "grad_scaler": trainer.parts.scaler is not None,
                "weights_channels_last": conv.is_contiguous(memory_format=torch.channels_last)
                and not conv.is_contiguous(),
                "forward_type": type(net).__name__ if net is not None else None,
            }
            trainer.step = _LossTap(trainer.step, self.losses)
        if trainer.parts.scaler is not None:
            self.seen["grad_scale"] = float(trainer.parts.scaler.get_scale())

    def on_epoch_end(self, trainer, record) -> None:
        pass


def train_in_process(
    ctx: Context, data: Path, out: Path, extra: list[str], callbacks: tuple = (), resume: bool = False
) -> dict[str, Any]:
    from effv2.training.api import train

    if resume:
        return train(None, None, out, resume=True, device=ctx.device, quiet=True, callbacks=callbacks)
    overrides = [*train_overrides(ctx), *extra]
    return train(
        train_model(ctx),
        "fashion-mnist",
        out,
        recipe=TRAIN_RECIPE,
        overrides=overrides,
        data_dir=str(data),
        device=ctx.device,
        quiet=True,
        overwrite=True,
        callbacks=callbacks,
    )


@contextlib.contextmanager
def _compile_backend(backend: str | None) -> Iterator[None]:
    """torch.compile with ``backend`` as its default while inside (None: unchanged)."""
    import torch

    if backend is None:
        yield
        return
    real = torch.compile

    def compile_(*a, **kw):
        kw.setdefault("backend", backend)
        return real(*a, **kw)

    torch.compile = compile_
    try:
        yield
    finally:
        torch.compile = real


def effv2_subprocess(
    args: list[str], *, kill_at_step: int | None = None, warnings_file: Path | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(HERE), "_effv2"]
    cmd += ["--kill-at-step", str(kill_at_step)] if kill_at_step is not None else []
    cmd += ["--warnings", str(warnings_file)] if warnings_file is not None else []
    return subprocess.run([*cmd, "--", *args], capture_output=True, text=True, timeout=timeout)


def effv2_runner(argv: list[str]) -> int:
    """``gpu_check.py _effv2 [--kill-at-step N] [--warnings FILE] -- <effv2 CLI args>``: the effv2 CLI with a
    callback that SIGKILLs the process right after optimizer step N, recording torch's warnings."""
    step, wfile = None, None
    while argv and argv[0] != "--":
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--kill-at-step":
            step = int(value)
        elif flag == "--warnings":
            wfile = Path(value)
        else:
            raise SystemExit(f"_effv2: unknown flag {flag}")
    argv = argv[1:]
    if wfile is not None:
        seen: set[str] = set()
        original = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            text = str(message)
            if text not in seen:
                seen.add(text)
                with open(wfile, "a") as fh:  # append at once: a SIGKILL must not lose what was seen
                    fh.write(json.dumps({"category": category.__name__, "message": text}) + "\n")
            original(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        warnings.simplefilter("always")

    import effv2.training.api as api
    from effv2.cli.main import main as effv2_main

    if step is not None:

        class KillAtStep:
            def on_step_end(self, trainer) -> None:
                if trainer.state.global_step == step:
                    os.kill(os.getpid(), signal.SIGKILL)

            def on_epoch_end(self, trainer, record) -> None:
                pass

        real = api.train

        def train(*a, callbacks=(), **kw):
            return real(*a, callbacks=[*callbacks, KillAtStep()], **kw)

        api.train = train  # effv2.cli.train looks train up on the module at call time
    return effv2_main(argv)


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def checkpoint_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.startswith(TRAIN_KEYS)}


def nondeterministic_kernels(wfile: Path) -> list[str]:
    if not wfile.is_file():
        return []
    kernels = set()
    for line in wfile.read_text().splitlines():
        msg = json.loads(line)["message"]
        if NONDET_MARK in msg:
            kernels.add(msg.split(NONDET_MARK)[0].strip())
        elif "CUBLAS_WORKSPACE_CONFIG" in msg:  # torch's cuBLAS determinism warning (the variable is unset)
            kernels.add("cuBLAS (CUBLAS_WORKSPACE_CONFIG not set)")
    return sorted(kernels)


# --------------------------------------------------------------------------- part: train
# What each variant must have run with, read off the Probe: (key, expected value).
TRAIN_EXPECT = {
    "fp16": (("amp", "fp16"), ("grad_scaler", True)),
    "bf16": (("amp", "bf16"), ("grad_scaler", False)),
    "channels_last": (("channels_last", True), ("weights_channels_last", True)),
    "compile": (("compile", True), ("forward_type", "OptimizedModule")),
}


def part_train(ctx: Context, numbers: dict[str, Any]) -> None:
    import torch

    ctx.need_device()
    data = fmnist_subset(ctx)
    runs = ctx.out / "train"
    variants = {
        "fp16": ["amp=fp16", "channels_last=false"],
        "bf16": ["amp=bf16", "channels_last=false"],
        "channels_last": ["amp=none", "channels_last=true"],
        "compile": ["amp=none", "channels_last=false", "compile=true"],
    }
    numbers.update({"model": train_model(ctx), "recipe": TRAIN_RECIPE, "overrides": train_overrides(ctx)})
    numbers["steps_per_epoch"] = steps_per_epoch(ctx)
    numbers["variants"] = {}
    if ctx.dry_run:
        # inductor's C++ compile of even the tiniest model costs > 1 minute on 2 cores; the dry run keeps
        # effv2's compile path (torch.compile -> dynamo -> AOT autograd) and only swaps the backend
        numbers["compile_backend"] = "aot_eager (dry run)"
    for name, extra in variants.items():
        out = runs / name
        t0 = time.perf_counter()
        row: dict[str, Any] = {}
        numbers["variants"][name] = row
        probe = Probe()
        try:
            with _compile_backend("aot_eager" if ctx.dry_run else None):
                summary = train_in_process(ctx, data, out, extra, callbacks=(probe,))
        except Exception as e:
            traceback.print_exc()
            _problem(numbers, f"{name}: {type(e).__name__}: {e}")
            continue
        finally:
            row["seconds"] = round(time.perf_counter() - t0, 2)
        rows = read_metrics(out)
        seen = {**probe.seen.pop("runtime", {}), **probe.seen}
        steps = probe.losses
        q = max(1, len(steps) // 4)
        row.update(
            {
                "train_loss": [r["train_loss"] for r in rows],
                "top1": [r["top1"] for r in rows],
                "test_top1": summary.get("test_top1"),
                "img_per_s": summary.get("img_per_s"),
                "wall_s": rows[-1].get("wall_s"),
                "steps": len(steps) + 1,
                "step_loss_first_quarter": round(sum(steps[:q]) / q, 4) if steps else None,
                "step_loss_last_quarter": round(sum(steps[-q:]) / q, 4) if steps else None,
                "nonfinite_steps": summary.get("nonfinite_steps"),
                "ran_with": seen,
            }
        )
        for key, want in TRAIN_EXPECT[name]:
            if seen.get(key) != want:
                _problem(numbers, f"{name}: ran with {key}={seen.get(key)!r}, expected {want!r}")
        losses = row["train_loss"]
        if not all(map(_finite, losses)):
            _problem(numbers, f"{name}: non-finite train_loss {losses}")
        elif len(losses) < 2 or not losses[-1] < losses[0]:
            _problem(numbers, f"{name}: train_loss did not fall ({losses})")

    # kill + resume, bitwise, deterministic mode
    det = ["amp=none", "channels_last=false", "deterministic=true", "checkpoint_every_steps=3"]
    full, part = runs / "det_full", runs / "det_part"
    wfile = runs / "det_warnings.jsonl"
    wfile.unlink(missing_ok=True)
    kill_at = steps_per_epoch(ctx) + 2  # mid epoch 2; the last checkpoint is an earlier step
    res: dict[str, Any] = {"kill_at_step": kill_at, "checkpoint_every_steps": 3}
    # torch's reproducibility notes: cuBLAS needs this set (before CUDA starts) to be deterministic;
    # effv2's runtime.deterministic() does not set it, so the check runs with whatever the user has
    res["CUBLAS_WORKSPACE_CONFIG"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    numbers["kill_resume"] = res
    t0 = time.perf_counter()

    class Flags:  # what deterministic mode set, seen from inside the run
        def on_step_end(self, trainer) -> None:
            res["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
            res["warn_only"] = torch.is_deterministic_algorithms_warn_only_enabled()
            res["cudnn_benchmark"] = torch.backends.cudnn.benchmark
            res["cudnn_deterministic_during_run"] = torch.backends.cudnn.deterministic

        def on_epoch_end(self, trainer, record) -> None:
            pass

    def record(caught) -> None:
        with open(wfile, "a") as fh:
            for w in caught:
                fh.write(json.dumps({"category": w.category.__name__, "message": str(w.message)}) + "\n")

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_in_process(ctx, data, full, det, callbacks=(Flags(),))
        record(caught)
    except Exception as e:
        traceback.print_exc()
        _problem(numbers, f"kill_resume: uninterrupted run: {type(e).__name__}: {e}")
        return
    # the run to kill goes through the effv2 CLI in a fresh process (a SIGKILL must not take this one down)
    killed = effv2_subprocess(train_args(ctx, data, part, det), kill_at_step=kill_at, warnings_file=wfile)
    res["killed_rc"] = killed.returncode
    if killed.returncode != -signal.SIGKILL:
        _problem(numbers, f"kill_resume: expected SIGKILL (-9), got {killed.returncode}: {_last_line(killed.stderr)}")
        return
    try:  # the resume runs here: `effv2 train --resume` is this same train(resume=True) call
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_in_process(ctx, data, part, [], resume=True)
        record(caught)
        res["resumed_rc"] = 0
    except Exception as e:
        traceback.print_exc()
        res["resumed_rc"] = 1
        _problem(numbers, f"kill_resume: resume: {type(e).__name__}: {e}")
        return
    res["seconds"] = round(time.perf_counter() - t0, 2)
    a = checkpoint_tensors(full / "checkpoints" / "last.safetensors")
    b = checkpoint_tensors(part / "checkpoints" / "last.safetensors")
    differ = sorted(k for k in a if k not in b or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]))
    differ += sorted(k for k in b if k not in a)
    res.update({"tensors": len(a), "sections": sorted({k.split("/")[0] for k in a}), "differ": differ[:20]})
    res["n_differ"] = len(differ)
    res["nondeterministic_kernels"] = nondeterministic_kernels(wfile)
    lines = wfile.read_text().splitlines() if wfile.is_file() else []
    res["warnings"] = sorted({json.loads(line)["message"][:300] for line in lines})[:30]
    if not a:
        _problem(numbers, "kill_resume: no model/ema/optim tensors in the checkpoint")
    if differ:
        _problem(numbers, f"kill_resume: {len(differ)} of {len(a)} tensors differ after resume, e.g. {differ[0]}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:400] if lines else "no output"


def trained_run(ctx: Context) -> Path:
    for name in ("channels_last", "bf16", "fp16", "det_full", "compile"):
        run = ctx.out / "train" / name
        if (run / "checkpoints").is_dir() and (run / "metrics.jsonl").is_file():
            return run
    raise Skip("no trained run from the train part (run it first, or it failed)")


# --------------------------------------------------------------------------- part: torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_torchrun(ctx: Context, numbers: dict[str, Any]) -> None:
    import torch

    ctx.need_device()
    data = fmnist_subset(ctx)
    nprocs = [1] + ([2] if ctx.cuda and torch.cuda.device_count() >= 2 else [])
    numbers["backend"] = "nccl" if ctx.cuda else "gloo"
    numbers["two_process"] = "run" if 2 in nprocs else "not run: fewer than 2 GPUs" if ctx.cuda else "not run: dry run"
    for n in nprocs:
        out = ctx.out / "torchrun" / f"nproc{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "effv2"]
        cmd += train_args(ctx, data, out, ["amp=none", "epochs=1"])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        row: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 2), "rc": proc.returncode}
        numbers[f"nproc{n}"] = row
        if proc.returncode != 0:
            _problem(numbers, f"nproc {n}: exit {proc.returncode}: {_last_line(proc.stderr)}")
            continue
        rows = read_metrics(out)
        cfg = json.loads((out / "config.json").read_text())
        row.update({"world_size": cfg.get("world_size"), "epochs": len(rows), "train_loss": rows[-1]["train_loss"]})
        if cfg.get("world_size") != n:
            _problem(numbers, f"nproc {n}: config.json world_size {cfg.get('world_size')}")
        if len(rows) != 1:
            _problem(numbers, f"nproc {n}: {len(rows)} metrics rows, expected 1 (one writer)")


# --------------------------------------------------------------------------- part: eval / predict
def effv2_cli(argv: list[str]) -> tuple[int, str, str]:
    """``effv2 <argv>`` run here, through the CLI's own main(): (exit status, stdout, stderr). The part is a
    fresh process already, so this is what the command does, without paying for another interpreter."""
    import io

    from effv2.cli.main import main as effv2_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = effv2_main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code if isinstance(e.code, int) else 2
    sys.stdout.write(out.getvalue())
    sys.stderr.write(err.getvalue())
    return int(rc or 0), out.getvalue(), err.getvalue()


def part_eval_predict(ctx: Context, numbers: dict[str, Any]) -> None:
    from PIL import Image

    ctx.need_device()
    run = trained_run(ctx)
    data = fmnist_subset(ctx)
    numbers["run"] = str(run)
    args = ["eval", "--checkpoint", str(run), "--data", "fashion-mnist", "--data-dir", str(data)]
    rc, stdout, stderr = effv2_cli([*args, "--device", ctx.device, "--json"])
    numbers["eval_rc"] = rc
    if rc != 0:
        _problem(numbers, f"eval: exit {rc}: {_last_line(stderr)}")
    else:
        numbers["eval"] = _json_tail(stdout)
        if isinstance(numbers["eval"], dict) and ctx.cuda and not str(numbers["eval"].get("device")).startswith("cuda"):
            _problem(numbers, f"eval ran on {numbers['eval'].get('device')}, not CUDA")
    imgs = []
    for i, arr in enumerate(_idx(data / "t10k-images-idx3-ubyte.gz")[:4]):
        imgs.append(ctx.out / f"predict{i}.png")
        Image.fromarray(arr.numpy()).save(imgs[-1])
    rc, stdout, stderr = effv2_cli(
        ["predict", "--checkpoint", str(run), "--device", ctx.device, "--json", "--top-k", "3", *map(str, imgs)]
    )
    numbers["predict_rc"] = rc
    if rc != 0:
        _problem(numbers, f"predict: exit {rc}: {_last_line(stderr)}")
    else:
        numbers["predict"] = _json_tail(stdout)
        numbers["predict_timing"] = _last_line(stderr)  # "N image(s), <kind> on <device>: ..."
        if ctx.cuda and " on cuda" not in numbers["predict_timing"]:
            _problem(numbers, f"predict did not run on CUDA: {numbers['predict_timing']}")


def _json_tail(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[-2000:]


def part_export(ctx: Context, numbers: dict[str, Any]) -> None:
    """`effv2 export` of the trained run to each format, traced and checked on the device (max abs logit
    difference and top-1 agreement against the PyTorch model), then `effv2 predict` on the ONNX file."""
    import importlib.util

    from PIL import Image

    ctx.need_device()
    run = trained_run(ctx)
    data = fmnist_subset(ctx)
    imgs = []
    for i, arr in enumerate(_idx(data / "t10k-images-idx3-ubyte.gz")[:4]):
        imgs.append(ctx.out / f"export{i}.png")
        Image.fromarray(arr.numpy()).save(imgs[-1])
    formats = ["torch-export", "safetensors", "folder"]
    formats += ["onnx"] if importlib.util.find_spec("onnxruntime") else []
    suffix = {"onnx": ".onnx", "torch-export": ".pt2", "safetensors": ".safetensors", "folder": ""}
    for fmt in formats:
        target = ctx.out / "export" / f"model-{fmt}{suffix[fmt]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        argv = ["export", "--checkpoint", str(run), "--format", fmt, "--out", str(target), "--device", ctx.device]
        argv += ["--dynamic-batch"] if fmt in ("onnx", "torch-export") else []
        rc, stdout, stderr = effv2_cli([*argv, "--json", "--check-images", *map(str, imgs)])
        numbers[f"{fmt}_rc"] = rc
        numbers[fmt] = _json_tail(stdout)
        if rc != 0:
            _problem(numbers, f"export {fmt}: exit {rc}: {_last_line(stderr)}")
    if "onnx" in formats and numbers.get("onnx_rc") == 0:
        onnx = ctx.out / "export" / "model-onnx.onnx"
        rc, stdout, stderr = effv2_cli(["predict", "--checkpoint", str(onnx), "--json", *map(str, imgs)])
        numbers["predict_onnx_rc"] = rc
        if rc != 0:
            _problem(numbers, f"predict on the ONNX export: exit {rc}: {_last_line(stderr)}")


# --------------------------------------------------------------------------- part: bench
def part_bench(ctx: Context, numbers: dict[str, Any]) -> None:
    import importlib.util

    from effv2.bench.compare import BenchConfig, run_bench

    ctx.need_device()
    compare = ("timm",) if importlib.util.find_spec("timm") else ()
    numbers["compare"] = list(compare)
    if not compare:
        numbers["note"] = "timm is not installed: effv2 timed alone"
    size, batch, steps, warmup = (64, 2, 2, 1) if ctx.dry_run else (224, 64, 20, 5)
    numbers["results"] = {}
    models = ("efficientnetv2_b0",) if ctx.dry_run else ("efficientnetv2_b0", "efficientnetv2_s")
    for model in models:
        for mode in ("train", "infer"):
            cfg = BenchConfig(
                model=model,
                image_size=size,
                batch_size=batch,
                mode=mode,
                steps=steps,
                warmup=warmup,
                compare=compare,
                device=ctx.device,
            )
            rep = run_bench(cfg)
            eff = rep["results"][0]
            numbers["results"][f"{model}/{mode}"] = {
                "effv2_settings": rep["effv2_settings"],
                "img_per_s": {r["variant"]: r["img_per_s"] for r in rep["results"]},
                "ratios": rep["ratios"],
                "peak_share": eff["peak_share"],
                "peak_how": eff["peak_how"],
                "logit_check": rep["logit_check"],
            }
            if not (eff["img_per_s"] > 0):
                _problem(numbers, f"{model}/{mode}: img/s {eff['img_per_s']}")


# --------------------------------------------------------------------------- part: data
def write_jpeg_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` smooth random RGB JPEGs of ``size`` px in two class folders (upscaled noise, so they compress
    like photos rather than like white noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        img.save(root / ("a" if i % 2 else "b") / f"{i:05d}.jpg", quality=90)
    return root


def part_data(ctx: Context, numbers: dict[str, Any]) -> None:
    import torch

    from effv2.data.imagesets import FileImageSet
    from effv2.data.loader import train_batches
    from effv2.data.sources import load_source

    ctx.need_device()
    n, size, crop, batch = (64, 64, 32, 16) if ctx.dry_run else (2048, 256, 224, 128)
    folder = ctx.out / "jpegs"
    if folder.exists():
        shutil.rmtree(folder)
    write_jpeg_folder(folder, n, size)
    bundle = load_source(str(folder), val_fraction=0.1)
    train = bundle.train
    if not isinstance(train, FileImageSet):
        raise RuntimeError(f"load_source(folder) gave a {type(train).__name__}, expected a FileImageSet")
    numbers.update({"images": len(train), "file_px": size, "image_size": crop, "batch_size": batch})
    workers_list = (0, 2) if ctx.dry_run else tuple(w for w in (0, 2, 4, 8) if w <= (os.cpu_count() or 1))
    numbers["workers"] = list(workers_list)
    for workers in workers_list:
        t0 = time.perf_counter()
        seen = 0
        for b in train_batches(
            train,
            batch_size=batch,
            image_size=crop,
            randaug_magnitude=0.0,
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
            num_classes=bundle.num_classes,
            seed=0,
            epoch=0,
            num_workers=workers,
            device=ctx.device,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ):
            seen += b.x.shape[0] if hasattr(b, "x") else len(b[0])
        if ctx.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        numbers[f"loader_workers{workers}_img_per_s"] = round(seen / dt, 1)
        numbers[f"loader_workers{workers}_images"] = seen
        if seen == 0:
            _problem(numbers, f"loader num_workers={workers}: no images")

    import torchvision
    from torchvision.io import decode_jpeg, read_file

    blobs = [read_file(p) for p in train.paths]
    dev = ctx.device
    numbers["decode_jpeg_device"] = dev
    numbers["torchvision"] = torchvision.__version__
    decode_jpeg(blobs[:batch], device=dev)  # warm-up (CUDA: nvjpeg handle)
    if ctx.cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    for start in range(0, len(blobs), batch):
        imgs = decode_jpeg(blobs[start : start + batch], device=dev)
        done += len(imgs)
    if ctx.cuda:
        torch.cuda.synchronize()
    numbers["decode_jpeg_img_per_s"] = round(done / (time.perf_counter() - t0), 1)
    if tuple(imgs[0].shape) != (3, size, size):
        _problem(numbers, f"decode_jpeg: shape {tuple(imgs[0].shape)}, expected (3, {size}, {size})")


PART_FUNCS = {
    "models": part_models,
    "train": part_train,
    "torchrun": part_torchrun,
    "eval_predict": part_eval_predict,
    "export": part_export,
    "bench": part_bench,
    "data": part_data,
}


if __name__ == "__main__":
    raise SystemExit(main())
