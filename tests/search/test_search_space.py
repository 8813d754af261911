"""The search space as data: size, table, sampling, round trips, files, and every sample builds."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effv2.errors import UsageError
from effv2.models import create_model, get_card
from effv2.models.spec import ArchSpec
from effv2.search.space import default_layer_range, genotype, get_space, load_space, space_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mini_space_takes_channels_and_strides_from_the_backbone() -> None:
    space = get_space("mini")
    base = get_card("efficientnetv2_mini").spec
    assert space.base == base
    assert [(c.out, c.stride) for c in space.stages] == [(s.out, s.stride) for s in base.stages]
    for c, s in zip(space.stages, base.stages):
        assert c.block == ("mbconv", "fused") and c.kernel == (3, 5) and c.expand == (1, 4, 6)
        assert c.se == (0.0, 0.25) and s.repeats in c.layers
    assert space.contains(base)


def test_size_is_the_product_of_the_choices() -> None:
    space = get_space("pico")  # 3 stages, each 2 blocks x 2 layer counts x 2 kernels x 3 expansions x 2 SE
    assert space.size() == (2 * 2 * 2 * 3 * 2) ** 3
    table = space.to_table()
    assert "1.11e+05 architectures" in table  # 110592
    assert "MBConv,Fused" in table and "backbone row" in table and "F1k3x1" in table


def test_layer_range_is_around_the_backbone() -> None:
    assert default_layer_range(1) == (1, 2)
    assert default_layer_range(3) == (2, 3, 4)
    assert default_layer_range(15) == tuple(range(10, 21))


def test_sample_is_reproducible_and_round_trips_through_params() -> None:
    space = get_space("mini")
    a, b = space.sample(random.Random(3)), space.sample(random.Random(3))
    assert a == b and space.contains(a)
    assert space.from_params(space.to_params(a)) == a
    assert ArchSpec.from_str(a.to_str()) == a
    assert len(genotype(a).split()) == len(a.stages)


def test_space_json_round_trip_and_partial_file(tmp_path) -> None:
    space = get_space("mini")
    assert space_from_dict(json.loads(json.dumps(space.to_dict()))) == space
    f = tmp_path / "space.json"
    rows = [{"block": ["fused"]}, {"block": ["fused"], "kernel": [3]}, {}, {"se": [0.25]}]
    f.write_text(json.dumps({"name": "early-fused", "backbone": "mini", "stages": rows}))
    custom = load_space(f)
    assert custom.name == "early-fused" and custom.stages[0].block == ("fused",) and custom.stages[1].kernel == (3,)
    assert custom.stages[3].se == (0.25,) and custom.stages[2] == space.stages[2]
    assert custom.size() < space.size()


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{", "not valid JSON"),
        ('{"backbone": "mini", "oops": 1}', "unknown key 'oops'"),
        ('{"stages": []}', "'backbone'"),
        ('{"backbone": "mini", "stages": [{}]}', "1 rows given"),
        ('{"backbone": "mini", "stages": [{"kernel": [4]}, {}, {}, {}]}', "odd"),
        ('{"backbone": "mini", "stages": [{"block": ["conv"]}, {}, {}, {}]}', "'conv' is not one of"),
        ('{"backbone": "mini", "stages": [{"depth": [1]}, {}, {}, {}]}', "unknown key 'depth'"),
        ('{"backbone": "nope"}', "unknown model 'nope'"),
    ],
)
def test_bad_space_files_give_one_line_errors(tmp_path, content, needle) -> None:
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(UsageError) as e:
        load_space(f)
    assert needle in str(e.value) and "\n" not in str(e.value) and "bad.json" in str(e.value)


def test_unknown_space_name() -> None:
    with pytest.raises(UsageError, match="unknown search space 'tiny'"):
        get_space("tiny")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(["pico", "mini"]))
def test_every_sample_builds_from_its_saved_card_and_runs(tmp_path_factory, seed, name) -> None:
    space = get_space(name)
    spec = space.sample(random.Random(seed))
    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(space.card(spec, train_size=16, eval_size=16)))
    model = create_model(str(path), num_classes=10, in_chans=1).eval()
    assert model.spec == spec
    with torch.no_grad():
        out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
