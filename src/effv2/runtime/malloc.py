"""glibc's malloc, told to keep the memory a training step frees for the next step.

A CPU training step allocates and frees the same activations, gradients and oneDNN scratch buffers
every step, many of them megabytes. glibc serves a block above its mmap threshold (128 KiB at first,
raised as large blocks are freed, up to 32 MiB) with a fresh ``mmap`` and returns it on ``free``, and
trims the top of the heap back to the kernel above 128 KiB of free space; the next step then faults
every page in again. On the demo's model (batch 256, fp32, 2-core AMD EPYC Zen 3) that was 2-3 s of
kernel time per 40 steps and 470,000 page faults per 23 steps; with the settings below, 0.6-0.9 s and
170,000, and the step 1.17x (24 px) and 1.24x (28 px) faster, medians of five alternated process pairs,
every pair won (benchmarks/RESULTS.md, "glibc malloc"). Environment variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``) could say the same, but only when set before the process
starts, hence ``mallopt`` here, in the process, before the first step.

The cost: the process keeps its peak heap instead of handing freed memory back to the kernel (a
training process's peak is what it needs anyway). Not done when the user configures malloc themselves
(any ``MALLOC_*`` variable, ``GLIBC_TUNABLES``, or another allocator in ``LD_PRELOAD``, such as
jemalloc or tcmalloc), with ``EFFV2_MALLOC=off``, or where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

ENV = "EFFV2_MALLOC"
# mallopt's parameter numbers (malloc.h) and the values: large blocks come from the heap, not mmap (1 GiB);
# the heap is not trimmed (int max); each heap growth asks for 256 MiB more than needed
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 1 << 30),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**31 - 1),
    "M_TOP_PAD": (M_TOP_PAD, 1 << 28),
}

_state: dict[str, Any] | None = None  # what the first call did; later calls report it


def why_not(
    environ: Mapping[str, str] | None = None, *, platform_name: str | None = None, libc: str | None = None
) -> str:
    """Why the settings are not applied here, or "" when they are to be (pure given its arguments)."""
    env = os.environ if environ is None else environ
    if env.get(ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return f"{ENV}={env[ENV]}"
    own = sorted(k for k in env if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if own:
        return f"the user's own malloc settings ({', '.join(own)})"
    preload = env.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"another allocator in LD_PRELOAD ({preload})"
    platform_name = sys.platform if platform_name is None else platform_name
    libc = platform.libc_ver()[0] if libc is None else libc
    if platform_name != "linux" or libc != "glibc":
        return f"not glibc ({platform_name}, {libc or 'unknown C library'})"
    return ""


def keep_freed_memory() -> dict[str, Any]:
    """Apply :data:`SETTINGS` with ``mallopt`` once per process (later calls return the first result).

    Returns ``{"applied": True, "settings": {...}}`` or ``{"applied": False, "why": ...}``; recorded in a
    run's config.json. Never raises: an allocator setting is an optimisation, not a reason to fail.
    """
    global _state
    if _state is not None:
        return _state
    reason = why_not()
    if reason:
        _state = {"applied": False, "why": reason}
        return _state
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        refused = [name for name, (param, value) in SETTINGS.items() if mallopt(param, value) != 1]
    except (OSError, AttributeError) as exc:
        _state = {"applied": False, "why": f"mallopt unavailable ({exc})"}
        return _state
    if refused:
        _state = {"applied": False, "why": f"mallopt refused {', '.join(refused)}"}
    else:
        _state = {"applied": True, "settings": {name: value for name, (_, value) in SETTINGS.items()}}
    return _state


def describe(state: Mapping[str, Any] | None = None) -> str:
    """One line for ``effv2 bench`` and the logs."""
    s = keep_freed_memory() if state is None else state
    if not s["applied"]:
        return f"glibc defaults ({s['why']})"
    settings = ", ".join(f"{k}={v}" for k, v in s["settings"].items())
    return f"keeps freed memory (mallopt {settings}; {ENV}=off to leave glibc's defaults)"
