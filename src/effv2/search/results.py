"""Results a person can read: trials.csv, a printed table, pareto.png and best_spec.json."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..io.atomic import atomic_write, atomic_write_text
from ..models.spec import ArchSpec
from .space import SearchSpace

CSV_COLUMNS = (
    "trial",
    "state",
    "genotype",
    "top1",
    "top5",
    "step_ms",
    "params",
    "macs",
    "reward",
    "screened",
    "predicted_top1",
    "duplicate_of",
    "retry_of",
    "train_s",
    "process",
    "spec",
    "error",
)


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    """One trial as a flat dict (what trials.csv holds); ``spec`` is the ArchSpec's dict or None."""
    a = t.user_attrs
    spec = a.get("spec")
    step_s = a.get("step_s")
    return {
        "trial": t.number,
        "state": t.state.name,
        "genotype": a.get("genotype", ""),
        "top1": a.get("top1"),
        "top5": a.get("top5"),
        "step_ms": None if step_s is None else 1e3 * step_s,
        "step_s": step_s,
        "params": a.get("params"),
        "macs": a.get("macs"),
        "reward": t.value if t.state == TrialState.COMPLETE else None,
        "screened": a.get("screened", 0),
        "predicted_top1": a.get("predicted_top1"),
        "duplicate_of": a.get("duplicate_of"),
        "retry_of": t.system_attrs.get("failed_trial"),
        "train_s": a.get("train_s"),
        "backbone": bool(a.get("backbone", False)),
        "process": a.get("process"),
        "spec": spec,
        "error": a.get("error"),
    }


