"""Training to a time budget: the planner is a pure function of measured times; a planned run records
its plan, follows it on --resume and resumes bit for bit after a kill."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2.config import Recipe
from effv2.config.values import RecipeError
from effv2.training.budget import plan_steps, planned_seconds
from effv2.training.lr import LRSchedule, total_steps
from effv2.training.schedule import all_stages

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))
sys.path.insert(0, str(HERE.parent))
import run_golden  # noqa: E402

from support import checkpoint_tensors, pico_train_args, run_cli  # noqa: E402

SETS = [
    "batch_size=32",
    "eval_batch_size=64",
    "progressive.n_stages=2",
    "progressive.min_size=16",
    "progressive.max_size=24",
    "progressive.min_epochs=0",  # the demo recipe's 24 would make a 3 s budget's plan the fixed schedule
    "eval_size=24",
    "amp=none",
    "num_workers=0",
    "deterministic=true",
    "checkpoint_every_steps=4",
    "time_budget_s=3600",
]


def test_planned_seconds_and_plan_are_pinned():
    # 2 stages at 0.1 s and 0.3 s per step, 10 steps per epoch, 1 s per evaluation, every epoch
    t = planned_seconds(40, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, eval_every=1)
    assert t == pytest.approx(2 * 10 * 0.1 + 2 * 10 * 0.3 + 4 * 1.0)  # 4 epochs: 12 s
    assert planned_seconds(50, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, eval_every=2) == pytest.approx(
        2 * 10 * 0.1 + 3 * 10 * 0.3 + 3 * 1.0
    )  # the later stage takes the odd epoch; evals at 2, 4 and 5
    # a partial last epoch: 43 steps = 5 epochs [0,2) [2,5), the last stage trains 23 steps
    assert planned_seconds(43, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0) == pytest.approx(
        20 * 0.1 + 23 * 0.3 + 5 * 1.0
    )
    # per-stage evaluation cost (a stage below the eval size evaluates twice)
    assert planned_seconds(40, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=[1.5, 1.0]) == pytest.approx(
        8 + 2 * 1.5 + 2 * 1.0
    )
    # the plan fills the budget to the step: 40 steps = 12 s; 0.95 * 13 = 12.35 s leaves room for one
    # more step at 0.3 s but not for the evaluation that the extra (fifth) epoch adds
    assert plan_steps(13, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, margin=0.05) == 40
    # 0.95 * 20 = 19 s: 5 epochs with 2 + 3 split give 20*0.1 + n*0.3 + 5 <= 19 -> n = 40 (6 epochs is worse)
    assert plan_steps(20, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, margin=0.05) == 60
    assert plan_steps(1, stage_step_s=[0.1, 0.3], steps_per_epoch=10, eval_s=1.0, min_steps=11, margin=0.05) == 11


@settings(max_examples=60, deadline=None)
@given(
    budget=st.floats(1, 60),
    a=st.floats(0.05, 1),
    b=st.floats(0.05, 1),
    spe=st.integers(1, 40),
    ev=st.floats(0, 5),
    every=st.integers(1, 3),
)
def test_the_plan_is_the_largest_step_count_that_fits(budget, a, b, spe, ev, every):
    """Against brute force: no step count up to the search's bound fits and is larger."""
    kw = dict(stage_step_s=[a, b], steps_per_epoch=spe, eval_s=ev, eval_every=every)
    n = plan_steps(budget, **kw, margin=0.05)
    target = 0.95 * budget
    fitting = [k for k in range(1, int(target / min(a, b)) + spe + 1) if planned_seconds(k, **kw) <= target]
    assert n == (max(fitting) if fitting else 1)


