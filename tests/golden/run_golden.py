"""The behaviour-preservation golden run: efficientnetv2_pico, 3 epochs, progressive on, fixed seed,
--deterministic, on a 256/128-image Fashion-MNIST subset. ``python tests/golden/run_golden.py --write``
records it (tests/golden/pico_progressive.json); tests/training/test_golden.py checks it.

What is compared: every metrics.jsonl row without its wall-clock fields, and a SHA-256 of each
section (model, ema, optimizer) of the final checkpoint's tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "pico_progressive.json"
SHARED = HERE.parents[2] / "shared" / "data" / "fashion-mnist"
OVERRIDES = [
    "epochs=3",
    "batch_size=32",
    "eval_batch_size=64",
    "progressive.n_stages=3",
    "progressive.min_size=16",
    "progressive.max_size=24",
    "eval_size=24",
    "amp=none",
    "channels_last=false",
    "ema_decay=0.9",
    "num_workers=0",
    "progressive.randaug_max=6",
    "progressive.mixup_max=0.2",
    "seed=3",
    "warmup_epochs=1",
    "grad_clip=5",
    "lr_schedule=cosine",  # the recipe (fmnist-cpu) moved to linear; the golden keeps the schedule it recorded
]
WALL_KEYS = {"wall_s"}


def _idx(path: Path) -> torch.Tensor:
    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return torch.frombuffer(bytearray(b[4 + 4 * nd :]), dtype=torch.uint8).view(*dims)


def write_subset(dst: Path, src: Path = SHARED) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 256), ("t10k", 128)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            arr = _idx(src / name)[:n]
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
            with gzip.open(dst / name, "wb") as fh:
                fh.write(header + arr.numpy().tobytes())
    return dst


def fingerprint(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k not in WALL_KEYS} for r in rows]
    sections: dict[str, hashlib._Hash] = {}
    with safe_open(str(run / "checkpoints" / "last.safetensors"), framework="pt") as f:
        for key in sorted(f.keys()):
            section = key.split("/", 1)[0]
            if section not in ("model", "ema", "optim"):
                continue
            t = f.get_tensor(key).contiguous()
            h = sections.setdefault(section, hashlib.sha256())
            h.update(key.encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"metrics": rows, "sha256": {k: h.hexdigest() for k, h in sorted(sections.items())}}


def isa_flags() -> list[str]:
    """The CPU features that select oneDNN's kernels (and so the last bits of every float)."""
    from effv2.bench.machine import cpu_info

    flags = set(cpu_info()["flags"])
    return [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2", "fma") if f in flags]


def run_golden(tmp: Path) -> dict:
    from effv2.training.api import train

    data = write_subset(tmp / "fmnist")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            "efficientnetv2_pico",
            "fashion-mnist",
            tmp / "run",
            data_dir=str(data),
            overrides=OVERRIDES,
            deterministic=True,
            quiet=True,
        )
    finally:
        torch.set_num_threads(threads)
    return fingerprint(tmp / "run")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fp = run_golden(Path(d))
    if "--write" in sys.argv:
        GOLDEN.write_text(
            json.dumps(
                {"recorded_with": {"cpu_flags": isa_flags(), "torch": torch.__version__, "threads": 1}, **fp}, indent=1
            )
            + "\n"
        )
    print(json.dumps(fp["sha256"], indent=1))
