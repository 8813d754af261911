"""Compound scaling to a target (real counts), V2's size cap with extra layers, LACS, and the CLI."""

from __future__ import annotations

import json
import math

import pytest

from effv2.cli.main import main
from effv2.errors import UsageError
from effv2.models import create_model, get_card
from effv2.models.flops import count_params
from effv2.search.scale import Coefficients, ScaleLimits, compound_scale, lacs, lacs_grid, scale_to_target

pytestmark = pytest.mark.usefixtures("one_thread")

MINI = get_card("efficientnetv2_mini")
PICO = get_card("efficientnetv2_pico")


def test_phi_zero_is_the_model_itself() -> None:
    c = compound_scale(MINI, 0.0)
    assert c.spec == MINI.spec and c.eval_size == MINI.eval_size and c.train_size == MINI.train_size


def test_scaling_to_a_params_target_lands_close_and_says_how_close() -> None:
    target = 4e6  # channels round to 8 and layers to whole blocks: mini's ladder has steps of ~10%
    r = scale_to_target(MINI, "params", target, in_chans=1, num_classes=10)
    built = count_params(
        create_model(
            "efficientnetv2_mini",
            num_classes=10,
            in_chans=1,
            width_mult=r.card.spec.width_mult,
            depth_mult=r.card.spec.depth_mult,
        )
    )
    assert built == r.achieved["params"]  # the reported count is the real model's
    assert abs(r.achieved["params"] - target) / target < 0.05
    assert r.error_pct == pytest.approx(100 * (r.achieved["params"] - target) / target)
    d, w, g = 1.2**r.phi, 1.1**r.phi, 1.15**r.phi
    assert r.card.spec.depth_mult == pytest.approx(d, rel=1e-5) and r.card.spec.width_mult == pytest.approx(w, rel=1e-5)
    assert abs(r.card.eval_size - MINI.eval_size * g) <= 2


def test_scaling_down_and_macs_target() -> None:
    r = scale_to_target(MINI, "macs", 10e6, in_chans=1, num_classes=10)
    assert r.phi < 0 and abs(r.error_pct) < 10


def test_bigger_targets_give_bigger_models() -> None:
    prev = None
    for target in (2e6, 4e6, 8e6):
        r = scale_to_target(MINI, "params", target, in_chans=1, num_classes=10)
        if prev is not None:
            assert r.phi > prev.phi and r.achieved["params"] > prev.achieved["params"]
            assert r.card.spec.depth_mult >= prev.card.spec.depth_mult
            assert r.card.spec.width_mult >= prev.card.spec.width_mult
            assert r.card.eval_size >= prev.card.eval_size
        prev = r


def test_size_cap_turns_resolution_into_extra_layers_in_the_last_stages() -> None:
    limits = ScaleLimits(max_size=40, extra_stages=2)
    free = compound_scale(MINI, 5.0)  # 28 * 1.15^5 = 56 px uncapped
    capped = compound_scale(MINI, 5.0, limits=limits)
    assert free.eval_size == 56 and capped.eval_size == 40 and capped.train_size <= 40
    extra = (28 * 1.15**5 / 40) ** 2
    rows, base = capped.spec.stages, MINI.spec.stages
    assert rows[:-2] == base[:-2]
    assert [s.repeats for s in rows[-2:]] == [math.ceil(s.repeats * extra) for s in base[-2:]]
    assert "capped at 40" in capped.notes
    for phi in (3.0, 6.0, 9.0):  # the cap holds whatever phi
        assert compound_scale(MINI, phi, limits=limits).eval_size <= 40


def test_unreachable_and_bad_targets() -> None:
    with pytest.raises(UsageError, match="beyond reach"):
        scale_to_target(PICO, "params", 1e12, num_classes=10)
    with pytest.raises(UsageError, match="not one of"):
        scale_to_target(PICO, "flops", 1e6)
    with pytest.raises(UsageError, match="positive"):
        scale_to_target(PICO, "params", -1)
    with pytest.raises(UsageError, match="alpha"):
        Coefficients(alpha=0.5)