def records(study: optuna.Study, *, complete_only: bool = False) -> list[dict[str, Any]]:
    states = (TrialState.COMPLETE,) if complete_only else None
    return [trial_record(t) for t in sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)]


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials not dominated in (lower step time, higher top-1), sorted by step time."""
    pts = sorted(
        (r for r in rows if r["step_ms"] is not None and r["top1"] is not None),
        key=lambda r: (r["step_ms"], -r["top1"]),
    )
    front, best = [], -math.inf
    for r in pts:
        if r["top1"] > best:
            front.append(r)
            best = r["top1"]
    return front


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        out = dict(r)
        out["spec"] = ArchSpec.from_dict(r["spec"]).to_str() if r["spec"] else ""
        for k in ("top1", "top5", "step_ms", "predicted_top1", "train_s"):
            out[k] = "" if r.get(k) is None else f"{r[k]:.4g}"
        out["reward"] = "" if r["reward"] is None else f"{r['reward']:.5f}"
        w.writerow({k: "" if v is None else v for k, v in out.items()})
    atomic_write_text(path, buf.getvalue())


def format_table(rows: list[dict[str, Any]], *, limit: int | None = 20) -> str:
    """Finished architectures, best reward first: trial, genotype, top-1, step ms, params, reward,
    and how often the sampler proposed it (``seen``: a converged sampler re-proposes the best
    choices; those trials reuse the first result and get one row). ``*`` marks the Pareto front
    (accuracy vs step time), ``b`` the backbone."""
    finished = [r for r in rows if r["state"] == "COMPLETE"]
    seen: dict[int, int] = {}
    for r in finished:
        if r.get("duplicate_of") is not None:
            seen[r["duplicate_of"]] = seen.get(r["duplicate_of"], 1) + 1
    done = [r for r in finished if r.get("duplicate_of") is None]
    front = {r["trial"] for r in pareto_front(done)}
    done.sort(key=lambda r: -r["reward"])
    shown = done if limit is None else done[:limit]
    backbone = [r for r in done if r["backbone"] and r not in shown]
    head = (
        "trial",
        "architecture (per stage: F/M expand k kernel x layers +se)",
        "top1",
        "step ms",
        "params",
        "reward",
        "seen",
    )
    lines = [head]
    for r in shown + backbone:
        mark = ("*" if r["trial"] in front else " ") + ("b" if r["backbone"] else " ")
        lines.append(
            (
                f"{r['trial']}{mark}",
                r["genotype"],
                f"{r['top1']:.2f}",
                f"{r['step_ms']:.2f}",
                f"{r['params'] / 1e6:.3f}M",
                f"{r['reward']:.4f}",
                str(seen.get(r["trial"], 1)),
            )
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    numeric = (2, 3, 4, 5, 6)  # right-aligned columns
    out = [
        "  ".join(v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(x, widths))).rstrip()
        for x in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    failed = sum(r["state"] == "FAIL" for r in rows)
    note = f"{len(finished)} finished, {failed} failed"
    if len(done) < len(finished):
        note += f" ({len(done)} distinct architectures trained, {len(finished) - len(done)} re-proposals reused)"
    note += "; * Pareto front (top1 vs step time), b backbone"
    if limit is not None and len(done) > limit:
        note += f"; best {limit} of {len(done)} shown (all trials in trials.csv)"
    return "\n".join(out) + "\n" + note


def plot_pareto(rows: list[dict[str, Any]], path: Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["state"] == "COMPLETE" and r["step_ms"] is not None]
    front = pareto_front(done)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([r["step_ms"] for r in done], [r["top1"] for r in done], s=14, c="0.6", label="trials")
    ax.step([r["step_ms"] for r in front], [r["top1"] for r in front], where="post", c="tab:red", lw=1)
    ax.scatter([r["step_ms"] for r in front], [r["top1"] for r in front], s=30, c="tab:red", label="Pareto front")
    for r in front:
        ax.annotate(str(r["trial"]), (r["step_ms"], r["top1"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    base = [r for r in done if r["backbone"]]
    if base:
        ax.scatter([base[0]["step_ms"]], [base[0]["top1"]], marker="*", s=160, c="tab:blue", label="backbone", zorder=3)
    if done:
        best = max(done, key=lambda r: r["reward"])
        ax.scatter(
            [best["step_ms"]],
            [best["top1"]],
            s=140,
            facecolors="none",
            edgecolors="tab:green",
            lw=2,
            label=f"best reward (trial {best['trial']})",
            zorder=3,
        )
    ax.set_xlabel("training step time at the proxy size and batch (ms)")
    ax.set_ylabel("proxy top-1 (%)")
    ax.set_title(title or "search results", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def best_card(rows: list[dict[str, Any]], space: SearchSpace, *, out_dir: Path) -> dict[str, Any] | None:
    """The best-reward trial as a model card dict (ModelCard fields) at the backbone's full sizes."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["spec"]]
    if not done:
        return None
    best = max(done, key=lambda r: r["reward"])
    spec = ArchSpec.from_dict(best["spec"])
    notes = (
        f"found by effv2 search in {out_dir}: trial {best['trial']}, reward {best['reward']:.4f}, "
        f"proxy top1 {best['top1']:.2f}%, step {best['step_ms']:.2f} ms, {best['params']:,} params"
    )
    return {
        "name": f"search_{space.name}_trial{best['trial']}",
        **space.card(spec),
        "notes": notes,
        "tags": ["searched"],
    }


def write_results(study: optuna.Study, space: SearchSpace, out_dir: Path, *, plot: bool = True) -> list[dict[str, Any]]:
    """trials.csv and best_spec.json (cheap, after every trial); pareto.png when ``plot``."""
    rows = records(study)
    write_csv(rows, out_dir / "trials.csv")
    card = best_card(rows, space, out_dir=out_dir)
    if card is not None:
        atomic_write_text(out_dir / "best_spec.json", json.dumps(card, indent=2) + "\n")
    if plot:
        plot_pareto(
            rows,
            out_dir / "pareto.png",
            title=f"{space.name}: {sum(r['state'] == 'COMPLETE' for r in rows)} trials, proxy accuracy vs step time",
        )
    return rows
