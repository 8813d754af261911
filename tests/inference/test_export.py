"""checkpoint -> export -> predictions equal, per format; the check at export; tf_same padding."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from inference_helpers import make_run

from effv2.cli.main import main
from effv2.inference.export import ExportMismatch, export_model

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnx / onnxruntime not installed (pip install 'effv2[export]')")
FORMATS = [
    ("safetensors", "model.safetensors"),
    ("torch-export", "model.pt2"),
    pytest.param("onnx", "model.onnx", marks=needs_ort),
    ("folder", "folder"),
]


def _predict(capsys, path, images) -> list[dict]:
    capsys.readouterr()
    assert (
        main(["predict", "--checkpoint", str(path), *map(str, images), "--top-k", "5", "--json", "--device", "cpu"])
        == 0
    )
    captured = capsys.readouterr()
    assert "img/s" in captured.err  # throughput
    return json.loads(captured.out)


def _probs(pred: list[dict]) -> torch.Tensor:
    return torch.tensor([[p["prob"] for p in sorted(r["top"], key=lambda p: p["index"])] for r in pred])


@pytest.mark.parametrize(("fmt", "name"), FORMATS)
def test_export_then_predict_matches_checkpoint(fmt, name, pico_run, images, tmp_path, capsys) -> None:
    out = tmp_path / name
    args = ["export", "--checkpoint", str(pico_run), "--format", fmt, "--out", str(out), "--dynamic-batch", "--json"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["weights"] == "ema" and rep["max_abs_diff"] <= 1e-4 and rep["top1_agree"] == rep["n"]
    assert rep["folded_bn"] > 0 and rep["batch_sizes"] == [4, 1]
    ref, got = _predict(capsys, pico_run, images), _predict(capsys, out, images)
    assert [r["top"][0]["class"] for r in got] == [r["top"][0]["class"] for r in ref]
    torch.testing.assert_close(_probs(got), _probs(ref), atol=2e-6, rtol=0)


@needs_ort
def test_onnx_tf_same_padding_and_dynamic_batch(tmp_path) -> None:
    import onnxruntime as ort

    run = make_run(tmp_path, padding="tf_same")
    out = tmp_path / "same.onnx"
    rep = export_model(run, "onnx", out, dynamic_batch=True, size=40)
    assert rep.ok and rep.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for b in (1, 3, 7):
        assert sess.run(None, {"input": torch.zeros(b, 3, 40, 40).numpy()})[0].shape == (b, 5)
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["effv2_config"])
    assert meta["data_config"]["size"] == 40 and meta["classes"][0] == "ant"


def test_a_grayscale_model_saved_from_an_rgb_card_exports(tmp_path) -> None:
    # pico's card has 3-channel mean/std; built with in_chans=1 and saved by save_weights, the file
    # used to fail every export ("mean/std need 1 or 1 values"): the statistics now fit the channels
    from effv2.io.weights import save_weights
    from effv2.models import create_model, get_card
    from effv2.training.inference import load_for_inference

    assert len(get_card("efficientnetv2_pico").mean) == 3
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico", num_classes=4, in_chans=1).eval()
    src = tmp_path / "gray.safetensors"
    save_weights(model, src)
    loaded = load_for_inference(src)
    card_mean = get_card("efficientnetv2_pico").mean
    assert loaded.mean == (sum(card_mean) / 3,) and len(loaded.data_config.std) == 1
    rep = export_model(src, "torch-export", tmp_path / "gray.pt2")
    assert rep.ok and rep.max_abs_diff <= 1e-4


def test_check_fails_above_tolerance(pico_run, tmp_path, capsys) -> None:
    with pytest.raises(ExportMismatch, match="max \\|logit diff\\|"):
        export_model(pico_run, "safetensors", tmp_path / "a.safetensors", tol=-1.0)
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(pico_run),
                "--format",
                "torch-export",
                "--out",
                str(tmp_path / "b.pt2"),
                "--tol=-1",
            ]
        )
        == 1
    )
    assert "tolerance" in capsys.readouterr().err


def test_export_errors(pico_run, tmp_path, capsys) -> None:
    assert (
        main(["export", "--checkpoint", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
        == 2
    )
    assert main(["export", "--checkpoint", str(pico_run), "--format", "safetensors", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