def fake_latency(card) -> float:
    """A made-up device where layers cost much more time than MACs (sequential launches)."""
    from effv2.search.scale import count

    macs = count(card, in_chans=3, num_classes=10)["macs"]
    return 0.05 * card.spec.num_blocks + macs / 2e7


def test_latency_target_with_an_injected_measure() -> None:
    r = scale_to_target(MINI, "latency_ms", 7.0, num_classes=10, measure=fake_latency)
    assert r.phi > 0 and abs(r.achieved["latency_ms"] - 7.0) / 7.0 < 0.05
    assert r.achieved["latency_ms"] == fake_latency(r.card)


def test_lacs_picks_the_coefficients_with_the_best_reward() -> None:
    grid = [Coefficients(alpha=1.2, beta=1.1, gamma=1.15), Coefficients(alpha=1.8, beta=1.05, gamma=1.0)]

    def proxy(card) -> float:  # pretend accuracy rewards depth most
        return 70 + 10 * math.log(card.spec.depth_mult) + 2 * math.log(card.spec.width_mult)

    out = lacs(PICO, 2.0, measure=fake_latency, accuracy_proxy=proxy, grid=grid, num_classes=10)
    assert len(out.rows) == 2
    best_row = max(out.rows, key=lambda r: r["reward"])
    assert (out.best.coeffs.alpha, out.best.coeffs.beta) == (best_row["alpha"], best_row["beta"])
    for row in out.rows:
        assert row["reward"] == pytest.approx(row["proxy"] * (row["latency_ms"] / 2.0) ** -0.07)
    grid = lacs_grid()
    assert grid and all(c.alpha >= max(c.beta, c.gamma) for c in grid)
    assert all(abs(c.alpha * c.beta**2 * c.gamma**2 - 2) <= 0.15 for c in grid)


def test_cli_writes_a_card_that_builds(tmp_path, capsys) -> None:
    out = tmp_path / "mini4m.json"
    assert (
        main(
            [
                "scale",
                "--spec",
                "efficientnetv2_mini",
                "--target",
                "params",
                "4M",
                "--num-classes",
                "10",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "achieved" in text and "stage" in text and "MBConv" in text and "wrote" in text
    card = json.loads(out.read_text())
    assert {"spec", "train_size", "eval_size", "dropout"} <= set(card)
    model = create_model(str(out), num_classes=10, in_chans=1)
    assert abs(count_params(model) - 4e6) / 4e6 < 0.05
    assert main(["scale", "--spec", str(out), "--target", "params", "5M", "--num-classes", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["achieved"]["params"] > 4.5e6
    assert main(["scale", "--spec", "efficientnetv2_mini", "--target", "params", "3Q"]) == 2
    assert main(["scale", "--spec", "nope", "--target", "params", "3M"]) == 2
    assert main(["scale", "--spec", "efficientnetv2_mini", "--target", "params", "3M", "--method", "lacs"]) == 2
    assert "latency target" in capsys.readouterr().err


def test_latency_is_timed_as_the_trainer_runs_on_this_device(monkeypatch) -> None:
    import torch

    import effv2.bench.timing as timing
    from effv2.bench.machine import fast_defaults
    from effv2.search.scale import latency_measure

    seen = []
    monkeypatch.setattr(timing, "time_train_step", lambda model, **kw: seen.append(kw) or {"step_s": 0.004})
    auto = latency_measure(mode="train", batch_size=256, in_chans=1, num_classes=10)
    fast = fast_defaults(torch.device("cpu"), batch_size=256)
    assert auto.execution == {"amp": fast["amp"], "channels_last": bool(fast["channels_last"])}
    assert auto(PICO) == pytest.approx(4.0)
    assert seen[-1]["amp"] == fast["amp"] and seen[-1]["channels_last"] == bool(fast["channels_last"])
    assert seen[-1]["image_size"] == PICO.train_size and seen[-1]["batch_size"] == 256
    plain = latency_measure(mode="train", amp="none", channels_last=False)
    assert plain.execution == {"amp": "none", "channels_last": False}
    with pytest.raises(UsageError, match="--amp 'fp8'"):
        latency_measure(amp="fp8")
