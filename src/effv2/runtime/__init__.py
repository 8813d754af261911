"""The execution policy: where and how tensors run, decided once and used by every path.

Training, evaluation, prediction, the benchmarks and the search all ask this module, so a step
timed for the search's reward or by ``effv2 bench`` runs exactly as training runs it:

- device: "auto" = CUDA when available, else CPU; an unknown or unavailable device is a UsageError;
- amp: "auto" = effv2's measured fast default for the device (:func:`effv2.bench.machine.fast_defaults`:
  bf16 on CPUs with native bf16 and on Ampere+ GPUs, fp16 on older GPUs, off elsewhere);
- channels_last: "auto" = the fast default (on for CPU and CUDA);
- compile: off unless asked; static shapes (a graph per input shape: dynamo's automatic dynamic
  shapes, after the second image size of a progressive run, compiled a graph no faster than eager);
  inductor's cache in the user's cache folder, not /tmp (:mod:`.compile_cache`);
- distributed: torchrun's environment (gloo on CPU, NCCL on CUDA), see :mod:`.distributed`;
- deterministic mode, scoped: :func:`deterministic` restores the process-wide flags on exit;
- replicas: on a CPU in fp32, a shard of each training batch per core in one process (:mod:`.replicas`);
- threads: :func:`use_threads` sets torch's intra-op threads once, for a block, and restores them;
- memory: on CPU, glibc's malloc keeps what a step frees for the next step (:mod:`.malloc`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .compile_cache import use_persistent_compile_cache
from .distributed import Dist, init_distributed
from .malloc import keep_freed_memory
from .replicas import resolve_replicas

AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = [
    "AMP_MODES",
    "Dist",
    "Runtime",
    "autocast",
    "deterministic",
    "resolve_amp",
    "resolve_channels_last",
    "resolve_device",
    "resolve_runtime",
    "synchronize",
    "use_threads",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A torch.device; "auto" means cuda when available, else cpu. Unknown or unavailable: UsageError."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise UsageError(
                f"--device {device}: not a device effv2 knows; use auto, cpu, cuda, cuda:N or mps"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: CUDA is not available on this machine (torch.cuda.is_available() is False)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device}: effv2 runs on cpu, cuda or mps")
    return dev


def resolve_amp(amp: str, device: torch.device, batch_size: int | None = None) -> str:
    """ "auto" -> the fast default for ``device`` (and batch); else the mode itself, checked."""
    if amp == "auto":
        from ..bench.machine import fast_defaults

        return str(fast_defaults(device, batch_size=batch_size)["amp"])
    if amp not in AMP_MODES:
        raise UsageError(f"amp: {amp!r} is not one of auto, {', '.join(AMP_MODES)}")
    return amp


def resolve_channels_last(setting: str | bool, device: torch.device) -> bool:
    if setting == "auto":
        from ..bench.machine import fast_defaults

        return bool(fast_defaults(device)["channels_last"])
    return bool(setting)


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for ``amp`` in AMP_MODES ("none" gives a no-op context)."""
    if amp not in AMP_MODES:
        raise UsageError(f"amp: {amp!r} is not one of {', '.join(AMP_MODES)}")
    dtype = AMP_DTYPES[amp]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Runtime:
    """How one process runs: resolved once (:func:`resolve_runtime`), then only read."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: str = "none"  # "none" | "bf16" | "fp16"
    channels_last: bool = False
    compile: bool = False
    dist: Dist = field(default_factory=Dist)
    replicas: int = 1  # training steps: shards of the batch trained in parallel, one per core group

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise UsageError(f"amp: {self.amp!r} is not one of {', '.join(AMP_MODES)}")

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.amp, self.device)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling; bf16 and fp32 do not."""
        return torch.amp.GradScaler(self.device.type) if self.amp == "fp16" else None

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and memory format (in place; returns it)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the forward pass calls: DDP when distributed, compiled when asked."""
        net: nn.Module = model
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None
            )
        if self.compile:
            # dynamic=False: torch's default marks H and W dynamic once a second image size arrives and
            # recompiles one symbolic-shape graph; measured on the demo's model at 28 px (bf16, 2-core
            # Zen 4): 104 ms a step that way, 71 ms with a static graph per size, 107 ms eager
            use_persistent_compile_cache()
            net = torch.compile(net, dynamic=False)
        return net

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "amp": self.amp,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "replicas": self.replicas,
            "world_size": self.dist.world_size,
        }


def resolve_runtime(
    device: str | torch.device = "auto",
    *,
    amp: str = "auto",
    channels_last: str | bool = "auto",
    compile: bool = False,
    batch_size: int | None = None,
    distributed: bool = False,
    replicas: str | int = 1,
) -> Runtime:
    """The policy for this process. ``distributed=True`` joins torchrun's process group (a no-op
    when not launched by torchrun) and puts each rank on its own GPU. ``replicas``: "auto" or a
    count for training steps (:func:`.replicas.resolve_replicas`; 1 = one batch on all threads)."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()  # once per process: a CPU step's buffers stay mapped between steps (.malloc)
    dist = init_distributed(dev.type) if distributed else Dist()
    if dev.type == "cuda" and dist.enabled:
        dev = torch.device("cuda", dist.local_rank)
    amp_mode = resolve_amp(amp, dev, batch_size)
    n, _ = resolve_replicas(
        replicas, device=dev, amp=amp_mode, batch_size=batch_size, compile=bool(compile), world_size=dist.world_size
    )
    return Runtime(
        device=dev,
        amp=amp_mode,
        channels_last=resolve_channels_last(channels_last, dev),
        compile=bool(compile),
        dist=dist,
        replicas=n,
    )


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Deterministic algorithms for a block (torch's use_deterministic_algorithms, warn-only, and no
    cuDNN autotuning); the previous process-wide settings come back on exit, so one deterministic
    search trial does not change the next one."""
    if not enabled:
        yield
        return
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]


@contextlib.contextmanager
def use_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set once for a block (None: leave them), restored on exit."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
