"""Recipes: the shipped files, the layering, --set parsing, and one-line errors for every mistake."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from effv2.config import (
    ProgressiveConfig,
    Recipe,
    default_recipe,
    parse_overrides,
    recipe_from_dict,
    recipe_to_dict,
    resolve_recipe,
    shipped_recipes,
    valid_keys,
)
from effv2.data.order import steps_per_epoch
from effv2.errors import UsageError

SHIPPED = [
    "base",
    "finetune",
    "finetune-cifar10",
    "finetune-cifar100",
    "finetune-flowers102",
    "finetune-stanford-cars",
    "fmnist-cpu",
    "imagenet",
    "imagenet-b0",
    "imagenet-b1",
    "imagenet-b2",
    "imagenet-b3",
    "imagenet-l",
    "imagenet-l-code",
    "imagenet-m",
    "imagenet-m-code",
    "imagenet-s",
    "imagenet-s-code",
    "imagenet21k",
    "imagenet21k-ft1k",
]


def _resolve(recipe=None, model="efficientnetv2_s", dataset="imagenet", overrides=None):
    return resolve_recipe(recipe, model=model, dataset=dataset, overrides=overrides)


def test_shipped_recipes_resolve_say_what_they_follow_and_round_trip():
    assert shipped_recipes() == SHIPPED
    for name in SHIPPED:
        rec, prov = _resolve(name)
        assert rec.name == name and rec.follows and rec.description, name
        assert f"recipe:{name}" in prov
        assert rec.progressive.max_size is not None and rec.eval_size is not None  # fully resolved
        back = recipe_from_dict(json.loads(json.dumps(recipe_to_dict(rec))))
        assert back == rec and isinstance(back.betas, tuple)


def test_imagenet_recipe_is_the_official_one():
    rec, prov = _resolve("imagenet-s")
    assert list(prov) == ["defaults", "model", "recipe:imagenet", "recipe:imagenet-s"]  # max_size set: no fill
    assert (rec.epochs, rec.batch_size, rec.optimizer, rec.lr, rec.warmup_epochs) == (350, 4096, "rmsprop_tf", 0.016, 5)
    assert rec.scaled_lr == pytest.approx(0.256)
    assert (rec.lr_schedule, rec.decay_rate, rec.decay_epochs) == ("exponential", 0.97, 2.4)
    assert (rec.ema_decay, rec.weight_decay, rec.label_smoothing) == (0.9999, 1e-5, 0.1)
    assert (rec.momentum, rec.rmsprop_decay, rec.optimizer_eps, rec.randaug_ops) == (0.9, 0.9, 1e-3, 2)


# Training images of each fine-tuning set (paper protocol: Flowers train+val lists) and the
# epochs the recipe must run so that training takes at least 10,000 steps of batch 512.
FINETUNE = {
    "cifar10": (50_000, 104),
    "cifar100": (50_000, 104),
    "flowers102": (2_040, 3334),
    "stanford-cars": (8_144, 667),
}


@pytest.mark.parametrize("ds", sorted(FINETUNE))
def test_finetune_recipes(ds):
    n, epochs = FINETUNE[ds]
    assert default_recipe(ds) == f"finetune-{ds}"
    rec, prov = _resolve(None, model="efficientnetv2_m", dataset=ds)
    spe = steps_per_epoch(n, rec.batch_size)
    assert rec.epochs == epochs == math.ceil(10_000 / spe)
    assert rec.epochs * spe >= 10_000 > (rec.epochs - 1) * spe
    assert (rec.batch_size, rec.optimizer, rec.lr_schedule, rec.warmup_epochs) == (512, "rmsprop_tf", "constant", 1)
    assert rec.scaled_lr == pytest.approx(0.001)
    assert (rec.ema_decay, rec.label_smoothing, rec.weight_decay) == (0.9996, 0.1, 1e-5)
    p = rec.progressive
    assert not p.enabled and p.max_size == rec.eval_size == 480  # trained at the eval size
    assert (p.dropout_max, p.drop_path_max, p.randaug_max, p.mixup_max) == (0, 0.2, 0, 0)
    assert prov["filled"]["set"] == {"progressive.max_size": 480}


def test_default_recipe_per_dataset_and_layer_order():
    assert default_recipe("fashion-mnist") == "fmnist-cpu" and default_recipe("/some/folder") == "base"
    rec, prov = _resolve(
        None, model="efficientnetv2_mini", dataset="fashion-mnist", overrides=["epochs=3", "progressive=false"]
    )
    assert list(prov) == ["defaults", "model", "dataset", "recipe:fmnist-cpu", "overrides", "filled"]
    assert prov["dataset"]["source"] == "effv2/recipes/dataset-fashion-mnist.json"
    assert prov["model"]["set"]["progressive.dropout_max"] == 0.1
    assert prov["dataset"]["set"]["crop"] == "pad_crop"
    assert rec.name == "fmnist-cpu" and rec.crop == "none" and rec.epochs == 3 and not rec.progressive.enabled
    # the recipe beats the model layer
    assert rec.progressive.dropout_max == 0.1 and rec.progressive.dropout_min == 0.05
    assert rec.eval_size == 28 and rec.progressive.max_size == 28  # from the model card


def test_model_layer_caps_min_size_for_small_models():
    rec, _ = _resolve("base", model="efficientnetv2_pico", dataset="anything")
    assert rec.progressive.min_size == 32 == rec.progressive.max_size
    assert rec.progressive.dropout_min == 0.0 == rec.progressive.dropout_max


def test_user_file_extends_shipped_recipe(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"extends": "imagenet-s", "epochs": 30, "progressive": {"n_stages": 3}}))
    rec, prov = _resolve(str(f))
    assert list(prov)[2:5] == ["recipe:imagenet", "recipe:imagenet-s", "recipe:mine"]
    assert rec.name == "mine" and rec.epochs == 30 and rec.progressive.n_stages == 3
    assert rec.progressive.max_size == 300 and rec.optimizer == "rmsprop_tf"
    # a relative extends is relative to the extending file
    (tmp_path / "child.json").write_text(json.dumps({"extends": "mine.json", "seed": 7}))
    rec, _ = _resolve(str(tmp_path / "child.json"))
    assert (rec.name, rec.seed, rec.epochs) == ("child", 7, 30)


def test_extends_cycle_is_rejected(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json"}))
    with pytest.raises(UsageError, match="cycle"):
        _resolve(str(tmp_path / "a.json"))


def test_set_parsing():
    o = parse_overrides(
        [
            "progressive=false",
            "betas=[0.8, 0.99]",
            "eval_size=null",
            "name=123",
            "crop=pad_crop",
            "progressive.mixup_max=0.2",
            "channels_last=true",
            "lr=1",
            "description=a b=c",
        ]
    )
    assert o["progressive"] == {"enabled": False, "mixup_max": 0.2}
    assert o["betas"] == (0.8, 0.99) and o["eval_size"] is None and o["name"] == "123"
    assert o["channels_last"] is True and o["lr"] == 1.0 and isinstance(o["lr"], float)
    assert o["description"] == "a b=c" and o["crop"] == "pad_crop"
    assert parse_overrides(['progressive={"enabled": true, "n_stages": 2}'])["progressive"] == {
        "enabled": True,
        "n_stages": 2,
    }
    assert parse_overrides({"progressive.enabled": False, "seed": 3}) == {"progressive": {"enabled": False}, "seed": 3}
    assert parse_overrides(["channels_last=auto"])["channels_last"] == "auto"


@pytest.mark.parametrize(
    "item, words",
    [
        ("epochs=abc", ["epochs", "an integer", '"abc"']),
        ("epochs=1.5", ["epochs", "an integer"]),
        ("optimizer=adam", ["optimizer", '"sgd", "adamw", "rmsprop_tf"']),
        ("progressive=3", ["progressive", "true/false"]),
        ("amp=true", ["amp", '"auto", "bf16", "fp16", "none"']),
        ("betas=[0.9]", ["betas", "a list of 2 numbers"]),
        ("lr=NaN", ["lr", "a number"]),
        ("epochs", ["KEY=VALUE"]),
        ("epoch=3", ["unknown recipe key 'epoch'", "did you mean epochs", "valid keys:", "progressive.n_stages"]),
        (
            "progressive.n_stage=3",
            ["'progressive.n_stage'", "did you mean progressive.n_stages", "progressive.min_size"],
        ),
        ("progressive.enabled.x=1", ["unknown recipe key 'progressive.enabled.x'"]),
    ],
)
def test_set_errors_are_one_line_and_name_the_key(item, words):
    with pytest.raises(UsageError) as e:
        parse_overrides([item])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["lr=-1"], ["recipe key lr", "must be > 0", "set by overrides"]),
        (["warmup_epochs=20", "epochs=10"], ["warmup_epochs", "<= epochs=10"]),
        (["progressive.min_size=400"], ["progressive.min_size", "<= progressive.max_size=300", "set by overrides"]),
        (
            ["progressive.dropout_max=0.05"],
            ["progressive.dropout_min", "<= progressive.dropout_max=0.05", "set by recipe:imagenet-s"],
        ),
        (["nesterov=true", "momentum=0"], ["nesterov", "momentum > 0"]),
        (["ema_decay=1"], ["ema_decay", "[0, 1)"]),
        (["progressive.n_stages=0"], ["progressive.n_stages", ">= 1"]),
    ],
)
def test_range_errors_name_the_layer(overrides, words):
    with pytest.raises(UsageError) as e:
        _resolve("imagenet-s", overrides=overrides)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)


def test_disabled_progressive_skips_min_max_ordering():
    rec, _ = _resolve("imagenet-s", overrides=["progressive=false", "progressive.min_size=400"])
    assert not rec.progressive.enabled


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": 3, "progressive": {"n_stage": 2}}))
    with pytest.raises(UsageError, match=r"bad\.json: unknown recipe key 'progressive\.n_stage'.*valid keys"):
        _resolve(str(bad))
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"batch_size": "big"}))
    with pytest.raises(UsageError, match=r"recipe key batch_size: expected an integer.*typed\.json"):
        _resolve(str(typed))
    broken = tmp_path / "broken.json"
    broken.write_text('{"epochs": 3,}')
    with pytest.raises(UsageError, match=r"broken\.json: not valid JSON \(line 1"):
        _resolve(str(broken))
    with pytest.raises(UsageError, match="unknown recipe 'nope'; shipped recipes: base, finetune"):
        _resolve("nope")
    with pytest.raises(UsageError, match="not found"):
        _resolve(str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="unknown model"):
        _resolve("base", model="efficientnetv2_zz")
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(UsageError, match="must be a JSON object"):
        _resolve(str(lst))


def test_dataclasses_validate_themselves():
    assert Recipe(lr=1).lr == 1.0 and isinstance(Recipe(lr=1).lr, float)
    assert Recipe(betas=[0.8, 0.9]).betas == (0.8, 0.9)
    assert Recipe(progressive={"enabled": False}).progressive == ProgressiveConfig(enabled=False)
    for bad in (
        {"epochs": 1.5},
        {"lr": 0},
        {"optimizer": "adam"},
        {"epochs": True},
        {"val_fraction": 1.0},
        {"min_lr": 0.5},
        {"channels_last": "yes"},
    ):
        with pytest.raises(UsageError):
            Recipe(**bad)
    with pytest.raises(UsageError, match="progressive.mixup_min: must be <= progressive.mixup_max=0.1"):
        ProgressiveConfig(mixup_min=0.2, mixup_max=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().epochs = 3  # type: ignore[misc]
    with pytest.raises(UsageError, match="unknown recipe key 'epoch'"):
        recipe_from_dict({"epoch": 3})


def test_eps_defaults_per_optimizer_and_valid_keys_cover_every_field():
    assert Recipe(optimizer="rmsprop_tf").optimizer_eps == 1e-3
    assert Recipe(optimizer="adamw").optimizer_eps == 1e-8
    assert Recipe(optimizer="adamw", eps=1e-6).optimizer_eps == 1e-6
    keys = valid_keys()
    assert len(keys) == len(set(keys)) == len(dataclasses.fields(Recipe)) + len(dataclasses.fields(ProgressiveConfig))
    flat = {k for k in recipe_to_dict(Recipe()) if k != "progressive"}
    assert flat | {"progressive"} | {f"progressive.{k}" for k in recipe_to_dict(Recipe())["progressive"]} == set(keys)


def test_show_command(capsys):
    from effv2.cli.recipes import main

    assert main(["imagenet-s-code", "--model", "efficientnetv2_s"]) == 0
    out = capsys.readouterr().out
    assert "layers: defaults" in out and "<- recipe:imagenet-s-code" in out
    assert "lr 0.016 per 256 images -> 0.256 at batch 4096" in out
    assert [line.split()[2] for line in out.splitlines()[-4:]] == ["171", "214", "257", "300"]
    assert main(["--list"]) == 0
    assert "imagenet-s (extends imagenet): follows paper" in capsys.readouterr().out
    assert main(["--data", "cifar10", "--model", "efficientnetv2_s", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["name"] == "finetune-cifar10"
    assert main(["--set", "epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set epoch=3: unknown recipe key 'epoch'") and err.count("\n") == 1
