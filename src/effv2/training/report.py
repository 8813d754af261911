"""What a run leaves for a person: metrics.jsonl, curves.png, progress lines and the summary."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..io.atomic import atomic_write


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a full disk or a lost folder is a one-line error (the checkpoints written
    so far stay intact, and --resume continues once there is room)."""
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
    except OSError as exc:
        raise UsageError(f"could not write {path}: {exc.strerror or exc}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: ignore it
    return out


def plot_curves(metrics: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss and top-1 against wall time, stage boundaries marked with dotted lines."""
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [m["wall_s"] / 60 for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(t, [m.get("train_loss", float("nan")) for m in metrics], "o-", label="train loss")
    ax1.plot(t, [m["loss"] for m in metrics], "s-", label="eval loss")
    ax1.set_xlabel("wall time (min)")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(t, [m["top1"] for m in metrics], "o-", label="top-1")
    ax2.set_xlabel("wall time (min)")
    ax2.set_ylabel("eval top-1 (%)")
    prev = metrics[0]["stage"]
    for m, x in zip(metrics, t):
        if m["stage"] != prev:
            for ax in (ax1, ax2):
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax2.annotate(
                f"stage {m['stage']} ({m['image_size']} px)",
                (x, ax2.get_ylim()[0]),
                rotation=90,
                fontsize=7,
                va="bottom",
            )
            prev = m["stage"]
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


class Progress:
    """A tqdm bar on a terminal (img/s, loss, stage, size); plain log lines otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int = 0, log_every: int = 50) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.total, self.n, self.desc, self.log_every = total, initial, desc, log_every
        self.t0, self.images = time.perf_counter(), 0
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, images: int, **fields: Any) -> None:
        if not self.enabled:
            return
        self.n += 1
        self.images += images
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        info = {"img/s": f"{rate:.0f}", **{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in fields.items()}}
        if self.bar is not None:
            self.bar.set_postfix(info, refresh=False)
            self.bar.update(1)
        elif self.n % self.log_every == 0 or self.n == self.total:
            print(
                f"{self.desc} step {self.n}/{self.total} " + " ".join(f"{k}={v}" for k, v in info.items()), flush=True
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
