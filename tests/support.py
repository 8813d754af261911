"""Helpers the tests share: the pico training command line, the CLI in a subprocess (with the kill hook
of tests/fault_run.py and an optional plugin file), a checkpoint's training tensors and a benchmark
script loaded as a module."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

TESTS = Path(__file__).resolve().parent
BENCHMARKS = TESTS.parent / "benchmarks"
FAULT_RUN = TESTS / "fault_run.py"


def load_benchmark(script: str, name: str | None = None, register: bool = False):
    """benchmarks/<script> as a module (the scripts are not a package); ``register`` puts it in
    sys.modules, which dataclasses and pickling need to look its classes up by name."""
    name = name or Path(script).stem
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def pico_train_args(data: Path, out: Path, sets: list[str], *extra: str) -> list[str]:
    """`effv2 train` of efficientnetv2_pico on the Fashion-MNIST subset in ``data`` with ``--set``s."""
    args = [
        "train",
        "--model",
        "efficientnetv2_pico",
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    for s in sets:
        args += ["--set", s]
    return args


def run_cli(*args: str, kill_at: int | None = None, plugin: Path | None = None) -> subprocess.CompletedProcess:
    """The effv2 CLI in a fresh process (one thread); SIGKILLed after step ``kill_at`` when given."""
    runner = [str(FAULT_RUN)] if kill_at is not None or plugin is not None else ["-m", "effv2"]
    runner += ["--import", str(plugin)] if plugin is not None else []
    runner += ["--kill-at-step", str(kill_at)] if kill_at is not None else []
    return subprocess.run(
        [sys.executable, *runner, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def checkpoint_tensors(path: Path, sections: tuple[str, ...] = ("model", "ema", "optim")) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``sections`` (what a bitwise resume must reproduce)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.split("/")[0] in sections}