def test_max_steps_ends_the_last_epoch_and_the_lr_reaches_its_floor():
    rec = Recipe(epochs=5, max_steps=43, lr_schedule="linear", warmup_epochs=1, lr=0.1, batch_size=256)
    assert total_steps(10, rec) == 43
    lr = LRSchedule.from_recipe(rec, steps_per_epoch=10, base_lr=0.1)
    assert lr(10) == pytest.approx(0.1) and lr(43) == 0.0 and lr(10 + 33 // 3) == pytest.approx(0.1 * 2 / 3)
    cos = LRSchedule.from_recipe(replace(rec, lr_schedule="cosine"), steps_per_epoch=10, base_lr=0.1)
    assert cos(43) == pytest.approx(0.0, abs=1e-12) and cos(10 + 33 // 2) == pytest.approx(0.05, rel=0.05)
    assert total_steps(10, replace(rec, max_steps=0)) == 50 and total_steps(10, replace(rec, max_steps=99)) == 50


@pytest.mark.skipif(not run_golden.SHARED.is_dir(), reason="shared Fashion-MNIST not available")
def test_a_budgeted_run_records_its_plan_and_resumes_bitwise(tmp_path):
    data = run_golden.write_subset(tmp_path / "fm")

    def train_args(out, *extra, sets=SETS):
        return pico_train_args(data, out, sets, *extra)

    part = tmp_path / "part"
    killed = run_cli(*train_args(part, "--time-budget", "3s"), kill_at=9)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cfg = json.loads((part / "config.json").read_text())
    plan = cfg["plan"]
    assert plan["epochs"] == cfg["recipe"]["epochs"] >= 2 and plan["planned_s"] <= (1 - plan["margin"]) * 3 + 0.01
    assert plan["steps"] == cfg["recipe"]["max_steps"] and plan["epochs"] == -(
        -plan["steps"] // plan["steps_per_epoch"]
    )
    assert plan["stage_sizes"] == [16, 24] and all(s > 0 for s in plan["step_s"])
    assert cfg["layers"]["plan"]["set"]["epochs"] == plan["epochs"]
    # the measuring was spent out of the budget: the hard stop (time_budget_s=3600 in SETS) moved by as much
    assert cfg["recipe"]["time_budget_s"] == pytest.approx(3600 - plan["measured_in_s"], abs=0.01)
    assert plan["compile"] == {"used": False}  # amp=none: compile "auto" is not tried
    resumed = run_cli("train", "--resume", str(part), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((part / "config.json").read_text())["plan"] == plan  # the recorded plan, not a new one
    # the same plan uninterrupted (--plan-from: not measured again): bit for bit the same weights; its own
    # time_budget_s does not matter, the source run's hard stop is copied
    other_stop = [*SETS[:-1], "time_budget_s=7200"]
    ref = run_cli(*train_args(tmp_path / "ref", "--plan-from", str(part), sets=other_stop))
    assert ref.returncode == 0, ref.stderr[-2000:]
    twin = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert twin["plan"] == {
        **plan,
        "from": str(part.resolve()),
        "hard_stop_s": cfg["recipe"]["time_budget_s"],
        "replicas": cfg["recipe"]["replicas"],  # the source's replicas count, trained again (recipe below)
    }
    # the same recipe, but for the budget it did not plan from (time_budget: the source run's, here null)
    assert {**twin["recipe"], "time_budget": "3s"} == cfg["recipe"] and twin["recipe"]["time_budget"] is None
    assert twin["layers"]["plan"]["set"] == cfg["layers"]["plan"]["set"]
    a, b = (
        checkpoint_tensors(part / "checkpoints" / "last.safetensors"),
        checkpoint_tensors(tmp_path / "ref" / "checkpoints" / "last.safetensors"),
    )
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    other = 1 if cfg["recipe"]["replicas"] != 1 else 2  # another count asked for: another step, refused
    asked = run_cli(*train_args(tmp_path / "other", "--plan-from", str(part), sets=[*SETS, f"replicas={other}"]))
    assert asked.returncode == 2 and f"trained {cfg['recipe']['replicas']} replica(s)" in asked.stderr


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_replan_keeps_the_lr_continuous_and_ends_at_the_floor(kind):
    rec = Recipe(epochs=10, max_steps=100, lr_schedule=kind, warmup_epochs=1, lr=0.1, batch_size=256)
    lr = LRSchedule.from_recipe(rec, steps_per_epoch=10, base_lr=0.1)
    assert lr.replans == () and lr(55) == LRSchedule.from_recipe(rec, steps_per_epoch=10, base_lr=0.1)(55)
    longer = lr.with_replan(40, 160)  # at step 40 (progress 1/3), the run gets 60 more steps than planned
    shorter = lr.with_replan(40, 70)
    for sched, end in ((longer, 160), (shorter, 70)):
        assert [sched(t) for t in range(41)] == [lr(t) for t in range(41)]  # the past is unchanged
        assert sched.progress(40) == pytest.approx(1 / 3) and sched.progress(end) == 1.0
        assert sched(end) == pytest.approx(0.0, abs=1e-12) and sched(end + 5) == pytest.approx(0.0, abs=1e-12)
        lrs = [sched(t) for t in range(10, end + 1)]
        assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # still decays monotonically, no jump
    assert longer.progress(100) == pytest.approx(1 / 3 + (2 / 3) * 60 / 120)
    twice = longer.with_replan(100, 130)  # a second re-plan continues from the first one's progress
    assert twice.progress(100) == pytest.approx(longer.progress(100)) and twice.progress(130) == 1.0
    assert twice(99) == longer(99)


def test_the_trainer_replans_to_the_time_actually_left(monkeypatch):
    """_replan on a stand-in trainer: the plan assumed 0.1 s a step; the epoch just trained ran at 0.2 s,
    so the remaining steps shrink to what fits 95% of the time left, the lr keeps its progress, and the
    re-plan is kept in the state. Under --deterministic nothing changes; one slow epoch does not re-plan."""
    import types

    from effv2.runtime import Dist
    from effv2.training import trainer as trainer_mod
    from effv2.training.schedule import StageParams
    from effv2.training.state import TrainState

    now = [1000.0]
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: now[0])
    rec = Recipe(epochs=10, max_steps=100, lr_schedule="linear", lr=0.1, batch_size=256, time_budget_s=10)
    rec = replace(rec, progressive=replace(rec.progressive, enabled=False))
    sp = StageParams(0, 1, 28, 0, 0, 0, 0.1, 0.0)

    def fake(**kw):
        lr = LRSchedule.from_recipe(kw.get("recipe", rec), steps_per_epoch=10, base_lr=0.1)
        ns = types.SimpleNamespace(
            recipe=kw.get("recipe", rec),
            state=TrainState(epoch=2, global_step=20),
            steps_per_epoch=10,
            _rates={},
            dist=Dist(),
            total_steps=100,
            lr=lr,
            log=lambda msg: None,
            stage_for_index=lambda j: sp,
        )
        return ns

    t = fake()
    # 20 steps took 4 s (0.2 s each), an evaluation 0.5 s; 12 s are left: 0.95 * 12 = 11.4 s fit
    # 4 whole epochs (4 x (10 x 0.2 + 0.5) = 10 s), then (11.4 - 10 - 0.5) / 0.2 = 4.5 -> 4 steps
    trainer_mod.Trainer._replan(t, now[0] + 12, sp, 4.0, 20, 0.5)
    assert t.total_steps == 20 + 40 + 4 and t.state.replans == [[20, 64]]
    assert (
        t.lr.replans == ((20, 64),)
        and t.lr(64) == 0.0
        and t.lr(20) == LRSchedule.from_recipe(rec, steps_per_epoch=10, base_lr=0.1)(20)
    )
    d = fake(recipe=replace(rec, deterministic=True))
    trainer_mod.Trainer._replan(d, now[0] + 12, sp, 4.0, 20, 0.5)
    assert d.total_steps == 100 and d.state.replans == []
    close = fake()  # within 2% of the plan: left alone
    trainer_mod.Trainer._replan(close, now[0] + (80 * 0.1 + 8 * 0.5) / 0.95 + 0.05, sp, 2.0, 20, 0.5)
    assert close.total_steps == 100 and close.state.replans == []
    steady = fake()  # the step time is the median of the stage's last three epochs: one slow epoch is noise
    for epoch_s in (4.0, 4.0, 8.0):  # 0.2, 0.2, then 0.4 s a step
        trainer_mod.Trainer._replan(steady, now[0] + 12, sp, epoch_s, 20, 0.5)
    assert steady.total_steps == 64 and steady.state.replans == [[20, 64]]
    for _ in range(2):  # two more slow epochs: the median moves to 0.4 s, 2 epochs + 4 steps fit
        trainer_mod.Trainer._replan(steady, now[0] + 12, sp, 8.0, 20, 0.5)
    assert steady.total_steps == 20 + 20 + 4 and steady.state.replans == [[20, 64], [20, 44]]
    # near the end the threshold is 2% of the steps still to train, not of the run: 10 steps left and
    # time for 12 (0.95 x left = 2.25 s: an epoch of 10 x 0.1 s + 0.5 s eval, then 2 steps + an eval)
    end = fake()
    end.state = TrainState(epoch=9, global_step=90)
    trainer_mod.Trainer._replan(end, now[0] + 2.25 / 0.95, sp, 1.0, 10, 0.5)
    assert end.total_steps == 102 and end.state.replans == [[90, 102]]  # 2 of 100 was "close enough" before


def test_compile_auto_is_tried_only_for_a_long_enough_bf16_cpu_budget():
    from effv2.training.budget import AUTO_COMPILE_MIN_BUDGET_S, compile_candidate

    long = AUTO_COMPILE_MIN_BUDGET_S
    assert compile_candidate("auto", device_type="cpu", amp="bf16", budget_s=long)[0] is True
    assert compile_candidate("auto", device_type="cpu", amp="bf16", budget_s=long - 1)[0] is False
    assert compile_candidate("auto", device_type="cpu", amp="bf16", budget_s=None)[0] is False
    assert compile_candidate("auto", device_type="cpu", amp="none", budget_s=600)[0] is False  # fp32: 1.04x
    assert compile_candidate("auto", device_type="cuda", amp="bf16", budget_s=600)[0] is False  # not measured
    # a bool is obeyed whatever the machine
    assert compile_candidate(True, device_type="cpu", amp="none", budget_s=None) == (True, "asked")
    assert compile_candidate(False, device_type="cpu", amp="bf16", budget_s=600)[0] is False


def test_runtime_compiles_with_static_shapes(monkeypatch):
    """A graph per image size: torch's automatic dynamic shapes recompiled the second size of a progressive
    run into a symbolic graph no faster than eager (benchmarks/RESULTS.md)."""
    from effv2.runtime import Runtime

    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: seen.append(kw) or net)
    net = torch.nn.Linear(2, 2)
    assert Runtime(compile=True).wrap(net) is net and seen == [{"dynamic": False}]
    assert Runtime(compile=False).wrap(net) is net and len(seen) == 1


class _FakeClock:
    """A clock the fake step advances: eager steps cost ``eager(i)`` s, compiled ``compiled(i)``, where i
    counts that variant's steps (its warm-up included)."""

    def __init__(self, eager, compiled):
        self.now, self.cost, self.bound, self.n = 0.0, {False: eager, True: compiled}, None, {False: 0, True: 0}
        self.order: list[bool] = []

    def perf_counter(self):
        return self.now

    def bind(self, net, runtime):
        self.bound = net

    def step(self, batch, i):
        self.order.append(self.bound)
        self.now += self.cost[self.bound](self.n[self.bound])
        self.n[self.bound] += 1


def _interleave(monkeypatch, eager, compiled, **kw):
    import types

    import effv2.training.budget as budget

    clock = _FakeClock(eager, compiled)
    monkeypatch.setattr(budget, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    task = types.SimpleNamespace(runtime=None, bind=clock.bind)
    got = budget._time_interleaved(
        clock.step, task, {False: False, True: True}, iter(int, 1), warm=2, timed=10, device=torch.device("cpu"), **kw
    )
    return got, clock


def test_compile_unsure_is_a_band_around_the_threshold():
    from effv2.training.budget import AUTO_COMPILE_MIN_SPEEDUP, AUTO_COMPILE_UNSURE, compile_unsure

    assert (AUTO_COMPILE_MIN_SPEEDUP, AUTO_COMPILE_UNSURE) == (1.10, 1.15)
    assert compile_unsure(1.04, 1.0) and compile_unsure(1.0, 1.0) and compile_unsure(1.26, 1.0)
    assert not compile_unsure(1.28, 1.0) and not compile_unsure(1.39, 1.0) and not compile_unsure(0.95, 1.0)


def test_interleaved_timing_warms_compiled_first_and_alternates(monkeypatch):
    """A clear speedup (1.5x) is decided on the first 3 rounds of 4 steps each; the compiled net is warmed
    before the eager one (a cold compile left eager's first block 30-60% slow) and no warm-up step is timed."""
    got, clock = _interleave(monkeypatch, lambda i: 0.15 if i < 2 else 0.09, lambda i: 9.0 if i == 0 else 0.06)
    assert got == {False: pytest.approx(0.09), True: pytest.approx(0.06)}
    # compiled: the 9 s compiling step ends its warm-up (5 s at most), then 1 step; eager: 2 slow steps, 1 more
    assert clock.order[:5] == [True, True, False, False, False] and clock.n == {False: 3 + 12, True: 2 + 12}
    assert clock.order[5:] == ([False] * 4 + [True] * 4) * 3


def test_a_close_call_is_timed_for_more_rounds(monkeypatch):
    """Three noisy rounds read 1.04x (the cold first run of 2026-12-06); more rounds, until the medians over
    every timed step are sure or 9 rounds are done, find the 1.3x that is there. A clear 1.3x or 0.8x stops
    at 3 rounds."""
    # eager: a fast patch for 3 rounds (12 timed steps after 3 warm-up steps), then its usual 0.13 s
    noisy, clock = _interleave(monkeypatch, lambda i: 0.104 if 3 <= i < 15 else 0.13, lambda i: 0.1)
    assert clock.n[False] - 3 == 6 * 4  # 6 rounds of 4: the median is sure (1.3x) after 3 more, so it stops
    assert noisy[False] / noisy[True] == pytest.approx(1.3)
    slow, clock = _interleave(monkeypatch, lambda i: 0.104 if 3 <= i < 27 else 0.13, lambda i: 0.1)
    # still a close call after 9 rounds (max_rounds): the decision is taken on all of them
    assert clock.n[False] - 3 == 9 * 4 and slow[False] / slow[True] == pytest.approx(1.04)
    capped, clock = _interleave(monkeypatch, lambda i: 0.104, lambda i: 0.1, max_rounds=3)
    assert clock.n[False] - 3 == 3 * 4 and capped[False] / capped[True] == pytest.approx(1.04)
    for eager in (0.13, 0.08):  # clearly above and clearly below the threshold
        _, clock = _interleave(monkeypatch, lambda i, e=eager: e, lambda i: 0.1)
        assert clock.n[False] - 3 == 3 * 4


def _train_3s(tmp_path, *extra: str) -> dict:
    """The pico model trained in-process for a 3 s budget with SETS (less its hard stop) and ``extra``;
    returns its config.json (skips the calling test without the shared Fashion-MNIST: a mark on this
    helper did nothing)."""
    import effv2.training.api as api

    if not run_golden.SHARED.is_dir():
        pytest.skip("shared Fashion-MNIST not available")

    data = run_golden.write_subset(tmp_path / "fm")
    sets = [s for s in SETS if not s.startswith("time_budget_s")] + list(extra)
    api.train(
        "efficientnetv2_pico",
        "fashion-mnist",
        tmp_path / "run",
        data_dir=str(data),
        overrides=[*sets, "time_budget=3s"],
        quiet=True,
    )
    return json.loads((tmp_path / "run" / "config.json").read_text())


@pytest.mark.parametrize(
    ("compiled", "outcome"),
    [
        ({24: 0.005, 16: 0.005}, "used"),  # 2x at both sizes
        ({24: 0.0095}, "not tried further"),  # 1.05x at the largest size: 16 px is never compiled
        ({24: 0.009, 16: 0.02}, "plan too small"),  # 1.11x at 24 px, but 2x slower at 16 px
        ({24: "fail"}, "failed"),  # torch.compile raises (no C compiler, ...): the run trains eager
    ],
)
def test_the_planner_keeps_compile_only_when_it_pays(tmp_path, monkeypatch, compiled, outcome):
    """compile "auto": the largest size is timed eager and compiled first (stubbed here: eager 10 ms a
    step), then the others, and the compiled plan must have 1.05x the steps; the measuring counts
    against the budget (the plan is for what is left, the hard stop moves by as much)."""
    import effv2.training.api as api
    import effv2.training.budget as budget

    sizes: list[int] = []

    def fake_interleaved(step, task, nets, batches, **kw):
        size = next(iter(next(batches).values())).x.shape[-1]
        sizes.append(size)
        if compiled[size] == "fail":
            raise RuntimeError("no working C compiler found\n(the rest of inductor's message)")
        return {False: 0.01, True: compiled[size]}

    monkeypatch.setattr(api, "compile_candidate", lambda *a, **k: (True, "test"))
    monkeypatch.setattr(budget, "_time_interleaved", fake_interleaved)
    monkeypatch.setattr(torch, "compile", lambda net, **kw: net)  # the run itself: no real compiling in a unit test
    cfg = _train_3s(tmp_path, "compile=auto")
    plan, rec = cfg["plan"], cfg["recipe"]
    c = plan["compile"]
    used = outcome == "used"
    assert c["used"] is used and rec["compile"] is used and cfg["layers"]["plan"]["set"]["compile"] is used
    assert sizes == list(compiled)  # the largest size first
    if outcome == "failed":
        assert c == {"used": False, "tried_at": 24, "error": "RuntimeError: no working C compiler found"}
        assert all(t > 0 for t in plan["step_s"])  # both sizes timed eager
    elif outcome == "not tried further":
        assert c == {"used": False, "tried_at": 24, "eager_step_s": 0.01, "compiled_step_s": 0.0095}
        assert plan["step_s"][1] == 0.01 and plan["step_s"][0] > 0  # 16 px timed eager only
    else:
        assert c["eager_step_s"] == [0.01, 0.01] and c["compiled_step_s"] == [compiled[16], compiled[24]]
        assert (c["compiled_steps"] >= 1.05 * c["eager_steps"]) is used
        assert plan["steps"] == (c["compiled_steps"] if used else c["eager_steps"])
        assert plan["step_s"] == (c["compiled_step_s"] if used else c["eager_step_s"])
    assert 0 < plan["measured_in_s"] < 3 and plan["left_s"] == pytest.approx(3 - plan["measured_in_s"], abs=0.02)
    assert rec["time_budget_s"] == pytest.approx(3 - plan["measured_in_s"], abs=0.01)
    assert plan["planned_s"] <= (1 - plan["margin"]) * plan["left_s"] + 0.01  # both rounded to 0.01 s


def test_compile_auto_without_a_budget_is_recorded_as_off(tmp_path, monkeypatch):
    import effv2.training.api as api

    if not run_golden.SHARED.is_dir():
        pytest.skip("shared Fashion-MNIST not available")
    data = run_golden.write_subset(tmp_path / "fm")
    sets = [s for s in SETS if not s.startswith("time_budget_s")] + ["compile=auto", "epochs=1"]
    api.train("efficientnetv2_pico", "fashion-mnist", tmp_path / "run", data_dir=str(data), overrides=sets, quiet=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["compile"] is False


def test_progressive_needs_enough_planned_epochs():
    from effv2.training.budget import fixed_or_progressive

    assert fixed_or_progressive(15.94, 20) == {"used": False, "progressive_epochs": 15.94, "min_epochs": 20}
    assert fixed_or_progressive(20.0, 20)["used"] and fixed_or_progressive(36.1, 20)["used"]


def test_the_fallback_takes_the_first_or_the_last_stages_regularization():
    from effv2.config.schema import ProgressiveConfig
    from effv2.training.budget import fallback_progressive, fallback_sets, fallback_words

    p = ProgressiveConfig(
        n_stages=2, min_size=24, randaug_min=0, randaug_max=2, dropout_min=0.05, dropout_max=0.1, min_epochs=24
    )
    stages = all_stages(p, train_size=28, dropout=0.1, drop_path=0.05)
    assert fallback_sets(stages, "last") == {"progressive.enabled": False}
    first = fallback_sets(stages, "first")
    assert first == {
        "progressive.enabled": False,
        "progressive.randaug_max": 0,
        "progressive.mixup_max": 0,
        "progressive.cutmix_max": 0,
        "progressive.dropout_max": 0.05,
        "progressive.drop_path_max": 0.05,
    }
    # the one stage the fallback trains: the last stage's size, stage 0's regularization
    (one,) = all_stages(fallback_progressive(p, first), train_size=28, dropout=0.1, drop_path=0.05)
    assert (one.image_size, one.randaug_magnitude, one.dropout, one.drop_path) == (28, 0, 0.05, 0.05)
    (last,) = all_stages(
        fallback_progressive(p, fallback_sets(stages, "last")), train_size=28, dropout=0.1, drop_path=0.05
    )
    assert (last.image_size, last.randaug_magnitude, last.dropout) == (28, 2, 0.1)
    assert fallback_words(first, "first") == (
        "with the first stage's regularization (RandAugment 0, Mixup 0, CutMix 0, dropout 0.05, drop_path 0.05)"
    )
    assert fallback_words({"progressive.enabled": False}, "last") == "with the last stage's regularization"
    # stage 0's values, not the min keys: the "code" variant keeps dropout at its max in every stage, and a
    # drop_path schedule (drop_path_min set) and Mixup/CutMix ramps start at their min
    code = replace(p, variant="code", mixup_min=0.1, mixup_max=0.3, cutmix_min=0.1, cutmix_max=0.3, drop_path_min=0.0)
    s0 = fallback_sets(all_stages(code, train_size=28, dropout=0.1, drop_path=0.05), "first")
    assert (s0["progressive.dropout_max"], s0["progressive.drop_path_max"]) == (0.1, 0.0)
    assert (s0["progressive.mixup_max"], s0["progressive.cutmix_max"]) == (0.1, 0.1)
    with pytest.raises(RecipeError, match="progressive.fallback_regularization"):
        ProgressiveConfig(fallback_regularization="middle")


@pytest.mark.parametrize("min_epochs,regularization", [(0, "first"), (1000, "last"), (1000, "first")])
def test_a_short_budget_trains_the_fixed_size_schedule(tmp_path, min_epochs, regularization):
    """progressive.min_epochs: a plan with fewer epochs trains every step at the last stage's size, with
    the steps planned from that size's measured step, and the regularization of the last stage or of the
    first (progressive.fallback_regularization); recorded, and the recipe says progressive off with those
    values so that --resume runs the same way. 0 (the default) leaves progressive on, and the plan says
    nothing."""
    reg = ["progressive.randaug_min=0", "progressive.randaug_max=2"]
    reg += ["progressive.dropout_min=0.05", "progressive.dropout_max=0.1"]
    cfg = _train_3s(
        tmp_path, f"progressive.min_epochs={min_epochs}", f"progressive.fallback_regularization={regularization}", *reg
    )
    plan, rec = cfg["plan"], cfg["recipe"]
    if min_epochs == 0:
        assert plan["progressive"] == {} and rec["progressive"]["enabled"] is True
        assert plan["stage_sizes"] == [16, 24] and "progressive.enabled" not in cfg["layers"]["plan"]["set"]
        return
    pr = plan["progressive"]
    assert pr["used"] is False and pr["min_epochs"] == 1000 and 0 < pr["progressive_epochs"] < 1000
    assert pr["progressive_steps"] >= 1 and plan["stage_sizes"] == [24] and len(plan["step_s"]) == 1
    assert pr["regularization"] == regularization and pr["set"]["progressive.enabled"] is False
    assert rec["progressive"]["enabled"] is False and cfg["layers"]["plan"]["set"]["progressive.enabled"] is False
    for key, value in pr["set"].items():  # recorded in the recipe and in the plan's layer
        assert (
            rec["progressive"][key.removeprefix("progressive.")] == value and cfg["layers"]["plan"]["set"][key] == value
        )
    assert plan["steps"] == rec["max_steps"] and plan["planned_s"] <= (1 - plan["margin"]) * plan["left_s"] + 0.01
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e.get("image_size") is not None]
    assert epochs and {e["image_size"] for e in epochs} == {24}  # every epoch trained at the last stage's size
    expected = (0.0, 0.05) if regularization == "first" else (2.0, 0.1)
    assert {(e["randaug"], e["dropout"]) for e in epochs} == {expected}


@pytest.mark.parametrize("regularization", ["first", "last"])
def test_the_fallback_is_planned_from_its_own_step(tmp_path, monkeypatch, regularization):
    """A fallback with another regularization than the last stage's (first: no RandAugment where the last
    stage has it) trains faster per step: the planner times that stage too and plans from it, recording
    the last stage's step beside it; with the last stage's regularization nothing more is timed. Every
    step is timed under the run's --deterministic setting."""
    import effv2.training.budget as budget

    times = iter([0.01, 0.02, 0.04])  # 16 px, 24 px, then the fallback stage (if timed)
    calls: list[tuple[int, float]] = []

    modes: list[bool] = []

    def fake_time_steps(step, batches, **kw):  # the image size of the batches it is given, and a time
        calls.append((next(iter(next(batches).values())).x.shape[-1], next(times)))
        modes.append(torch.are_deterministic_algorithms_enabled())
        return calls[-1][1]

    monkeypatch.setattr(budget, "_time_steps", fake_time_steps)
    cfg = _train_3s(
        tmp_path,
        "progressive.min_epochs=1000",
        f"progressive.fallback_regularization={regularization}",
        "progressive.randaug_min=0",
        "progressive.randaug_max=2",
    )
    plan = cfg["plan"]
    # timed in the mode the run trains in (SETS: deterministic=true), which ends with the run
    assert modes and all(modes) and not torch.are_deterministic_algorithms_enabled()
    if regularization == "first":
        assert calls == [(16, 0.01), (24, 0.02), (24, 0.04)] and plan["step_s"] == [0.04]
        assert plan["progressive"]["last_stage_step_s"] == 0.02
    else:
        assert (
            calls == [(16, 0.01), (24, 0.02)]
            and plan["step_s"] == [0.02]
            and "last_stage_step_s" not in plan["progressive"]
        )
    # the steps are the most that fit the budget left at the recorded step (the eval size is the last size)
    at = dict(stage_step_s=plan["step_s"], steps_per_epoch=plan["steps_per_epoch"], eval_s=plan["eval_s"])
    assert plan["steps"] == cfg["recipe"]["max_steps"]
    assert planned_seconds(plan["steps"], **at) == pytest.approx(plan["planned_s"], abs=0.05)
    assert planned_seconds(plan["steps"] + 1, **at) > (1 - plan["margin"]) * plan["left_s"] - 0.05


def test_plan_from_refuses_what_it_cannot_train(tmp_path, capsys, monkeypatch):
    """--plan-from: one line, exit 2, naming the file, for a folder that is not a run, a run without a
    budget or a plan that lacks a key (all three before the data loads), a plan made for other steps an
    epoch; and with --time-budget, a recipe time_budget or --resume."""
    import effv2.training.api as api
    from effv2.cli.main import main

    if not run_golden.SHARED.is_dir():
        pytest.skip("shared Fashion-MNIST not available")
    data = run_golden.write_subset(tmp_path / "fm")
    done = tmp_path / "done"
    done.mkdir()
    recorded = {"model": "efficientnetv2_pico", "data": "fashion-mnist", "recipe": {}, "plan": None}
    (done / "config.json").write_text(json.dumps(recorded))
    cases = {
        str(tmp_path / "nothing"): "no config.json there",
        str(done): 'not trained to a time budget (no "plan")',
    }
    load_source = api.load_source
    monkeypatch.setattr(api, "load_source", lambda *a, **k: pytest.fail("the data loaded before the folder check"))
    for i, (folder, words) in enumerate(cases.items()):
        assert main(pico_train_args(data, tmp_path / f"new{i}", SETS, "--plan-from", folder)) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    plan = {k: 1 for k in ("budget_s", "steps", "epochs", "step_s", "stage_sizes", "planned_s", "eval_s")}
    plan |= {"measured_in_s": 1, "compile": {"used": False}, "progressive": {}}
    (done / "config.json").write_text(json.dumps({**recorded, "plan": plan}))
    assert main(pico_train_args(data, tmp_path / "new2", SETS, "--plan-from", str(done))) == 2
    err = capsys.readouterr().err
    assert f"{done / 'config.json'}: its plan lacks steps_per_epoch" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(api, "load_source", load_source)
    (done / "config.json").write_text(json.dumps({**recorded, "plan": {**plan, "steps_per_epoch": 999}}))
    assert main(pico_train_args(data, tmp_path / "new3", SETS, "--plan-from", str(done))) == 2
    err = capsys.readouterr().err
    assert f"{done / 'config.json'}: its plan was made for steps an epoch 999, this run has " in err, err
    both = pico_train_args(data, tmp_path / "new4", SETS, "--plan-from", str(done), "--time-budget", "1m")
    assert main(both) == 2 and "give it or --time-budget, not both" in capsys.readouterr().err
    viaset = pico_train_args(data, tmp_path / "new5", [*SETS, "time_budget=1m"], "--plan-from", str(done))
    assert main(viaset) == 2 and "time_budget=1m would plan another: drop it" in capsys.readouterr().err
    assert main(["train", "--resume", str(done), "--plan-from", str(done)]) == 2
    assert "--plan-from cannot change it" in capsys.readouterr().err


def test_recorded_plan_refuses_other_batches_other_data_and_a_run_without_a_hard_stop(tmp_path):
    """The checks --plan-from makes once the data is loaded: the plan's steps must mean the same batches
    (global batch size, process count, training set) and the source run must have a hard stop to copy."""
    from effv2.errors import UsageError
    from effv2.training.budget import _PLAN_KEYS, recorded_plan

    plan = {k: 1 for k in _PLAN_KEYS} | {"steps_per_epoch": 10}
    fp = {"classes": ["a", "b"], "train": 320, "val": 40, "test": None, "train_sha256": "ab12"}
    cfg = {
        "model": "efficientnetv2_pico",
        "data": "fashion-mnist",
        "world_size": 1,
        "data_fingerprint": fp,
        "plan": plan,
    }
    cfg["recipe"] = {"batch_size": 32, "time_budget_s": 590.5}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = dict(steps_per_epoch=10, batch_size=32, world_size=1, fingerprint=fp)
    # a run recorded without a replicas key trained one batch on all threads: replicas 1
    assert recorded_plan(str(tmp_path), **ours) == {**plan, "from": str(tmp_path), "hard_stop_s": 590.5, "replicas": 1}
    wrong = {
        "steps_per_epoch": (5, "made for steps an epoch 10, this run has 5"),
        "batch_size": (16, "made for batch_size 32, this run has 16"),
        "world_size": (2, "made for processes 1, this run has 2"),
        "fingerprint": (
            {**fp, "train_sha256": "cd34"},
            "another training split (data_fingerprint differs: train_sha256;",
        ),
    }
    for key, (value, words) in wrong.items():
        with pytest.raises(UsageError, match=re.escape(words)):
            recorded_plan(str(tmp_path), **{**ours, key: value})
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "data_fingerprint": "edited"}))
    with pytest.raises(UsageError, match=re.escape("differs: classes, train, val, train_sha256;")):
        recorded_plan(str(tmp_path), **ours)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "recipe": {"batch_size": 32, "time_budget_s": 0}}))
    with pytest.raises(UsageError, match="its recipe has no time_budget_s"):
        recorded_plan(str(tmp_path), **ours)


