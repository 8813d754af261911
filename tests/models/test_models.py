"""One test over the whole registry, pinned sizes and costs, a golden output, spec round trips, model API,
and the technique options (norm="dual_bn" for AdvProp, act= for smooth adversarial training)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effv2.errors import UsageError
from effv2.models import (
    ACTS,
    NORMS,
    PAPER_MODELS,
    ArchSpec,
    DualBatchNorm2d,
    EfficientNetV2,
    SpecError,
    Stage,
    add_aux_bn_state,
    create_model,
    drop_aux_bn_state,
    get_card,
    init_aux_from_main,
    list_models,
)
from effv2.models.blocks import ACT_LAYERS, NORM_LAYERS, Conv2dSame
from effv2.models.flops import count_macs, count_params
from effv2.models.fuse import count_bn, fold_bn
from effv2.models.spec import BLOCK_TYPES, PADDINGS, ModelCard

pytestmark = pytest.mark.usefixtures("one_thread")

# Trainable parameters with 1000 classes: the numbers timm and torchvision give for the same models.
PARAMS = {
    "efficientnetv2_b0": 7_139_704,
    "efficientnetv2_b1": 8_141_052,
    "efficientnetv2_b2": 10_096_086,
    "efficientnetv2_b3": 14_358_406,
    "efficientnetv2_s": 21_458_488,
    "efficientnetv2_m": 54_139_356,
    "efficientnetv2_l": 118_515_272,
    "efficientnetv2_xl": 208_119_808,
}
# Reference MACs at the eval size (shared/reference/efficientnetv2.md).
MACS = {
    "efficientnetv2_b0": (0.72e9, 224),
    "efficientnetv2_b1": (1.20e9, 240),
    "efficientnetv2_b2": (1.70e9, 260),
    "efficientnetv2_b3": (3.0e9, 300),
    "efficientnetv2_s": (8.4e9, 384),
    "efficientnetv2_m": (24.6e9, 480),
    "efficientnetv2_l": (56.1e9, 480),
    "efficientnetv2_xl": (93.4e9, 512),
}


def _meta_model(name: str, **kw) -> torch.nn.Module:
    """Shapes without memory or init cost: enough for parameter and MAC counts."""
    with torch.device("meta"):
        return create_model(name, **kw)


# -- the whole registry ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_a_step_with_custom_classes_and_channels(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=1, drop_rate=0.0, drop_path_rate=0.0)
    assert model.stem.conv.in_channels == 1 and model.classifier.out_features == 7
    # At least 2x2 at the last stage: train-mode BN over a 1x1 map sees only B=2 values per channel,
    # and through 79 blocks (L) that blew the stem gradient up to 1e38 / NaN at 32 px (measured).
    size = max(32, 2 * model.spec.total_stride)
    x = torch.randn(2, 1, size, size)
    y = model(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


def test_registry_lists_the_paper_models_and_the_small_ones() -> None:
    names = list_models()
    assert set(PAPER_MODELS) == set(PARAMS) and set(PAPER_MODELS) <= set(names)
    assert {"efficientnetv2_mini", "efficientnetv2_pico"} <= set(names)
    assert list_models("efficientnetv2_b*") == [
        "efficientnetv2_b0",
        "efficientnetv2_b1",
        "efficientnetv2_b2",
        "efficientnetv2_b3",
    ]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_pinned_parameter_count(name: str) -> None:
    assert count_params(_meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_macs_at_eval_size_match_reference(name: str) -> None:
    ref, size = MACS[name]
    assert get_card(name).eval_size == size
    with torch.device("meta"):  # count_macs makes its input with the default device: meta here
        macs = count_macs(create_model(name), size)
    assert abs(macs - ref) / ref < 0.02, f"{name}: {macs / 1e9:.3f}G vs {ref / 1e9}G"


def test_mac_count_on_meta_equals_count_on_cpu() -> None:
    with torch.device("meta"):
        meta = count_macs(create_model("efficientnetv2_b0"), 224)
    assert meta == count_macs(create_model("efficientnetv2_b0"), 224) == 718_086_176


def test_golden_output_of_pico() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico").eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert y.shape == (2, 1000) and pre.shape == (2, 64)
    expected = torch.tensor(
        [
            [-0.0030534, 0.0117180, 0.0050660, -0.0031885, 0.0078347],
            [-0.0026079, 0.0105029, 0.0050910, -0.0028199, 0.0043394],
        ]
    )
    torch.testing.assert_close(y[:, [0, 1, 2, 500, 999]], expected, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(
        pre[:, :4],
        torch.tensor([[0.025044, -0.017428, 0.036653, 0.065483], [0.010224, -0.022537, 0.028236, 0.046633]]),
        atol=2e-6,
        rtol=1e-4,
    )
    assert y.argmax(1).tolist() == [802, 802]


# -- spec round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_registered_specs_round_trip(name: str, tmp_path) -> None:
    card = get_card(name)
    spec = card.spec
    assert ArchSpec.from_str(spec.to_str()) == spec
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    spec.save(tmp_path / "spec.json")
    assert ArchSpec.load(tmp_path / "spec.json") == spec
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card


def test_spec_string_of_b0_reads_like_the_table() -> None:
    assert get_card("efficientnetv2_b0").spec.to_str() == (
        "stem32/s2|fused_e1_k3_s1_se0_c16_r1|fused_e4_k3_s2_se0_c32_r2|fused_e4_k3_s2_se0_c48_r2|"
        "mbconv_e4_k3_s2_se0.25_c96_r3|mbconv_e6_k3_s1_se0.25_c112_r5|mbconv_e6_k3_s2_se0.25_c192_r8|head1280"
    )
    assert get_card("efficientnetv2_b2").spec.to_str().endswith("|head1280|w1.1|d1.2")


_ratio = st.one_of(st.sampled_from([0.0, 0.25, 0.5]), st.floats(0.0, 0.99, allow_nan=False, exclude_max=True))
_stages = st.builds(
    Stage,
    block=st.sampled_from(BLOCK_TYPES),
    expand=st.integers(1, 8),
    kernel=st.sampled_from([1, 3, 5, 7]),
    stride=st.sampled_from([1, 2]),
    se=_ratio,
    out=st.integers(1, 1024),
    repeats=st.integers(1, 30),
)
_mult = st.one_of(st.sampled_from([1.0, 1.1, 1.2, 0.5, 2.0]), st.floats(0.01, 16.0, allow_nan=False))
_specs = st.builds(
    ArchSpec,
    stages=st.lists(_stages, min_size=1, max_size=8).map(tuple),
    stem=st.integers(1, 128),
    head=st.integers(1, 4096),
    stem_stride=st.sampled_from([1, 2]),
    width_mult=_mult,
    depth_mult=_mult,
    bn_eps=st.sampled_from([1e-3, 1e-5]),
    bn_momentum=st.sampled_from([0.1, 0.01]),
    padding=st.sampled_from(PADDINGS),
    norm=st.sampled_from(NORMS),
    act=st.sampled_from(ACTS),
)


@settings(max_examples=100, deadline=None)
@given(spec=_specs)
def test_any_valid_spec_round_trips(spec: ArchSpec) -> None:
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    # The compact string carries the architecture rows and multipliers, not BN settings, padding or
    # the technique options.
    plain = replace(spec, bn_eps=1e-3, bn_momentum=0.1, padding="symmetric", norm="bn", act="silu")
    assert ArchSpec.from_str(spec.to_str()) == plain
    assert all(Stage.from_str(s.to_str()) == s for s in spec.stages)


def test_spec_file_round_trip_builds_the_same_model(tmp_path) -> None:
    path = tmp_path / "my_b0.json"
    get_card("efficientnetv2_b0").spec.save(path)
    model = _meta_model(str(path))
    assert model.card.name == "my_b0"
    assert model.spec == get_card("efficientnetv2_b0").spec
    assert count_params(model) == PARAMS["efficientnetv2_b0"]


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"stage\.stride: expected 1 or 2, got 3"):
        Stage(block="fused", expand=1, stride=3, out=8, repeats=1)
    with pytest.raises(SpecError, match=r"unknown key 'colour'; valid: .*stages"):
        ArchSpec.from_dict({"stages": [], "stem": 8, "colour": 1})
    with pytest.raises(SpecError, match=r"stage string 'fused_e1': expected"):
        Stage.from_str("fused_e1")


# -- create_model errors and the model API ----------------------------------------------------------


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown model 'efficientnetv2_q'.*valid: efficientnetv2_b0, ") as exc:
        create_model("efficientnetv2_q")
    assert all(n in str(exc.value) for n in list_models())


def test_bad_override_lists_the_valid_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown override 'widht_mult'; valid: .*width_mult"):
        create_model("efficientnetv2_pico", widht_mult=2.0)
    with pytest.raises(SpecError, match=r"spec\.padding: 'same' is not one of symmetric, tf_same"):
        create_model("efficientnetv2_pico", padding="same")


def test_forward_features_head_and_reset_classifier() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnetv2_b0", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1280, 2, 2)  # (B, head, H/32, W/32)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats.mean((2, 3)))
        torch.testing.assert_close(model(x), model.classifier(pre))
        model.reset_classifier(5)
        assert model.num_classes == 5 and model(x).shape == (2, 5)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
    pico = create_model("efficientnetv2_pico")
    assert pico.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)  # stem stride 1


def test_stochastic_depth_grows_linearly_and_can_be_reset() -> None:
    model = create_model("efficientnetv2_s")
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == model.spec.num_blocks == 40
    skip = [(i, b) for i, b in enumerate(blocks) if b.has_skip]
    assert len(skip) == 40 - 6 + 1  # every block except a stage's first; S's first stage keeps 24 -> 24
    for i, b in skip:
        assert b.drop_path.p == pytest.approx(0.2 * i / 40)
    assert all(isinstance(b.drop_path, torch.nn.Identity) for b in blocks if not b.has_skip)
    model.set_drop_path_rate(0.5)
    assert model.drop_path_rate == 0.5
    for i, b in skip:
        assert b.drop_path.p == pytest.approx(0.5 * i / 40)
    assert skip[-1][1].drop_path.p == pytest.approx(0.5 * 39 / 40)


def test_set_drop_rate_changes_the_classifier_dropout() -> None:
    model = create_model("efficientnetv2_pico", drop_rate=0.1)
    assert model.drop_rate == 0.1
    model.set_drop_rate(0.3)
    assert model.dropout.p == 0.3


def test_tf_same_padding_differs_only_where_tf_pads_asymmetrically() -> None:
    torch.manual_seed(0)
    sym = create_model("efficientnetv2_pico").eval()
    torch.manual_seed(0)
    tf = create_model("efficientnetv2_pico", padding="tf_same").eval()
    assert count_params(sym) == count_params(tf)
    assert sum(isinstance(m, Conv2dSame) for m in tf.modules()) == 2  # the two stride-2 convs
    sd_sym, sd_tf = sym.state_dict(), tf.state_dict()
    assert sd_sym.keys() == sd_tf.keys() and all(torch.equal(sd_sym[k], sd_tf[k]) for k in sd_sym)
    with torch.no_grad():
        even = torch.randn(2, 3, 32, 32)  # TF pads (0, 1) at stride 2: outputs differ
        assert (sym(even) - tf(even)).abs().max() > 1e-4
        odd = torch.randn(2, 3, 33, 33)  # 33 -> 17 -> 9: TF pads (1, 1) everywhere, same as symmetric
        torch.testing.assert_close(sym(odd), tf(odd), atol=0, rtol=0)


def test_paper_models_use_official_bn_and_rounding() -> None:
    b3 = get_card("efficientnetv2_b3").spec
    assert [s.out for s in b3.scaled_stages()] == [16, 40, 56, 112, 136, 232]
    assert [s.repeats for s in b3.scaled_stages()] == [2, 3, 3, 5, 7, 12]
    assert (b3.stem_channels, b3.head_channels) == (40, 1536)
    model = create_model("efficientnetv2_pico")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.1 for m in bns)
    assert math.isclose(get_card("efficientnetv2_s").drop_path, 0.2)


# -- technique options: activation (SAT) and dual BN (AdvProp) ------------------------------------

OPTION_MODELS = ("efficientnetv2_pico", "efficientnetv2_mini")  # small and fast; both have SE blocks


def _step(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    """One train-mode forward + backward at 32 px, batch 2; returns the output."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    y = model(torch.randn(2, model.in_chans, 32, 32))
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    return y


