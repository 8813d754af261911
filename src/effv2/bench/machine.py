"""What machine we run on, its theoretical peak FLOP/s, and the fast execution defaults.

Peak FLOP/s is derived, never measured:

* CPU: cores x clock x FLOPs per cycle per core (cores = usable physical cores, capped by
  ``torch.get_num_threads()``), the last read off the ISA flags in
  ``lscpu`` / ``/proc/cpuinfo``:

  ======================  ===========================================================  =========
  precision, flag          why                                                          FLOP/cyc
  ======================  ===========================================================  =========
  fp32, avx512f            16 fp32 lanes x 2 (an FMA is 2 FLOPs) x 2 FMA units          64
  fp32, avx2 + fma         8 lanes x 2 x 2 256-bit FMA units (Haswell+, Zen 2+)         32
  fp32, avx                8 lanes x (1 add + 1 mul port)                               16
  bf16, amx_bf16           AMX TMUL: 1024 bf16 FLOPs per cycle per core (Intel)         1024
  bf16, avx512_bf16        VDPBF16PS: 16 lanes x 2 pairs x 2 FLOPs x 2 units            128
  fp16, amx_fp16           AMX TMUL, as bf16                                            1024
  fp16, avx512_fp16        32 fp16 lanes x 2 x 2 units                                  128
  ======================  ===========================================================  =========

  The number of 512-bit FMA units per core is not visible in the flags. It is read off the vendor
  and family: AMD family 25 with AVX-512 (Zen 4) runs 512-bit instructions on two 256-bit halves,
  one 512-bit FMA (or VDPBF16PS) per cycle: 1 unit; AMD family 26 (Zen 5) has a full 512-bit
  datapath with two FMA pipes: 2; every other part is assumed to have 2 (every Xeon Scalable
  Gold/Platinum and every Xeon since Sapphire Rapids). The 256-bit (AVX2) rate does not depend on
  it: every AVX2 core since Haswell and Zen 2 has two 256-bit FMA pipes (Zen 3, family 25 without
  AVX-512, included). Pass ``fma_units`` to override. Because a derived peak is only as good as
  these tables and the reported clock, :func:`measured_gemm_flops` times a large ``torch.mm``
  and ``effv2 bench`` prints both. The clock is ``CPU max MHz`` from lscpu when the kernel reports it, else the
  ``cpu MHz`` of /proc/cpuinfo (in a VM usually the nominal clock: turbo is not visible, and AVX-512
  / AMX code runs at a lower licence clock, so the real ceiling can be somewhat off either way).
  Without the flags for a precision, its peak falls back to the next lower ISA that computes it.
* CUDA: a table of NVIDIA datasheet dense (no sparsity) tensor-core numbers by device name. fp32
  convolutions on Ampere and newer run on TF32 tensor cores by default
  (``torch.backends.cudnn.allow_tf32``), so fp32 peak is the TF32 number then. Unknown devices: None.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import lru_cache
from typing import Any

import torch

from ..runtime import resolve_device

# FLOPs per cycle per core, best first within each precision: (flag, flops, reason).
_CPU_RATES: dict[str, tuple[tuple[str, int, str], ...]] = {
    "fp32": (
        ("avx512f", 64, "avx512f: 16 lanes x 2 (FMA) x {u} FMA units"),
        ("avx2", 32, "avx2+fma: 8 lanes x 2 (FMA) x 2 256-bit FMA units"),
        ("avx", 16, "avx: 8 lanes x (1 add + 1 mul)"),
        ("sse2", 8, "sse2: 4 lanes x (1 add + 1 mul)"),
    ),
    "bf16": (
        ("amx_bf16", 1024, "amx_bf16: AMX TMUL 1024 bf16 FLOP/cycle"),
        ("avx512_bf16", 128, "avx512_bf16: VDPBF16PS 16 lanes x 2 pairs x 2 x {u} units"),
    ),
    "fp16": (
        ("amx_fp16", 1024, "amx_fp16: AMX TMUL 1024 fp16 FLOP/cycle"),
        ("avx512_fp16", 128, "avx512_fp16: 32 lanes x 2 (FMA) x {u} units"),
    ),
}

# NVIDIA datasheets, dense TFLOP/s: (name pattern, fp32 CUDA cores, tf32, bf16, fp16). Order matters:
# "A100" before "A10G" before "A10", "L40S" before "L40" before "L4", "H100 PCIe" before "H100".
_CUDA_TABLE: tuple[tuple[str, float, float | None, float | None, float], ...] = (
    ("H200", 67.0, 494.7, 989.4, 989.4),
    ("H100 PCIe", 51.2, 378.0, 756.0, 756.0),
    ("H100", 67.0, 494.7, 989.4, 989.4),  # SXM / HBM3
    ("A100", 19.5, 156.0, 312.0, 312.0),
    ("A10G", 31.2, 35.0, 70.0, 70.0),
    ("A10", 31.2, 62.5, 125.0, 125.0),
    ("L40S", 91.6, 183.0, 362.0, 362.0),
    ("L40", 90.5, 90.5, 181.0, 181.0),
    ("L4", 30.3, 60.0, 121.0, 121.0),
    ("V100", 15.7, None, None, 125.0),
    ("T4", 8.1, None, None, 65.0),
)


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_info() -> dict[str, Any]:
    """Model name, usable physical cores, torch threads, clock (MHz, and where it came from), ISA flags."""
    return {**_cpu_info(), "torch_threads": torch.get_num_threads()}


@lru_cache(maxsize=1)
def _cpu_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    for line in _run(["lscpu"]).splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    cpuinfo = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        pass

    def first(pattern: str) -> str | None:
        m = re.search(pattern, cpuinfo, re.MULTILINE)
        return m.group(1).strip() if m else None

    flags = set((fields.get("Flags") or first(r"^flags\s*:(.*)$") or "").split())
    model = fields.get("Model name") or first(r"^model name\s*:(.*)$") or platform.processor() or "unknown"
    threads_per_core = int(fields.get("Thread(s) per core", "1") or 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    cores = max(1, usable // max(1, threads_per_core))
    if fields.get("CPU max MHz"):
        mhz, source = float(fields["CPU max MHz"]), "lscpu 'CPU max MHz'"
    elif first(r"^cpu MHz\s*:(.*)$"):
        mhz, source = float(first(r"^cpu MHz\s*:(.*)$") or 0), "/proc/cpuinfo 'cpu MHz' (nominal; turbo not visible)"
    else:
        mhz, source = None, "no clock reported"
    vendor = fields.get("Vendor ID") or first(r"^vendor_id\s*:(.*)$") or ""
    family = fields.get("CPU family") or first(r"^cpu family\s*:(.*)$") or ""
    model_no = fields.get("Model") or first(r"^model\s*:(.*)$") or ""
    return {
        "model_name": model,
        "cores": cores,
        "logical_cpus": usable,
        "threads_per_core": threads_per_core,
        "mhz": mhz,
        "mhz_source": source,
        "flags": sorted(flags),
        "vendor": vendor,
        "family": int(family) if family.isdigit() else None,
        "model": int(model_no) if model_no.isdigit() else None,
    }


# the ISA flags that decide effv2's CPU defaults and peaks, in the order a reader compares CPUs by
ISA_FLAGS: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx512_fp16")


def cpu_label(info: dict[str, Any] | None = None) -> str:
    """One line naming the CPU as a figure must (``lscpu`` model name, family and model numbers, the ISA
    flags that matter): 'AMD EPYC, family 25 model 17, 2 cores, avx2 fma avx512f avx512_bf16 avx512_vnni'."""
    info = info or cpu_info()
    parts = [info["model_name"]]
    if info.get("family") is not None:
        parts.append(f"family {info['family']}" + (f" model {info['model']}" if info.get("model") is not None else ""))
    parts.append(f"{info['cores']} cores")
    isa = [f for f in ISA_FLAGS if f in set(info.get("flags", ()))]
    parts.append(" ".join(isa) if isa else "no AVX2")
    return ", ".join(parts)


def default_fma_units(info: dict[str, Any]) -> tuple[int, str]:
    """512-bit FMA units per core, and why (see the module docstring)."""
    if info.get("vendor") == "AuthenticAMD" and info.get("family") == 25:
        return 1, "AMD family 25 (Zen 4): 512-bit ops double-pumped on 256-bit units"
    if info.get("vendor") == "AuthenticAMD" and info.get("family") == 26:
        return 2, "AMD family 26 (Zen 5): full-width 512-bit FMA pipes"
    return 2, "assumed"


def cpu_peak_flops(
    precision: str = "fp32", *, info: dict[str, Any] | None = None, fma_units: int | None = None
) -> tuple[float | None, str]:
    """(peak FLOP/s, how it was derived) for ``precision`` in fp32 / bf16 / fp16.
    ``fma_units``: 512-bit FMA units per core; None = :func:`default_fma_units`."""
    info = info or cpu_info()
    flags = set(info["flags"])
    units_why = "given"
    if fma_units is None:
        fma_units, units_why = default_fma_units(info)
    if info["mhz"] is None:
        return None, "unknown: the CPU clock is not reported"
    chain = list(_CPU_RATES.get(precision, ())) + list(_CPU_RATES["fp32"])
    for flag, per_cycle, why in chain:
        if flag in flags or (flag == "avx2" and {"avx2", "fma"} <= flags):
            if "{u}" in why:
                per_cycle = per_cycle * fma_units // 2
                why = why.replace("{u} units", "{u} units (" + units_why + ")").replace(
                    "{u} FMA units", "{u} FMA units (" + units_why + ")"
                )
            # Cores torch can use: the usable physical cores, capped by torch's intra-op threads.
            cores, ghz = min(info["cores"], info.get("torch_threads") or info["cores"]), info["mhz"] / 1000
            how = (
                f"{cores} cores (of {info['cores']} usable, {info.get('torch_threads')} torch threads) x "
                f"{ghz:g} GHz ({info['mhz_source']}) x {per_cycle} FLOP/cycle [{why.format(u=fma_units)}]"
            )
            return cores * ghz * 1e9 * per_cycle, how
    return None, "unknown: no known vector ISA flag"


def cuda_peak_flops(precision: str, device_name: str, *, tf32: bool = True) -> tuple[float | None, str]:
    """(peak FLOP/s, how) from the datasheet table; ``tf32``: fp32 convs run on TF32 tensor cores."""
    for pattern, fp32, tf32_rate, bf16, fp16 in _CUDA_TABLE:
        if pattern.lower() in device_name.lower():
            if precision == "bf16":
                rate, what = bf16, "bf16 tensor core"
            elif precision == "fp16":
                rate, what = fp16, "fp16 tensor core"
            elif tf32 and tf32_rate is not None:
                rate, what = tf32_rate, "tf32 tensor core (cuDNN fp32 convs use TF32 by default)"
            else:
                rate, what = fp32, "fp32 CUDA cores"
            if rate is None:
                return None, f"unknown: {pattern} has no {precision} tensor cores"
            return rate * 1e12, f"{device_name}: {rate:g} TFLOP/s dense {what} (NVIDIA datasheet, '{pattern}' row)"
    return None, f"unknown: {device_name!r} is not in the datasheet table"


def peak_flops(device: str | torch.device = "cpu", amp: str = "none") -> tuple[float | None, str]:
    """Theoretical peak FLOP/s for running with ``amp`` (none/bf16/fp16) on ``device``, and how."""
    dev = resolve_device(device)
    precision = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(amp, "fp32")
    if dev.type == "cuda":
        return cuda_peak_flops(precision, torch.cuda.get_device_name(dev), tf32=bool(torch.backends.cudnn.allow_tf32))
    if dev.type == "cpu":
        return cpu_peak_flops(precision)
    return None, f"unknown: no peak table for device type {dev.type!r}"


def describe(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The machine facts written beside every benchmark result."""
    dev = resolve_device(device)
    info = cpu_info()
    out: dict[str, Any] = {
        "device": str(dev),
        "cpu": info["model_name"],
        "cpu_label": cpu_label(info),
        "cpu_cores": info["cores"],
        "cpu_mhz": info["mhz"],
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["cuda"] = torch.version.cuda
    return out


# CPU flags with native bf16 arithmetic that oneDNN uses for bf16 convolutions and matmuls: AMX tiles
# (Intel Sapphire Rapids and later) or AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4 and later).
CPU_BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


def _cpu_bf16_fast() -> bool:
    """bf16 autocast pays on CPU when oneDNN computes bf16 natively (AMX or AVX512-BF16); without
    either flag bf16 is emulated through fp32 conversions and is slower than fp32."""
    flags = set(cpu_info()["flags"])
    return any(f in flags for f in CPU_BF16_FLAGS) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Below this batch size bf16 autocast does not pay on CPU: the per-call casts and weight reorders
# are not amortised (mini @28 batch 1: 0.73x of fp32; b0 @224 batch 1: 1.17x vs 1.25x for fp32 +
# channels_last; from batch 4 on it wins: b0 @128 batch 4 1.38x vs 1.16x).
CPU_BF16_MIN_BATCH = 4


def fast_defaults(device: str | torch.device = "cpu", *, batch_size: int | None = None) -> dict[str, Any]:
    """The execution settings effv2 uses unless told otherwise (trainer, predict, bench).

    Keys: ``amp`` ("none" / "bf16" / "fp16"), ``channels_last`` (bool), ``compile`` (bool),
    ``fold_bn_infer`` (bool: fold BN into the convs for inference, :func:`effv2.models.fuse.fold_bn`).

    Measured on a 2-core Sapphire-Rapids-class Xeon (AMX), efficientnetv2_b0 @128 px batch 32 and
    efficientnetv2_mini @28 px batch 128, every candidate interleaved in one process
    (``benchmarks/bench_models.py defaults``; numbers in docs/bench.md):

    * channels_last: 1.2x train and infer alone; it is also what makes bf16 pay (oneDNN's AMX
      kernels want NHWC). On CUDA NHWC is what tensor-core convs use (NVIDIA, PyTorch docs): on.
    * bf16 autocast: with channels_last 1.57-1.65x train, 2.0-2.2x infer with AMX; on a 2-core AMD
      EPYC with AVX512-BF16 and no AMX, 1 thread, over fp32 channels_last: b0 @128 train 1.50x,
      infer 1.52x; mini @28 train 1.60x, infer 1.59x (docs/bench.md, second study). Without
      either flag bf16 is emulated: off. CUDA: bf16 on Ampere and newer, fp16 before (needs a
      GradScaler when training).
    * fold_bn_infer: 1.1x alone, 1.2x on top of bf16 + channels_last; on CUDA it removes one
      kernel per conv and never adds work: on.
    * compile: no gain over eager bf16 + channels_last on this CPU, and 1.5-3.5 min to compile a
      training step: off (``--compile`` to opt in; on CUDA it can pay for long runs, measure there).
      A time-budgeted training run whose recipe says ``compile: "auto"`` (the demo's) decides for
      itself by timing both (training/budget.py): on a 2-core Zen 4 with avx512_bf16 the demo's 28 px
      model trains 1.24-1.39x faster compiled with static shapes.
    * SiLU(inplace=True) as built: not inplace measured 0.94-1.04x (noise), so the model keeps it.

    ``batch_size`` (optional): on CPU, batches smaller than ``CPU_BF16_MIN_BATCH`` (single-image
    prediction) run fp32, where bf16 measured slower.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {"amp": "bf16" if bf16 else "fp16", "channels_last": True, "compile": False, "fold_bn_infer": True}
    small = batch_size is not None and batch_size < CPU_BF16_MIN_BATCH
    return {
        "amp": "bf16" if _cpu_bf16_fast() and not small else "none",
        "channels_last": True,
        "compile": False,
        "fold_bn_infer": True,
    }


def measured_gemm_flops(precision: str = "fp32", *, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square ``torch.mm`` (``n`` x ``n``, 2 n^3 FLOPs) on the CPU in ``precision``
    (fp32 or bf16), best of ``repeats`` after one warm-up: the practical ceiling that a derived
    peak is checked against (~0.5 s on a 2-core CPU)."""
    import time

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def fast_defaults_reasons(device: str | torch.device = "cpu", *, batch_size: int | None = None) -> dict[str, str]:
    """Why :func:`fast_defaults` chose each setting on this machine (printed by ``effv2 bench``)."""
    dev = resolve_device(device)
    d = fast_defaults(dev, batch_size=batch_size)
    if dev.type == "cuda":
        amp = "bf16: the GPU supports bf16" if d["amp"] == "bf16" else "fp16: no bf16 on this GPU (GradScaler)"
    else:
        flags = set(cpu_info()["flags"])
        have = [f for f in CPU_BF16_FLAGS if f in flags]
        if d["amp"] == "bf16":
            amp = f"bf16: the CPU computes bf16 natively ({', '.join(have)}); measured 1.5-2.2x over fp32"
        elif have and _cpu_bf16_fast():
            amp = f"fp32: batch {batch_size} < {CPU_BF16_MIN_BATCH}, where bf16's casts are not amortised"
        elif have:
            amp = f"fp32: the CPU has {', '.join(have)} but oneDNN reports no native bf16 (ONEDNN_MAX_CPU_ISA?)"
        else:
            amp = "fp32: no amx_bf16 / avx512_bf16 flag, bf16 would be emulated (slower than fp32)"
    why = {
        "amp": amp,
        "channels_last": "on: NHWC is what oneDNN's and cuDNN's fast convolutions use (measured 1.2x on CPU)",
        "compile": "off: no measured gain on CPU for 1.5-3.5 min of compile time (--compile to opt in; "
        "a time-budgeted run with compile: auto times both and keeps the faster)",
        "fold_bn_infer": "on: one conv instead of conv + BN at inference (measured 1.1-1.2x)",
    }
    if dev.type == "cpu":
        from ..runtime.malloc import describe as malloc_line

        why["malloc"] = (
            malloc_line() + ": freed step buffers stay mapped (fp32 training 1.17-1.24x on a Zen 3); "
            "one process, so every variant alike"
        )
    return why