def test_every_process_warms_up_for_as_many_steps_as_rank_0(monkeypatch):
    """Under DDP a step is collective: _time_steps follows rank 0's "warm up more" decisions (agree), so a
    process whose own timings settle later still takes exactly as many steps. Two processes simulated in
    turn with fake clocks: rank 0's steps settle at once, rank 1's keep jumping."""
    import effv2.training.budget as budget

    def run(durations, agree):
        clock, steps = [0.0], []

        def step(batch, i):
            steps.append(i)
            clock[0] += durations[min(len(steps) - 1, len(durations) - 1)]

        monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])
        median = budget._time_steps(step, iter(range(100)), warm=2, timed=3, device=torch.device("cpu"), agree=agree)
        return len(steps), median

    decisions: list[bool] = []

    def record(flag):  # rank 0: its own decision, shared
        decisions.append(flag)
        return flag

    replay = iter(decisions)
    steady = [0.1] * 20
    jumpy = [0.1, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1, 0.3] + [0.2] * 12
    n0, m0 = run(steady, record)
    n1, _ = run(jumpy, lambda flag: next(replay))  # rank 1 follows rank 0
    assert n0 == n1 == 2 + 3 and m0 == pytest.approx(0.1) and decisions == [True, False]
    alone, _ = run(jumpy, budget._same)  # its own decisions would have taken more collective steps
    assert alone == 10 + 3