def _assert_grads(model: torch.nn.Module, names: set[str], what: str) -> None:
    for pname, p in model.named_parameters():
        if pname in names:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{what}: {pname} got no gradient"
            assert p.grad.abs().sum() > 0, f"{what}: {pname} got an all-zero gradient"
        else:
            assert p.grad is None, f"{what}: {pname} is off the active path but got a gradient"


def test_option_names_match_the_layers_blocks_build() -> None:
    assert tuple(ACT_LAYERS) == ACTS and tuple(NORM_LAYERS) == NORMS


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name", OPTION_MODELS)
def test_every_activation_is_used_everywhere_and_trains(name: str, act: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, act=act, drop_rate=0.0, drop_path_rate=0.0)
    plain = create_model(name, num_classes=5)
    cls = type(ACT_LAYERS[act]())
    n_act = sum(isinstance(m, torch.nn.SiLU) for m in plain.modules())
    assert n_act > 0 and sum(type(m) is cls for m in model.modules()) == n_act  # SE's act included
    assert sum(isinstance(m, torch.nn.SiLU) for m in model.modules()) == (n_act if act == "silu" else 0)
    assert model.state_dict().keys() == plain.state_dict().keys() and count_params(model) == count_params(plain)
    called = []  # each activation module really runs (a forward calling F.silu directly would not)
    for m in model.modules():
        if type(m) is cls:
            m.register_forward_hook(lambda mod, args, out: called.append(mod))
    _step(model)
    assert len(called) == len({id(m) for m in called}) == n_act
    _assert_grads(model, {n for n, _ in model.named_parameters()}, f"{name} act={act}")


