"""predict sees a file exactly as eval does (alpha, 16-bit, EXIF, JPEG), and checkpoint state tuples load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import effv2
from effv2.data.imagesets import FileImageSet
from effv2.data.loader import eval_batches
from effv2.inference.data_config import DataConfig
from effv2.io.checkpoint import save_checkpoint
from effv2.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _odd_files(folder) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    rgba = (rng.random((37, 45, 4)) * 255).astype("uint8")
    Image.fromarray(rgba, "RGBA").save(p := folder / "alpha.png")
    paths.append(p)
    g16 = (rng.random((41, 29)) * 65535).astype("uint16")
    Image.fromarray(g16).save(p := folder / "gray16.png")
    paths.append(p)
    rgb = (rng.random((30, 50, 3)) * 255).astype("uint8")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(rgb).save(p := folder / "rotated.jpg", quality=90, exif=exif)
    paths.append(p)
    Image.fromarray(rgb[:, :, 0], "L").save(p := folder / "gray.jpg", quality=90)
    paths.append(p)
    return [str(p) for p in paths]


@pytest.mark.parametrize("size", [32, 320])
def test_predict_preprocessing_is_the_eval_loaders(tmp_path, size) -> None:
    paths = _odd_files(tmp_path)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    dc = DataConfig.effv2_eval(size, mean, std)
    (batch,) = list(
        eval_batches(FileImageSet(paths, [0] * len(paths)), batch_size=8, image_size=size, mean=mean, std=std)
    )
    assert not batch.bad
    got = torch.stack([dc.load_file(p) for p in paths])
    torch.testing.assert_close(got, batch.x, atol=0, rtol=0)
    with Image.open(paths[2]) as im:  # the PIL transform of effv2.load too (EXIF applied)
        torch.testing.assert_close(dc.pil_transform()(im), batch.x[2], atol=0, rtol=0)


def test_checkpoint_state_with_tuples_loads(tmp_path) -> None:
    """save_checkpoint stores tuples tagged; the loader decodes them (mean=(0.5,) is a tuple again)."""
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico", num_classes=3)
    path = tmp_path / "c.safetensors"
    state = {"classes": ("a", "b", "c"), "eval_size": 40, "mean": (0.5,), "std": (0.25,)}
    save_checkpoint(path, {"model": model}, state=state)
    m = effv2.load(path)
    assert m.classes == ["a", "b", "c"]
    assert m.data_config == DataConfig.effv2_eval(40, (0.5,), (0.25,))


def test_export_checks_on_given_images(pico_run, tmp_path, capsys) -> None:
    import json

    from effv2.cli.main import main

    paths = _odd_files(tmp_path)
    out = tmp_path / "m.safetensors"
    args = ["export", "--checkpoint", str(pico_run), "--format", "safetensors", "--out", str(out), "--json"]
    assert main([*args, "--check-images", *paths]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == len(paths) and rep["top1_agree"] == len(paths) and rep["max_abs_diff"] <= 1e-4
