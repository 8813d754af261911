"""benchmarks/budget.py: the frontier table, the plot and the variant syntax (the runs themselves
are the benchmark; here they are stood in for by finished run folders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import budget  # noqa: E402


def _row(variant, budget_s, seed, top1):
    return {
        "variant": variant,
        "budget": f"{budget_s // 60}m",
        "budget_s": budget_s,
        "seed": seed,
        "test_top1": top1,
        "best_val_top1": top1 + 0.5,
        "train_s": 0.9 * budget_s,
        "steps": 100,
        "epochs": 2.5,
        "steps_trained": 120 + seed,
    }


def test_table_means_over_seeds_and_lists_each(tmp_path):
    rows = [_row("progressive", 600, 0, 92.0), _row("progressive", 600, 1, 93.0), _row("fixed", 120, 0, 88.0)]
    t = budget.table(rows).splitlines()
    assert t[2].startswith("| fixed | 2m | 1 | 88.00 | 88.00 | 88.50 | 1.8 min | 120 | 100 (2.5) |")
    assert t[3].startswith("| progressive | 10m | 2 | 92.50 | 92.00, 93.00 | 93.00 | 9.0 min | 120, 121 | 100 (2.5) |")
    png = tmp_path / "b.png"
    budget.plot(rows, png, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_parse_and_bad_ones_are_refused():
    assert budget.parse_variant("linear=lr_schedule=linear,seed=1") == ("linear", ["lr_schedule=linear", "seed=1"])
    with pytest.raises(Exception, match="expected NAME=KEY=VALUE"):
        budget.parse_variant("linear")


def test_a_finished_run_folder_is_reused_not_retrained(tmp_path):
    out = tmp_path / "progressive-2m-s0"
    out.mkdir()
    (out / "summary.json").write_text(
        json.dumps({"test_top1": 90.1, "best_top1": 90.5, "train_s": 100.0, "epochs": 2, "completed": True})
    )
    plan = {"steps": 300, "steps_per_epoch": 200, "planned_s": 110.0, "step_s": [0.1, 0.2]}
    layers = {"overrides": {"source": "--set", "set": {"time_budget": "2m", "seed": 0}}}  # as effv2 train records it
    (out / "config.json").write_text(json.dumps({"plan": plan, "layers": layers}))
    # two evaluated epochs; the second ran past the first plan (a re-plan added steps)
    rows = [{"epoch": 1, "step": 200, "top1": 80.0}, {"epoch": 2, "step": 340, "top1": 90.5}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = budget.run_one(out, budget="2m", seed=0, sets=[], model="nope", recipe="nope")  # no process started
    assert r["test_top1"] == 90.1 and r["steps"] == 300 and r["epochs"] == 1.5 and r["step_ms"] == [100.0, 200.0]
    assert r["steps_trained"] == 340


def test_replot_draws_recorded_rows_without_training(tmp_path, monkeypatch):
    rows = [_row("progressive", 600, 0, 92.0), _row("fixed", 600, 0, 92.5)]
    recorded = tmp_path / "rows.json"
    machine = {"cpu": "AMD EPYC", "cpu_cores": 2, "cpu_label": "AMD EPYC, family 25 model 17, 2 cores, avx2"}
    recorded.write_text(json.dumps({"machine": machine, "rows": rows}))
    drawn = {}
    real = budget.plot
    monkeypatch.setattr(
        budget, "plot", lambda r, path, title: drawn.update(rows=r, title=title) or real(r, path, title)
    )
    assert budget.main(["--replot", str(recorded), "--out", str(tmp_path / "never")]) == 0
    assert drawn["rows"] == rows and drawn["title"].endswith("on AMD EPYC, family 25 model 17, 2 cores, avx2")
    assert (tmp_path / "rows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "never").exists()


def test_the_arms_are_progressive_always_and_the_recipes_own_fallback_always():
    from effv2.config import resolve_recipe

    def arm(name):
        rec, _ = resolve_recipe(
            "fmnist-cpu",
            model="efficientnetv2_fmnist",
            dataset="fashion-mnist",
            overrides=budget.DEFAULT_VARIANTS[name],
        )
        return rec.progressive

    prog, fixed = arm("progressive"), arm("fixed")
    assert prog.enabled and prog.min_epochs == 0  # never falls back
    # the fallback at any budget a machine can plan, with the recipe's fallback regularization (as make demo)
    assert fixed.enabled and fixed.min_epochs >= 1e6 and fixed.fallback_regularization == "first"


def test_a_folder_made_with_other_settings_is_not_reused(tmp_path):
    run = tmp_path / "fixed-10m-s0"
    run.mkdir()
    old = {"time_budget": "10m", "seed": 0, "progressive.enabled": False}  # the fixed arm before 2026-12-07
    (run / "config.json").write_text(json.dumps({"layers": {"overrides": {"source": "--set", "set": old}}}))
    with pytest.raises(SystemExit, match="holds a run made with"):
        budget.check_reused(run, budget="10m", seed=0, sets=budget.DEFAULT_VARIANTS["fixed"])
    budget.check_reused(run, budget="10m", seed=0, sets=["progressive.enabled=false"])  # the same: reused
    with pytest.raises(SystemExit):
        budget.check_reused(run, budget="10m", seed=1, sets=["progressive.enabled=false"])
    budget.check_reused(tmp_path / "new", budget="10m", seed=0, sets=[])  # nothing there yet
