"""Preprocessing travels with converted weights: the source's DataConfig is recorded on conversion,
and `effv2 eval` applies it exactly as torchvision does (issue 12 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inference_helpers import randomize_bn, write_images
from PIL import Image

from effv2.cli.main import main
from effv2.inference.data_config import DataConfig
from effv2.models.convert import resolve_source, source_data_config

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_source_data_config_is_what_the_libraries_publish() -> None:
    import timm
    import torchvision

    b0 = source_data_config(resolve_source("timm", "tf_efficientnetv2_b0"))
    assert b0 == DataConfig(224, 0.875, "bicubic", *IMAGENET, "center")
    # timm's own resolution of the same model's eval config agrees field by field
    model = timm.create_model("tf_efficientnetv2_b0", pretrained=False, num_classes=2)
    ref = timm.data.resolve_data_config({}, model=model, use_test_size=True)
    assert (ref["input_size"][-1], ref["crop_pct"], ref["interpolation"], ref["crop_mode"]) == (
        224,
        0.875,
        "bicubic",
        "center",
    )
    assert b0.resize_size == 256  # floor(224 / 0.875), timm's scale_size
    b3 = source_data_config(resolve_source("timm", "tf_efficientnetv2_b3"))
    assert (b3.size, b3.crop_fraction, b3.crop_mode, b3.mean) == (300, 0.9, "squash", (0.5, 0.5, 0.5))
    assert b3.resize_transform()(torch.zeros(3, 50, 90, dtype=torch.uint8)).shape == (3, 300, 300)
    l_tv = source_data_config(resolve_source("torchvision", "efficientnet_v2_l"))
    assert l_tv == DataConfig(480, 1.0, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center")
    # a crop / resize pair such as torchvision's 224 / 232 resizes to 232, not 231
    assert DataConfig(224, 224 / 232).resize_size == 232
    w = torchvision.models.EfficientNet_V2_S_Weights.DEFAULT
    s = source_data_config(resolve_source("torchvision", "efficientnet_v2_s"), weights=w)
    img = torch.randint(0, 256, (3, 301, 417), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.from_uint8(img), w.transforms()(img), atol=1e-6, rtol=0)


def test_squash_with_a_crop_is_timms_squash() -> None:
    dc = DataConfig(20, 0.8, "bilinear", (0.5,), (0.5,), "squash")
    img = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    from torchvision.transforms import functional as F

    want = F.center_crop(F.resize(img, [25, 25], antialias=True), [20])  # both sides to floor(20 / 0.8)
    torch.testing.assert_close(dc.resize_transform()(img), want, atol=0, rtol=0)


def _folder(root: Path) -> tuple[list[Path], list[int]]:
    """A split folder: train/ (tiny, unused here) and test/ with images of odd sizes in classes 0 and 1."""
    paths, labels = [], []
    for k, sizes in enumerate((((300, 420), (390, 400)), ((410, 380), (384, 512)))):
        write_images(root / "train" / str(k), sizes=((20, 20), (20, 24)))
        paths += write_images(root / "test" / str(k), sizes=sizes)
        labels += [k] * len(sizes)
    return paths, labels


def test_eval_of_a_converted_torchvision_model_is_torchvisions(tmp_path, capsys) -> None:
    """`effv2 eval` on a folder: the same loss and top-1 as weights.transforms() + the torchvision model,
    whether the torchvision file is given directly (--pretrained) or converted first (--checkpoint)."""
    import torchvision
    from torchvision.transforms.functional import pil_to_tensor

    torch.manual_seed(0)
    tv = randomize_bn(torchvision.models.efficientnet_v2_s(weights=None, num_classes=2)).eval()
    src = tmp_path / "efficientnet_v2_s.pth"
    torch.save(tv.state_dict(), src)
    paths, labels = _folder(tmp_path / "data")
    tf = torchvision.models.EfficientNet_V2_S_Weights.DEFAULT.transforms()
    with torch.no_grad():
        logits = tv(torch.stack([tf(pil_to_tensor(Image.open(p).convert("RGB"))) for p in paths]))
    y = torch.tensor(labels)
    want_loss = float(torch.nn.functional.cross_entropy(logits, y))
    want_top1 = 100 * float((logits.argmax(1) == y).float().mean())

    conv = tmp_path / "s.safetensors"
    convert = ["convert", "--from", "torchvision", str(src), "--model", "efficientnet_v2_s", "--out", str(conv)]
    assert main([*convert, "--check-size", "0"]) == 0
    capsys.readouterr()
    for which in (["--pretrained", str(src)], ["--checkpoint", str(conv)]):
        args = ["eval", *which, "--data", str(tmp_path / "data"), "--json", "--device", "cpu", "--amp", "none"]
        assert main(args) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert res["n"] == len(paths)
        assert abs(res["loss"] - want_loss) < 1e-4 and res["top1"] == pytest.approx(want_top1)
        assert DataConfig.from_dict(res["data_config"]) == DataConfig(384, 1.0, "bilinear", *IMAGENET)
