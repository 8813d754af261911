"""The search driver with injected evaluate functions (no training): reward, results, samplers,
duplicates, failures, screening and the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import optuna
import pytest
import torch

from effv2.cli.main import main
from effv2.errors import UsageError
from effv2.models import create_model
from effv2.models.spec import ArchSpec
from effv2.runtime.replicas import resolve_replicas
from effv2.search import SearchConfig, TaskInfo, get_space, parse_budget, reward, run_search, synthetic_top1
from effv2.search.driver import open_results
from effv2.search.results import pareto_front, records

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = get_space("pico")
TASK = TaskInfo(in_chans=1, num_classes=10, image_size=16, batch_size=8)


def evaluate(spec: ArchSpec, trial_dir: Path) -> dict:
    assert (trial_dir / "spec.json").is_file()
    return {"top1": synthetic_top1(spec, SPACE.base), "top5": 99.0}


def step_time(spec: ArchSpec) -> float:  # made-up device: deeper and wider is slower
    return 1e-3 * sum(s.repeats * s.expand * (2 if s.block == "mbconv" else 1) for s in spec.stages)


def config(tmp_path: Path, **kw) -> SearchConfig:
    return SearchConfig(out_dir=tmp_path / "search", **{"trials": 6, "sampler": "random", "quiet": True, **kw})


def test_budget_parsing() -> None:
    assert parse_budget("50") == (50, None)
    assert parse_budget("30m") == (None, 1800.0)
    assert parse_budget("1h30m") == (None, 5400.0)
    assert parse_budget("90s") == (None, 90.0)
    for bad in ("0", "", "ten", "5x", "m"):
        with pytest.raises(UsageError):
            parse_budget(bad)


def test_reward_is_the_papers_formula() -> None:
    assert reward(80.0, step_s=1.0, params=100, base_step_s=1.0, base_params=100) == pytest.approx(0.8)
    r = reward(80.0, step_s=2.0, params=300, base_step_s=1.0, base_params=100)
    assert r == pytest.approx(0.8 * 2**-0.07 * 3**-0.05)
    # normalising P by the backbone only rescales every reward by one constant: rankings unchanged
    a = reward(70.0, step_s=1.0, params=50, base_step_s=1.0, base_params=1)
    b = reward(71.0, step_s=1.2, params=80, base_step_s=1.0, base_params=1)
    assert (a > b) == (
        reward(70.0, step_s=1.0, params=50, base_step_s=1.0, base_params=100)
        > reward(71.0, step_s=1.2, params=80, base_step_s=1.0, base_params=100)
    )


def test_search_writes_readable_results(tmp_path) -> None:
    cfg = config(tmp_path)
    out = run_search(SPACE, evaluate, cfg, step_time=step_time, task=TASK)
    assert out["complete"] == 6 and out["failed"] == 0
    folder = cfg.out_dir
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == list(range(6))
    assert rows[0]["genotype"] == "F1k3x1 F4k3x1 M4k3x1+se"  # trial 0 is the backbone
    assert set(rows[0]) >= {"trial", "genotype", "top1", "step_ms", "params", "reward", "spec"}
    for n in range(6):
        assert (folder / "trials" / str(n) / "spec.json").is_file()
        assert (folder / "trials" / str(n) / "metrics.json").is_file()
    study, space = open_results(folder)
    assert space == SPACE
    recs = records(study, complete_only=True)
    base = recs[0]
    assert base["backbone"] and base["reward"] == pytest.approx(base["top1"] / 100)  # S = P = 1 for the backbone
    for r in recs:
        t = study.trials[r["trial"]]
        a = t.user_attrs
        expect = reward(
            a["top1"], step_s=a["step_s"], params=a["params"], base_step_s=base["step_s"], base_params=base["params"]
        )
        assert t.value == pytest.approx(expect)
        assert a["params"] == sum(
            p.numel()
            for p in create_model(
                str(folder / "trials" / str(r["trial"]) / "spec.json"), num_classes=10, in_chans=1
            ).parameters()
        )
    # best_spec.json: a model card that create_model accepts, at the backbone's full sizes
    card = json.loads((folder / "best_spec.json").read_text())
    best = max(recs, key=lambda r: r["reward"])
    assert card["spec"] == best["spec"] and card["train_size"] == SPACE.train_size
    assert {"spec", "train_size", "eval_size", "dropout"} <= set(card)
    model = create_model(str(folder / "best_spec.json"), num_classes=10, in_chans=1)
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 10)
    png = (folder / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front() -> None:
    points = [(1, 70), (2, 80), (3, 75), (4, 85), (2, 60)]  # (step ms, top1)
    rows = [{"trial": i, "step_ms": s, "top1": a} for i, (s, a) in enumerate(points)]
    assert [r["trial"] for r in pareto_front(rows)] == [0, 1, 3]


def test_rerunning_the_same_command_tops_up_without_retraining(tmp_path) -> None:
    calls: list[str] = []

    def counting(spec, trial_dir):
        calls.append(trial_dir.name)
        return evaluate(spec, trial_dir)

    run_search(SPACE, counting, config(tmp_path, trials=3), step_time=step_time, task=TASK)
    assert calls == ["0", "1", "2"]
    run_search(SPACE, counting, config(tmp_path, trials=3), step_time=step_time, task=TASK)
    assert calls == ["0", "1", "2"]  # budget already met: nothing retrained
    run_search(SPACE, counting, config(tmp_path, trials=5), step_time=step_time, task=TASK)
    assert calls == ["0", "1", "2", "3", "4"]


def test_another_space_in_the_same_folder_is_refused(tmp_path) -> None:
    run_search(SPACE, evaluate, config(tmp_path, trials=1), step_time=step_time, task=TASK)
    with pytest.raises(UsageError, match="another space"):
        run_search(get_space("mini"), evaluate, config(tmp_path, trials=2), step_time=step_time, task=TASK)


def test_failed_candidates_are_recorded_and_the_search_goes_on(tmp_path) -> None:
    def flaky(spec, trial_dir):
        if int(trial_dir.name) in (1, 3):
            raise RuntimeError("out of memory (pretend)")
        return evaluate(spec, trial_dir)

    out = run_search(SPACE, flaky, config(tmp_path, trials=4), step_time=step_time, task=TASK)
    assert out["complete"] == 4 and out["failed"] == 2
    rows = list(csv.DictReader((tmp_path / "search" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "out of memory" in rows[1]["error"]


def test_usage_errors_stop_the_search_at_once(tmp_path) -> None:
    def broken(spec, trial_dir):
        raise UsageError("recipe key 'epoch' unknown")

    with pytest.raises(UsageError, match="epoch"):
        run_search(SPACE, broken, config(tmp_path), step_time=step_time, task=TASK)


def test_same_choices_are_not_trained_twice(tmp_path) -> None:
    calls: list[str] = []

    def counting(spec, trial_dir):
        calls.append(spec.to_str())
        return evaluate(spec, trial_dir)

    cfg = config(tmp_path, trials=3)
    run_search(SPACE, counting, cfg, step_time=step_time, task=TASK)
    study, _ = open_results(cfg.out_dir)
    study.enqueue_trial(study.trials[1].params)  # the sampler proposes trial 1's choices again
    run_search(SPACE, counting, config(tmp_path, trials=4), step_time=step_time, task=TASK)
    assert len(calls) == 3
    study, _ = open_results(cfg.out_dir)
    assert study.trials[3].user_attrs["duplicate_of"] == 1 and study.trials[3].value == study.trials[1].value


@pytest.mark.parametrize("sampler", ["tpe", "evolution"])
def test_model_based_and_evolutionary_samplers(tmp_path, sampler) -> None:
    out = run_search(
        SPACE, evaluate, config(tmp_path, trials=8, sampler=sampler, population=4), step_time=step_time, task=TASK
    )
    assert out["complete"] == 8
    study, _ = open_results(tmp_path / "search")
    if sampler == "evolution":  # after the first population, children differ from a parent in one choice
        done = [t for t in study.trials if t.state.is_finished()]
        late = done[5:]
        assert all(
            min(sum(t.params[k] != p.params[k] for k in t.params) for p in done[: t.number]) <= 1
            for t in late
            if "duplicate_of" not in t.user_attrs
        )


def test_predictor_screening_queues_the_predicted_best(tmp_path) -> None:
    cfg = config(tmp_path, trials=12, predictor_screen=8, predictor="ridge", screen_after=6, explore=0.0)
    run_search(SPACE, evaluate, cfg, step_time=step_time, task=TASK)
    study, _ = open_results(cfg.out_dir)
    screened = [t for t in study.trials if t.user_attrs.get("screened")]
    assert len(screened) >= 4
    for t in screened:
        assert t.user_attrs["screened"] == 8 and math.isfinite(t.user_attrs["predicted_top1"])


def test_time_budget_stops_starting_trials(tmp_path) -> None:
    out = run_search(SPACE, evaluate, config(tmp_path, trials=None, time_s=1.0), step_time=step_time, task=TASK)
    assert out["complete"] >= 1


def test_cli_dry_run_report_and_space(tmp_path, capsys) -> None:
    out = tmp_path / "s"
    assert (
        main(
            [
                "search",
                "--evaluator",
                "synthetic",
                "--space",
                "pico",
                "--budget",
                "4",
                "--out",
                str(out),
                "--sampler",
                "random",
                "--proxy-size",
                "16",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "search space 'pico'" in text and "reward" in text and "best_spec.json" in text
    assert main(["search", "report", str(out)]) == 0
    assert "4 finished, 0 failed" in capsys.readouterr().out
    assert main(["search", "space", "mini", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"] == "efficientnetv2_mini"
    assert main(["search", "--evaluator", "synthetic", "--budget", "2"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert main(["search", "report", str(tmp_path / "nothing")]) == 2
    assert "not a search folder" in capsys.readouterr().err
    assert main(["search", "--space", "pico", "--budget", "2", "--out", str(out / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err
    assert (
        main(["search", "--evaluator", "synthetic", "--budget", "2", "--out", str(out / "y"), "--proxy-time", "12"])
        == 2
    )  # a bare number is trials, not a time
    assert "--proxy-time '12': expected a time" in capsys.readouterr().err


def test_postgres_without_a_driver_or_a_server_is_a_one_line_error(tmp_path) -> None:
    import importlib.util

    # no driver: says which package to install; driver but no server: names the storage, never the password
    want = "cannot open 127.0.0.1:1/db" if importlib.util.find_spec("psycopg") else "driver for 'postgresql' is missing"
    with pytest.raises(UsageError, match=want) as err:
        run_search(
            SPACE,
            evaluate,
            config(tmp_path, storage="postgresql://u:secret@127.0.0.1:1/db"),
            step_time=step_time,
            task=TASK,
        )
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_optuna_keeps_everything_in_the_study(tmp_path) -> None:
    cfg = config(tmp_path, trials=2)
    run_search(SPACE, evaluate, cfg, step_time=step_time, task=TASK)
    study = optuna.load_study(study_name="effv2-search", storage=f"sqlite:///{cfg.out_dir}/study.db")
    assert study.user_attrs["space"]["name"] == "pico"
    assert study.user_attrs["reward"]["w"] == -0.07 and study.user_attrs["reward"]["v"] == -0.05
    a = study.trials[1].user_attrs
    assert {"spec", "genotype", "params", "macs", "top1", "step_s", "base_step_s", "base_params"} <= set(a)


def test_proxy_step_time_is_timed_as_the_trainer_runs(monkeypatch) -> None:
    """The paper's S is the step time of real training: the recipe's amp, memory format and
    optimizer resolved for this device, not fp32 NCHW."""
    import types

    import effv2.bench.timing as timing
    from effv2.runtime import resolve_amp
    from effv2.search.evaluators import ProxyEvaluator

    ev = ProxyEvaluator(data="fashion-mnist", image_size=12, overrides=("optimizer=adamw",))
    ev._bundle = types.SimpleNamespace(source="fashion-mnist", in_chans=1, num_classes=10)
    seen = {}

    def fake(model, **kw):
        seen.update(kw)
        return {"step_s": 0.01}

    monkeypatch.setattr(timing, "time_train_step", fake)
    assert ev.step_time(get_space("pico").base) == 0.01
    amp = resolve_amp("auto", torch.device("cpu"), 128)
    assert seen["amp"] == amp and seen["channels_last"] is True and seen["recipe"].optimizer == "adamw"
    assert seen["recipe"].task == "classify"  # the step timed is the recipe's task's real step
    assert seen["image_size"] == 12 and seen["in_chans"] == 1 and seen["batch_size"] == ev.batch()
    # timed with the replicas a proxy run trains (runtime/replicas.py), so S is the trained step
    n = resolve_replicas(
        "auto", device=torch.device("cpu"), amp=amp, batch_size=ev.batch(), compile=False, world_size=1
    )
    assert seen["replicas"] == n[0]
    assert ev.describe()["execution"] == {
        "amp": amp,
        "channels_last": True,
        "replicas": n[0],
        "optimizer": "adamw",
        "task": "classify",
    }


def test_table_shows_each_architecture_once_with_how_often_it_was_proposed() -> None:
    from effv2.search.results import format_table

    def row(n, geno, top1, step, dup=None, backbone=False):
        return {
            "trial": n,
            "state": "COMPLETE",
            "genotype": geno,
            "top1": top1,
            "step_ms": step,
            "params": 1e5,
            "reward": top1 / 100,
            "backbone": backbone,
            "duplicate_of": dup,
        }

    rows = [
        row(0, "F1k3x1", 80.0, 10.0, backbone=True),
        row(1, "M1k3x2", 90.0, 5.0),
        row(2, "M1k3x2", 90.0, 5.0, dup=1),
        row(3, "M1k3x2", 90.0, 5.0, dup=1),
        row(4, "F4k5x1", 85.0, 20.0),
    ]
    text = format_table(rows)
    body = text.splitlines()[2:-1]
    assert [line[:3] for line in body] == ["1* ", "4  ", "0 b"]
    assert body[0].split()[-1] == "3" and body[1].split()[-1] == "1"  # seen: proposed 3 times, once
    assert text.splitlines()[-1].startswith("5 finished, 0 failed (3 distinct architectures trained, 2 re-proposals")


def test_equal_time_epochs() -> None:
    from effv2.search.evaluators import equal_time_epochs

    # 50 steps of 0.1 s plus 20% for data and evaluation: 6 s per epoch
    assert equal_time_epochs(60.0, step_s=0.1, steps_per_epoch=50) == 10
    assert equal_time_epochs(59.9, step_s=0.1, steps_per_epoch=50) == 9
    assert equal_time_epochs(1.0, step_s=0.1, steps_per_epoch=50) == 1  # always at least one epoch
    assert equal_time_epochs(60.0, step_s=0.1, steps_per_epoch=50, overhead=1.0) == 12
    with pytest.raises(UsageError, match="equal-time proxy"):
        equal_time_epochs(60.0, step_s=0.0, steps_per_epoch=50)


def test_equal_time_proxy_gives_a_slower_net_fewer_epochs(monkeypatch, tmp_path) -> None:
    """--proxy-time: the epochs of each trial come from the step time measured for its reward, so
    every candidate gets the same training time, not the same number of epochs."""
    import types

    import effv2.bench.timing as timing
    import effv2.training.api as api
    from effv2.search.evaluators import ProxyEvaluator

    space = get_space("pico")
    fast, slow = space.base, ArchSpec.from_dict({**space.base.to_dict(), "width_mult": 2.0})
    steps = {fast: 0.01, slow: 0.04}
    monkeypatch.setattr(timing, "time_train_step", lambda model, **kw: {"step_s": steps[model.spec]})
    got = []
    monkeypatch.setattr(
        api,
        "train",
        lambda card, data, run_dir, *, overrides, **kw: got.append(overrides) or {"top1": 50.0, "train_s": 1.0},
    )
    ev = ProxyEvaluator(data="fashion-mnist", image_size=12, equal_time_s=60.0, epochs=3)
    ev._bundle = types.SimpleNamespace(source="fashion-mnist", in_chans=1, num_classes=10)
    ev._bundle.train = [0] * (100 * ev.batch())  # 100 steps per epoch
    ev.step_time(fast), ev.step_time(slow)  # what the search does first, for the reward's S
    monkeypatch.setattr(timing, "time_train_step", lambda model, **kw: pytest.fail("timed twice"))
    assert ev(fast, tmp_path)["proxy_epochs"] == 50  # 60 s / (1.2 * 0.01 s * 100 steps)
    assert ev(slow, tmp_path)["proxy_epochs"] == 12
    assert got[0][-1] == "epochs=50" and got[1][-1] == "epochs=12"
    plain = ProxyEvaluator(data="fashion-mnist", image_size=12, epochs=3, overrides=("epochs=7",))
    plain._bundle = ev._bundle
    plain(fast, tmp_path)
    assert got[-1][-1] == "epochs=7"  # fixed epochs: the user's --set still wins
    with pytest.raises(UsageError, match="--proxy-time"):
        ProxyEvaluator(data="fashion-mnist", equal_time_s=0.0)


def test_resuming_with_another_proxy_is_refused(tmp_path) -> None:
    class Described:
        def __init__(self, epochs):
            self.epochs = epochs

        def __call__(self, spec, trial_dir):
            return evaluate(spec, trial_dir)

        def describe(self):
            return {"kind": "proxy", "data": "fashion-mnist", "epochs": self.epochs, "overrides": ["a=1"]}

    run_search(SPACE, Described(3), config(tmp_path, trials=2), step_time=step_time, task=TASK)
    run_search(SPACE, Described(3), config(tmp_path, trials=3), step_time=step_time, task=TASK)  # same proxy: fine
    with pytest.raises(UsageError, match=r"proxy epochs=3, this command uses 5"):
        run_search(SPACE, Described(5), config(tmp_path, trials=4), step_time=step_time, task=TASK)


def test_a_second_stage_trains_the_first_stages_best_first(tmp_path) -> None:
    from effv2.search.driver import best_specs_of

    first = tmp_path / "first"
    run_search(
        SPACE,
        evaluate,
        SearchConfig(out_dir=first, trials=8, sampler="random", quiet=True),
        step_time=step_time,
        task=TASK,
    )
    study, _ = open_results(first)
    rows = [r for r in records(study) if r["state"] == "COMPLETE" and r["duplicate_of"] is None and not r["backbone"]]
    top = best_specs_of(first, 3, by="top1")
    assert [ArchSpec.from_dict(d) for d in top] == [
        ArchSpec.from_dict(r["spec"]) for r in sorted(rows, key=lambda r: -r["top1"])[:3]
    ]
    assert best_specs_of(first, 1)[0] == max(rows, key=lambda r: r["reward"])["spec"]
    second = run_search(SPACE, evaluate, config(tmp_path, trials=5, first_specs=top), step_time=step_time, task=TASK)
    study2, _ = open_results(second["out_dir"])
    trained = [ArchSpec.from_dict(t.user_attrs["spec"]) for t in sorted(study2.trials, key=lambda t: t.number)]
    assert trained[0] == SPACE.base and trained[1:4] == [ArchSpec.from_dict(d) for d in top]
    with pytest.raises(UsageError, match="--first-by"):
        best_specs_of(first, 3, by="speed")
