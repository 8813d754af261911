"""features_only: timm-style feature maps and feature_info across the registry."""

from __future__ import annotations

import pytest
import torch

from effv2.models import create_model, list_models

pytestmark = pytest.mark.usefixtures("one_thread")
FORWARD = ("efficientnetv2_pico", "efficientnetv2_mini", "efficientnetv2_b0", "efficientnetv2_s")


@pytest.mark.parametrize("name", list_models())
def test_feature_shapes_and_info(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        full = create_model(name, num_classes=10)
    info = full.feature_info
    reds = info.reduction()
    assert reds == sorted(set(reds)), reds
    if full.spec.stem_stride == 2 and full.spec.total_stride == 32:
        assert reds == [2, 4, 8, 16, 32]  # timm's EfficientNet feature points; 1..4 are stride 4/8/16/32
    if name not in FORWARD:  # forward passes of the big ones cost seconds even on meta; the info is checked above
        return
    size = 64
    with torch.device("meta"):
        feat = create_model(name, features_only=True).eval()
        outs = feat(torch.empty(2, 3, size, size))
    assert isinstance(outs, list) and len(outs) == len(info)
    for o, d in zip(outs, info):
        assert tuple(o.shape) == (2, d["num_chs"], -(-size // d["reduction"]), -(-size // d["reduction"]))
    assert feat.feature_info.channels() == info.channels()


def test_out_indices_and_forward_features_equality() -> None:
    torch.manual_seed(0)
    full = create_model("efficientnetv2_b0", num_classes=10).eval()
    feat = create_model("efficientnetv2_b0", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    missing, unexpected = feat.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.split(".")[0] in ("head", "classifier") for k in unexpected)
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = feat(x)
        assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
        # the last feature point is the head conv's input
        torch.testing.assert_close(full.head(outs[-1]), full.forward_features(x))
        torch.testing.assert_close(full.forward_intermediates(x)[1:], outs)


def test_negative_and_bad_out_indices() -> None:
    m = create_model("efficientnetv2_pico", features_only=True, out_indices=(-1,))
    assert m.feature_info.reduction() == [4] and len(m.blocks) == 3
    m = create_model("efficientnetv2_pico", features_only=True, out_indices=(0,))
    assert len(m.blocks) == 1 and not any(k.startswith("head") for k in m.state_dict())
    with pytest.raises(ValueError, match="out_indices"):
        create_model("efficientnetv2_pico", features_only=True, out_indices=(7,))
    with pytest.raises(ValueError, match="out_indices"):
        create_model("efficientnetv2_pico", out_indices=(0,))