def test_default_options_are_todays_model_bit_for_bit() -> None:
    torch.manual_seed(0)
    default = create_model("efficientnetv2_pico")
    torch.manual_seed(0)
    explicit = create_model("efficientnetv2_pico", act="silu", norm="bn")
    assert default.spec == explicit.spec and "norm" not in default.spec.to_dict()
    assert all(type(m) is torch.nn.BatchNorm2d for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(_step(default), _step(explicit), atol=0, rtol=0)


def _bn_params(model: torch.nn.Module, aux: bool) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".bn." in f".{n}" and (".aux." in n) == aux}


@pytest.mark.parametrize("name", OPTION_MODELS)
def test_dual_bn_adds_an_aux_bn_beside_each_main_bn(name: str) -> None:
    plain, dual = _meta_model(name), _meta_model(name, norm="dual_bn")
    bns = [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert count_params(dual) == count_params(plain) + sum(m.weight.numel() + m.bias.numel() for m in bns)
    assert sum(isinstance(m, DualBatchNorm2d) for m in dual.modules()) == len(bns)
    # Main BN keeps the plain keys, so plain weights load into it; aux sits at <bn>.aux.<tensor>.
    keys, dual_keys = plain.state_dict().keys(), dual.state_dict().keys()
    extra = [k for k in dual_keys if k not in keys]
    assert set(keys) <= set(dual_keys) and len(extra) == 5 * len(bns)
    assert all(k.replace(".bn.aux.", ".bn.") in keys for k in extra)


@pytest.mark.parametrize("name", OPTION_MODELS)
def test_dual_bn_routes_through_main_or_aux(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, norm="dual_bn", num_classes=5, drop_rate=0.0, drop_path_rate=0.0)
    dual = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    everything = {n for n, _ in model.named_parameters()}

    def stats() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([m.running_mean.clone() for m in dual], [m.aux.running_mean.clone() for m in dual])

    main0, aux0 = stats()
    _step(model)  # main mode (the default): clean images
    _assert_grads(model, everything - _bn_params(model, aux=True), f"{name} main")
    main1, aux1 = stats()
    assert all(not torch.equal(a, b) for a, b in zip(main0, main1)) and all(map(torch.equal, aux0, aux1))

    with model.bn_mode("aux"):  # adversarial images: the aux BNs normalise and update
        assert all(m.use_aux for m in dual)
        _step(model, seed=2)
    assert not any(m.use_aux for m in dual)  # the context restores main
    _assert_grads(model, everything - _bn_params(model, aux=False), f"{name} aux")
    main2, aux2 = stats()
    assert all(map(torch.equal, main1, main2)) and all(not torch.equal(a, b) for a, b in zip(aux1, aux2))

    model.set_bn_mode("aux")
    assert all(m.use_aux for m in dual)
    model.set_bn_mode("main")
    assert not any(m.use_aux for m in dual)


def test_plain_weights_load_into_dual_bn_and_back() -> None:
    torch.manual_seed(0)
    plain = create_model("efficientnetv2_pico").train()
    _step(plain)  # non-trivial running stats
    plain.eval()
    dual = create_model("efficientnetv2_pico", norm="dual_bn").eval()
    state = plain.state_dict()
    missing, unexpected = dual.load_state_dict(state, strict=False)
    assert missing and all(".aux." in k for k in missing) and not unexpected
    dual.load_state_dict(add_aux_bn_state(state, dual))  # strict: aux filled from main
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = plain(x)
        torch.testing.assert_close(dual(x), ref, atol=0, rtol=0)
        with dual.bn_mode("aux"):
            torch.testing.assert_close(dual(x), ref, atol=0, rtol=0)  # aux is a copy of main
    # init_aux_from_main does the same on a built model; drop_aux_bn_state gives back the plain model.
    fresh = create_model("efficientnetv2_pico", norm="dual_bn").eval()
    fresh.load_state_dict(state, strict=False)
    assert init_aux_from_main(fresh) == count_bn(plain)
    with torch.no_grad(), fresh.bn_mode("aux"):
        torch.testing.assert_close(fresh(x), ref, atol=0, rtol=0)
    back = create_model("efficientnetv2_pico").eval()
    back.load_state_dict(drop_aux_bn_state(dual.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(back(x), ref, atol=0, rtol=0)


def test_fold_bn_folds_the_main_bn_of_a_dual_bn_model() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico", norm="dual_bn", act="gelu")
    _step(model)
    with model.bn_mode("aux"):
        _step(model)  # main and aux stats now differ
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    folded = fold_bn(model)
    assert count_bn(folded) == 0 and folded.folded_bn == count_bn(create_model("efficientnetv2_pico"))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    model.set_bn_mode("aux")
    with pytest.raises(UsageError, match=r"fold_bn: the model is in aux BN mode"):
        fold_bn(model)


def test_options_travel_with_the_spec_and_old_dicts_still_load(tmp_path) -> None:
    card = get_card("efficientnetv2_pico")
    old = card.spec.to_dict()
    assert "norm" not in old and "act" not in old  # defaults leave plain dicts as they were
    assert ArchSpec.from_dict(old) == card.spec
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico", norm="dual_bn", act="softplus", num_classes=4)
    d = json.loads(json.dumps(model.spec.to_dict()))
    assert (d["norm"], d["act"]) == ("dual_bn", "softplus")
    # What inference does with a checkpoint's recorded spec: the same variant, strict load.
    rebuilt = EfficientNetV2(ArchSpec.from_dict(d), num_classes=4)
    rebuilt.load_state_dict(model.state_dict())
    assert sum(isinstance(m, torch.nn.Softplus) for m in rebuilt.modules()) > 0
    variant = replace(card, spec=model.spec)
    assert ModelCard.from_dict(json.loads(json.dumps(variant.to_dict()))) == variant
    model.spec.save(tmp_path / "sat.json")
    assert any(isinstance(m, DualBatchNorm2d) for m in _meta_model(str(tmp_path / "sat.json")).modules())


def test_bad_option_values_name_the_option_and_the_valid_ones() -> None:
    with pytest.raises(SpecError, match=r"^spec\.act: 'swish' is not one of silu, gelu, softplus, elu, relu$"):
        create_model("efficientnetv2_pico", act="swish")
    with pytest.raises(SpecError, match=r"^spec\.norm: 'gn' is not one of bn, dual_bn$"):
        create_model("efficientnetv2_pico", norm="gn")
    with pytest.raises(SpecError, match=r"spec\.norm: 'dualbn'"):
        ArchSpec.from_dict({**get_card("efficientnetv2_pico").spec.to_dict(), "norm": "dualbn"})
    with pytest.raises(UsageError, match=r"^bn mode: 'adv' is not one of main, aux$"):
        create_model("efficientnetv2_pico", norm="dual_bn").set_bn_mode("adv")
    with pytest.raises(UsageError, match=r"no DualBatchNorm2d \(build it with norm='dual_bn'\)"):
        create_model("efficientnetv2_pico").set_bn_mode("aux")
    create_model("efficientnetv2_pico").set_bn_mode("main")  # main on a plain model: nothing to switch


def test_the_demo_model_is_the_search_accuracy_pick():
    # benchmarks/RESULTS.md, "Training-aware search on Fashion-MNIST": trial 84, 241,912 params at 10
    # classes and 1 channel, genotype M1k3x2 F1k3x1+se F4k3x1 M1k3x1
    from effv2.cli.demo import DEMO_MODEL
    from effv2.search.space import genotype

    card = get_card(DEMO_MODEL)
    assert DEMO_MODEL == "efficientnetv2_fmnist" and card.train_size == card.eval_size == 28
    assert genotype(card.spec) == "M1k3x2 F1k3x1+se F4k3x1 M1k3x1"
    assert card.spec.to_str() == (
        "stem24/s2|mbconv_e1_k3_s1_se0_c24_r2|fused_e1_k3_s2_se0.25_c48_r1|fused_e4_k3_s2_se0_c96_r1"
        "|mbconv_e1_k3_s1_se0_c160_r1|head640"
    )
    model = create_model(DEMO_MODEL, num_classes=10, in_chans=1)
    assert sum(p.numel() for p in model.parameters()) == 241_912
