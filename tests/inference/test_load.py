"""effv2.load on every kind of path, model folders, and one preprocessing definition."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import effv2
from effv2.data.augment import file_eval_transform, norm_stats
from effv2.data.decode import decode_rgb
from effv2.errors import UsageError
from effv2.inference.data_config import DataConfig
from effv2.inference.folder import write_model_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_load_every_kind_of_path(pico_run, images, tmp_path) -> None:
    folder = write_model_folder(pico_run, tmp_path / "folder")
    ckpt = pico_run / "checkpoints" / "best.safetensors"
    x = torch.stack([effv2.load(ckpt).data_config.load_file(p) for p in images])
    outs = []
    for path in (pico_run, ckpt, folder, folder / "model.safetensors"):
        m = effv2.load(path)
        assert not m.training and m.classes[:2] == ["ant", "bee"]
        assert m.data_config == DataConfig.effv2_eval(32, (0.5,), (0.5,))
        with torch.no_grad():
            outs.append(m(x))
        # the PIL transform is the file path's preprocessing
        with Image.open(images[0]) as im:
            torch.testing.assert_close(m.transform(im), x[0], atol=0, rtol=0)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=0, rtol=0)
    with pytest.raises(UsageError):
        effv2.load(tmp_path / "missing")


def test_model_folder_contents(pico_run, tmp_path) -> None:
    folder = write_model_folder(pico_run, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format"] == "effv2-model-folder" and cfg["weights"] == "ema"
    assert cfg["classes"][0] == "ant" and cfg["spec"]["stem_stride"] == 1 and cfg["num_classes"] == 5
    assert cfg["data_config"] == {
        "size": 32,
        "crop_fraction": 0.875,
        "interpolation": "bilinear",
        "mean": [0.5],
        "std": [0.5],
        "crop_mode": "center",
    }
    readme = (folder / "README.md").read_text()
    for text in ("efficientnetv2_pico", "top1: 42.5", "toy", "torch", effv2.__version__, "crop fraction 0.875"):
        assert text in readme, text
    write_model_folder(folder, folder)  # a model folder rewrites itself
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an \\(empty\\) model folder"):
        write_model_folder(pico_run, tmp_path / "busy")


def test_data_config_is_the_eval_loaders(images) -> None:
    dc = DataConfig.effv2_eval(32, (0.5,), (0.5,))
    img = decode_rgb(str(images[0]))
    scale, shift = norm_stats((0.5,), (0.5,), 3, torch.device("cpu"))
    want = file_eval_transform(32)(img)[None].float() * scale - shift
    torch.testing.assert_close(dc.load_file(images[0])[None], want, atol=0, rtol=0)
    assert DataConfig.effv2_eval(384).crop_mode == "squash" and dc.with_size(320).crop_fraction == 1.0
    assert DataConfig.from_dict(dc.to_dict()) == dc
    with pytest.raises(UsageError):
        DataConfig(32, crop_fraction=1.5)


def test_predict_matches_torchvision(tmp_path, capsys) -> None:
    """A converted torchvision efficientnet_v2_s: effv2 predict == weights.transforms() + the torchvision model."""
    import torchvision
    from inference_helpers import randomize_bn, write_images
    from torchvision.transforms.functional import pil_to_tensor

    from effv2.cli.main import main
    from effv2.io.weights import save_weights
    from effv2.models.convert import convert

    torch.manual_seed(0)
    tv = randomize_bn(torchvision.models.efficientnet_v2_s(weights=None)).eval()
    path = tmp_path / "s.safetensors"
    save_weights(convert("torchvision", tv), path)
    images = write_images(tmp_path / "img", sizes=((300, 420), (400, 390)))
    tf = torchvision.models.EfficientNet_V2_S_Weights.DEFAULT.transforms()
    with torch.no_grad():
        ref = tv(torch.stack([tf(pil_to_tensor(Image.open(p).convert("RGB"))) for p in images])).softmax(1)
    capsys.readouterr()
    assert (
        main(["predict", "--checkpoint", str(path), *map(str, images), "--top-k", "3", "--json", "--device", "cpu"])
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    for r, row in zip(got, ref):
        assert r["top"][0]["index"] == int(row.argmax())
        for p in r["top"]:
            assert abs(p["prob"] - float(row[p["index"]])) < 1e-4
