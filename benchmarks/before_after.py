"""Speed and accuracy of the demo's recipe before and after a change, measured side by side.

    python benchmarks/before_after.py --before /tmp/golden_wt/src --rounds 2 --train 20000 --epochs 2

Runs ``effv2 train --model efficientnetv2_mini --data fashion-mnist`` with the fmnist-cpu recipe
(shortened to ``--epochs``; both progressive stages run) on the first ``--train`` training images,
alternating the two source trees (ABAB...), each run alone, and prints img/s and val/test top-1 of
each run and the after/before ratio of the medians. The "before" tree is any checkout of effv2's
src/ folder (e.g. ``git worktree add /tmp/before <commit>``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "golden"))


def subset(dst: Path, src: Path, n_train: int, n_test: int) -> Path:
    import gzip

    from run_golden import _idx

    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3", "labels-idx1"):
            arr = _idx(src / f"{split}-{kind}-ubyte.gz")[:n]
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
            with gzip.open(dst / f"{split}-{kind}-ubyte.gz", "wb") as fh:
                fh.write(header + arr.numpy().tobytes())
    return dst


def run(src: str, data: Path, out: Path, epochs: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "effv2",
        "train",
        "--model",
        "efficientnetv2_mini",
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--quiet",
        "--epochs",
        str(epochs),
        "--seed",
        "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: training failed:\n{proc.stderr[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    return {
        "img_per_s": s["img_per_s"],
        "train_s": s["train_s"],
        "val_top1": s["top1"],
        "test_top1": s.get("test_top1"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the src/ folder of the code before the change")
    ap.add_argument("--after", default=str(HERE.parent / "src"))
    ap.add_argument("--data-dir", default=os.environ.get("EFFV2_DATA", str(HERE.parents[1] / "shared" / "data")))
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(Path(tmp) / "fm", Path(a.data_dir) / "fashion-mnist", a.train, a.test)
        rows: dict[str, list[dict]] = {"before": [], "after": []}
        for r in range(a.rounds):
            for name, src in (("before", a.before), ("after", a.after)):
                res = run(src, data, Path(tmp) / f"{name}{r}", a.epochs, a.threads)
                rows[name].append(res)
                print(f"round {r} {name}: {res}", flush=True)
    med = {k: statistics.median(x["img_per_s"] for x in v) for k, v in rows.items()}
    print(json.dumps({"median_img_per_s": med, "after_over_before": med["after"] / med["before"], "runs": rows}))


if __name__ == "__main__":
    main()
