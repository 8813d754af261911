"""Benchmarking: step timing, side-by-side comparison with timm/torchvision, machine peak and fast defaults."""

from .compare import BenchConfig, run_bench
from .machine import fast_defaults, peak_flops
from .timing import time_infer, time_train_step

__all__ = ["BenchConfig", "fast_defaults", "peak_flops", "run_bench", "time_infer", "time_train_step"]
