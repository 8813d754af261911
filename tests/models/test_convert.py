"""Weight import: logits equal to torchvision / timm, leaf order = data flow, safe loading, the CLI."""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from effv2.cli.main import main
from effv2.errors import UsageError
from effv2.io.torch_load import safe_torch_load, unwrap_state_dict
from effv2.io.weights import load_into, read_metadata, save_weights
from effv2.models import create_model
from effv2.models.convert import (
    ConversionError,
    convert,
    forward_leaf_order,
    layer_signature,
    leaf_modules,
    max_logit_diff,
    transfer_weights,
)
from effv2.models.flops import count_params
from effv2.training.inference import load_for_inference

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BN layers are the identity in eval mode, which would hide swapped or skipped BN tensors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model


def _source(source: str, name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    if source == "timm":
        model = timm.create_model(name, pretrained=False, **kw)
    else:
        model = getattr(torchvision.models, name)(weights=None, **kw)
    return _randomize_bn(model, seed).eval()


@pytest.fixture(scope="module")
def tv_s() -> nn.Module:
    return _source("torchvision", "efficientnet_v2_s")


class _Evil:
    """Unpickling this would create ``path``: a stand-in for code execution hidden in a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name", "target", "padding", "eps", "size"),
    [
        ("torchvision", "efficientnet_v2_m", "efficientnetv2_m", "symmetric", 1e-3, 64),
        ("torchvision", "efficientnet_v2_l", "efficientnetv2_l", "symmetric", 1e-3, 64),
        ("timm", "tf_efficientnetv2_b0", "efficientnetv2_b0", "tf_same", 1e-3, 64),
        ("timm", "tf_efficientnetv2_b1", "efficientnetv2_b1", "tf_same", 1e-3, 65),
        ("timm", "tf_efficientnetv2_b2", "efficientnetv2_b2", "tf_same", 1e-3, 70),
        ("timm", "tf_efficientnetv2_b3", "efficientnetv2_b3", "tf_same", 1e-3, 64),
        ("timm", "tf_efficientnetv2_s", "efficientnetv2_s", "tf_same", 1e-3, 64),
        ("timm", "efficientnetv2_s", "efficientnetv2_s", "symmetric", 1e-5, 64),
    ],
)
def test_converted_state_dict_gives_the_same_logits(source, name, target, padding, eps, size) -> None:
    src = _source(source, name)
    model = convert(source, src.state_dict(), src_name=name)
    assert model.card.name == target and model.spec.padding == padding and model.spec.bn_eps == eps
    assert count_params(model) == count_params(src)
    diff = max_logit_diff(src, model, image_size=size)
    assert diff < TOL, f"{name}: max |logit diff| {diff:.3g}"
    with torch.no_grad():  # the check is not vacuous: logits vary across classes and inputs
        y = model.eval()(torch.randn(2, 3, size, size))
    assert y.std() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "tf_efficientnetv2_m",
        "tf_efficientnetv2_l",
        "tf_efficientnetv2_xl",
        "efficientnetv2_m",
        "efficientnetv2_l",
        "efficientnetv2_xl",
    ],
)
def test_remaining_timm_names_give_the_same_logits(name: str) -> None:
    src = _source("timm", name)
    model = convert("timm", src.state_dict(), src_name=name)
    assert model.spec.padding == ("tf_same" if name.startswith("tf_") else "symmetric")
    assert max_logit_diff(src, model, image_size=64) < TOL


def test_torchvision_s_module_and_state_dict_convert_identically(tv_s) -> None:
    from_module = convert("torchvision", tv_s)  # name matched by depth (40 blocks)
    from_state = convert("torchvision", tv_s.state_dict(), model="efficientnetv2_s")
    assert max_logit_diff(tv_s, from_module, image_size=64) < TOL
    sd_a, sd_b = from_module.state_dict(), from_state.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    # Copies, never views: changing the converted model leaves the source alone.
    with torch.no_grad():
        from_module.stem.conv.weight.zero_()
    assert tv_s.features[0][0].weight.abs().sum() > 0
    card = from_module.card
    assert (card.mean, card.std, card.interpolation, card.eval_size) == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        "bilinear",
        384,
    )


def test_tf_weights_in_a_symmetric_model_are_detected() -> None:
    src = _source("timm", "tf_efficientnetv2_b0")
    wrong = create_model("efficientnetv2_b0")  # symmetric padding
    transfer_weights(src, wrong)
    assert max_logit_diff(src, wrong, image_size=64) > 1e-3  # the parity check sees padding errors


def test_num_classes_and_in_chans_are_read_from_the_weights() -> None:
    src = _source("timm", "tf_efficientnetv2_b0", num_classes=10, in_chans=1)
    model = convert("timm", src.state_dict(), src_name="tf_efficientnetv2_b0")
    assert (model.num_classes, model.in_chans) == (10, 1)
    assert max_logit_diff(src, model, image_size=64) < TOL
    headless = _source("timm", "tf_efficientnetv2_b0", num_classes=0)
    model = convert("timm", headless.state_dict(), src_name="tf_efficientnetv2_b0.in1k")  # tags are ignored
    assert model.num_classes == 0
    assert max_logit_diff(headless, model, image_size=64) < TOL  # pooled features


def test_half_precision_weights_give_an_fp32_model() -> None:
    src = _source("timm", "tf_efficientnetv2_b0")
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    model = convert("timm", half, src_name="tf_efficientnetv2_b0")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    src.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    assert max_logit_diff(src, model, image_size=64) < TOL


def test_round_trip_effv2_to_timm_and_back() -> None:
    torch.manual_seed(0)
    ours = _randomize_bn(create_model("efficientnetv2_b0", padding="tf_same")).eval()
    theirs = timm.create_model("tf_efficientnetv2_b0", pretrained=False)
    transfer_weights(ours, theirs)
    assert max_logit_diff(ours, theirs, image_size=64) < TOL
    back = create_model("efficientnetv2_b0", padding="tf_same")
    transfer_weights(theirs, back)
    sd_a, sd_b = ours.state_dict(), back.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


# -- leaf order is data-flow order ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("effv2", "efficientnetv2_b0"),  # first stage: e=1 Fused block without skip (32 -> 16)
        ("effv2", "efficientnetv2_s"),  # first stage: e=1 Fused blocks with skip (24 -> 24)
        ("timm", "tf_efficientnetv2_b0"),
        ("timm", "efficientnetv2_s"),
        ("torchvision", "efficientnet_v2_s"),
    ],
)
def test_registration_order_is_forward_order(kind: str, name: str) -> None:
    model = create_model(name) if kind == "effv2" else _source(kind, name)
    names = [n for n, _ in leaf_modules(model)]
    assert forward_leaf_order(model, torch.randn(1, 3, 64, 64)) == names
    convs = [m for _, m in leaf_modules(model) if isinstance(m, nn.Conv2d)]
    se = [m for m in convs if m.bias is not None]
    assert len(se) % 2 == 0 and se  # SE reduce/expand pairs, in that order
    assert all(a.out_channels == b.in_channels for a, b in zip(se[::2], se[1::2]))


def test_implementations_have_the_same_layer_sequence(tv_s) -> None:
    def layers(model: nn.Module) -> list[tuple]:
        return [layer_signature(m) for _, m in leaf_modules(model)]

    ours = layers(create_model("efficientnetv2_s"))
    # stem 2 + Fused e=1 2x2 + Fused e=4 8x4 + MBConv 30x8 (expand, dw, SE reduce/expand, project) + head 2 + fc 1
    assert len(ours) == 2 + 2 * 2 + 8 * 4 + 30 * 8 + 2 + 1 == 281
    assert (
        ours
        == layers(tv_s)
        == layers(_source("timm", "efficientnetv2_s"))
        == layers(_source("timm", "tf_efficientnetv2_s"))
    )
    assert [s[0] for s in ours[:3]] == ["Conv2d", "BatchNorm2d", "Conv2d"] and ours[-1][0] == "Linear"


# -- errors -----------------------------------------------------------------------------------------


def test_mismatched_architectures_name_the_first_differing_layers(tv_s) -> None:
    with pytest.raises(
        ConversionError,
        match=r"architectures differ at source 'stem\.conv' Conv2d\(3->32.* "
        r"vs target 'features\.0\.0' Conv2d\(3->24",
    ):
        transfer_weights(create_model("efficientnetv2_b0"), tv_s)


def test_wrong_source_name_for_a_state_dict_names_the_key(tv_s) -> None:
    with pytest.raises(UsageError, match=r"efficientnet_v2_m state_dict: architecture mismatch"):
        convert("torchvision", tv_s.state_dict(), src_name="efficientnet_v2_m")
    with pytest.raises(ConversionError, match=r"not a timm EfficientNetV2 state_dict: no key 'conv_stem\.weight'"):
        convert("timm", tv_s.state_dict(), src_name="tf_efficientnetv2_s")


def test_unsupported_names_list_the_supported_ones() -> None:
    with pytest.raises(
        ConversionError,
        match=r"efficientnetv2_rw_s.*different architecture.*valid: "
        r"efficientnetv2_s, .*tf_efficientnetv2_b0",
    ):
        convert("timm", {}, src_name="efficientnetv2_rw_s")
    with pytest.raises(ConversionError, match=r"valid: efficientnet_v2_s, efficientnet_v2_m, efficientnet_v2_l$"):
        convert("torchvision", {}, src_name="efficientnet_v2_xl")
    with pytest.raises(ConversionError, match=r"two conversions for efficientnetv2_s"):
        convert("timm", {}, model="efficientnetv2_s")
    with pytest.raises(ConversionError, match=r"unknown source 'keras'"):
        convert("keras", {}, src_name="x")  # type: ignore[arg-type]


def test_missing_timm_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    state = {"conv_stem.weight": torch.zeros(32, 3, 3, 3)}
    with pytest.raises(ConversionError, match=r"timm is needed to convert timm weights.*pip install"):
        convert("timm", state, src_name="tf_efficientnetv2_b0")


# -- safe loading -----------------------------------------------------------------------------------


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path) -> None:
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_Evil(live))).close()
    assert live.exists()  # the payload is real: plain unpickling runs it

    marker = tmp_path / "marker"
    for i, write in enumerate(
        (
            lambda p: torch.save({"w": torch.ones(1), "x": _Evil(marker)}, p),
            lambda p: p.write_bytes(pickle.dumps({"x": _Evil(marker)})),
        )
    ):
        path = tmp_path / f"evil{i}.pth"
        write(path)
        with pytest.raises(UsageError, match=rf"{path.name}: refused: not a plain weights file"):
            safe_torch_load(path)
        assert not marker.exists()


def test_training_checkpoints_are_unwrapped(tmp_path) -> None:
    w, e = {"a.weight": torch.ones(2)}, {"a.weight": torch.zeros(2)}
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in w.items()}, "state_dict_ema": e}, tmp_path / "ckpt.pth"
    )
    assert torch.equal(safe_torch_load(tmp_path / "ckpt.pth")["a.weight"], torch.ones(2))
    assert torch.equal(safe_torch_load(tmp_path / "ckpt.pth", ema=True)["a.weight"], torch.zeros(2))
    assert unwrap_state_dict({"model": {"_orig_mod.x": torch.ones(1)}}).keys() == {"x"}
    save_weights({"x": torch.ones(3)}, tmp_path / "w.safetensors")
    assert torch.equal(safe_torch_load(tmp_path / "w.safetensors")["x"], torch.ones(3))


def test_unloadable_files_are_usage_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match=r"nope\.pth: no such weights file"):
        safe_torch_load(tmp_path / "nope.pth")
    torch.save({"w": torch.ones(100)}, tmp_path / "ok.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "ok.pth").read_bytes()[:300])
    with pytest.raises(UsageError, match=r"cut\.pth: not a readable PyTorch weights file \(RuntimeError"):
        safe_torch_load(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")  # read as a pickle: opcode 'n' refused
    with pytest.raises(UsageError, match=r"junk\.pth: refused: .*opcode 110 is not allowed"):
        safe_torch_load(tmp_path / "junk.pth")
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {"w": torch.ones(1)}}, tmp_path / "ns.pth")
    with pytest.raises(UsageError, match=r"ns\.pth: refused: .*references argparse\.Namespace"):
        safe_torch_load(tmp_path / "ns.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(
        UsageError, match=r"empty\.pth: found no state_dict \(top-level keys: epoch; looked for state_dict, model"
    ):
        safe_torch_load(tmp_path / "empty.pth")


# -- the CLI ----------------------------------------------------------------------------------------


def test_cli_converts_a_torchvision_file(tv_s, tmp_path, capsys) -> None:
    src, out = tmp_path / "tv_s.pth", tmp_path / "s.safetensors"
    torch.save(tv_s.state_dict(), src)
    rc = main(
        [
            "convert",
            "--from",
            "torchvision",
            str(src),
            "--model",
            "efficientnet_v2_s",
            "--out",
            str(out),
            "--check-size",
            "64",
        ]
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(printed) == 1
    assert "efficientnet_v2_s -> efficientnetv2_s (21,458,488 parameters" in printed[0]
    assert "max |logit diff| 0.00e+00 at 64 px" in printed[0]  # the same float ops: bitwise equal

    model = create_model("efficientnetv2_s")
    meta = load_into(model, out)
    assert meta["converted_from"]["name"] == "efficientnet_v2_s" and meta["card"]["eval_size"] == 384
    assert max_logit_diff(tv_s, model, image_size=64) < TOL
    loaded = load_for_inference(out)  # rebuilt from the file's recorded card alone
    assert loaded.mean == (0.485, 0.456, 0.406) and loaded.eval_size == 384
    assert max_logit_diff(tv_s, loaded.model, image_size=64) < TOL
    assert read_metadata(out)["spec"]["padding"] == "symmetric"


def test_cli_refuses_a_malicious_file(tmp_path, capsys) -> None:
    marker, src, out = tmp_path / "marker", tmp_path / "evil.pth", tmp_path / "out.safetensors"
    torch.save({"features.0.0.weight": torch.ones(1), "x": _Evil(marker)}, src)
    rc = main(["convert", "--from", "torchvision", str(src), "--model", "efficientnet_v2_s", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("effv2 convert: error: ") and "refused" in err
    assert not marker.exists() and not out.exists()


def test_cli_rejects_unsupported_models_in_one_line(tmp_path, capsys) -> None:
    rc = main(
        [
            "convert",
            "--from",
            "timm",
            str(tmp_path / "x.pth"),
            "--model",
            "efficientnetv2_rw_s",
            "--out",
            str(tmp_path / "o.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "valid: efficientnetv2_s" in err


def test_converted_weights_carry_the_sources_whole_preprocessing(tmp_path) -> None:
    """Crop fraction and mode are no card fields: the converted model's data_config is saved with it."""
    from effv2.inference.data_config import DataConfig

    model = convert("timm", _source("timm", "tf_efficientnetv2_b0", num_classes=3))
    want = DataConfig(224, 0.875, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "center")
    assert model.data_config == want
    save_weights(model, tmp_path / "b0.safetensors")
    assert read_metadata(tmp_path / "b0.safetensors")["data_config"]["crop_fraction"] == 0.875
    assert load_for_inference(tmp_path / "b0.safetensors").data_config == want
    gray = convert("timm", _source("timm", "tf_efficientnetv2_b0", num_classes=3, in_chans=1))
    assert gray.data_config is None  # no published preprocessing for 1-channel weights
