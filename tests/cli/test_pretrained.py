"""`--pretrained SOURCE` for predict, export, eval and train, offline, against the libraries' own caches.

The fixtures are random-weight models saved the way each library's download leaves them: a timm
tf_efficientnetv2_b0 state_dict as ``$HF_HOME/hub/models--timm--tf_efficientnetv2_b0.in1k/snapshots/
COMMIT/model.safetensors`` (with ``refs/main``), a torchvision efficientnet_v2_s state_dict as
``$TORCH_HOME/hub/checkpoints/efficientnet_v2_s-dd5fe13b.pth``. Nothing is mocked: ``timm:NAME`` runs
``timm.create_model(pretrained=True)`` and ``torchvision:NAME`` the weights enum's ``get_state_dict``,
with the caches pointed at the fixtures and the hub offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effv2.cli.main import main
from effv2.inference.data_config import DataConfig

pytestmark = pytest.mark.usefixtures("one_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMM_REPO = "models--timm--tf_efficientnetv2_b0.in1k"
TV_FILE = "efficientnet_v2_s-dd5fe13b.pth"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    """HF_HOME and TORCH_HOME holding one random-weight model each, laid out as the libraries cache them."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("caches")
    repo = root / "hf" / "hub" / TIMM_REPO
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    torch.manual_seed(0)
    save_file(
        timm.create_model("tf_efficientnetv2_b0").state_dict(), str(repo / "snapshots" / COMMIT / "model.safetensors")
    )
    (root / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(1)
    tv = torchvision.models.efficientnet_v2_s(weights=None)
    torch.save(tv.state_dict(), root / "torch" / "hub" / "checkpoints" / TV_FILE)
    return root


@pytest.fixture
def offline(caches, monkeypatch) -> Path:
    """The caches pointed at the fixtures and the hub offline, as HF_HOME / TORCH_HOME / HF_HUB_OFFLINE do
    for a fresh process (huggingface_hub reads its variables at import, hence its constants too)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(caches / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(caches / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(caches / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return caches


def _image(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(path)
    return path


def _predict(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *args, "--json", "--device", "cpu", "--top-k", "2"]) == 0
    return json.loads(capsys.readouterr().out)


def test_timm_name_resolves_from_the_hf_cache(offline, tmp_path, capsys) -> None:
    import timm

    img = _image(tmp_path / "a.png", 230, 260, 0)
    got = _predict(capsys, "--pretrained", "timm:tf_efficientnetv2_b0", str(img))[0]["top"]
    # the same cached file loaded by timm itself, fed the input effv2 preprocesses with timm's data config
    ref = timm.create_model("tf_efficientnetv2_b0", pretrained=True).eval()
    dc = DataConfig(224, 0.875, "bicubic", *IMAGENET)
    with torch.no_grad():
        probs = ref(dc.load_file(img)[None]).softmax(1)[0]
    assert got[0]["index"] == int(probs.argmax()) and got[0]["class"] == got[0]["class"].strip()
    assert abs(got[0]["prob"] - float(probs.max())) < 1e-4
    from timm.data import ImageNetInfo

    assert got[0]["class"] == ImageNetInfo().label_descriptions()[got[0]["index"]].split(",")[0]


def test_torchvision_name_resolves_from_the_torch_hub_cache(offline, tmp_path, capsys) -> None:
    import torchvision
    from torchvision.transforms.functional import pil_to_tensor

    img = _image(tmp_path / "b.png", 400, 300, 1)
    got = _predict(capsys, "--pretrained", "torchvision:efficientnet_v2_s", str(img))[0]["top"]
    w = torchvision.models.EfficientNet_V2_S_Weights.IMAGENET1K_V1
    ref = torchvision.models.efficientnet_v2_s()
    ref.load_state_dict(torch.load(offline / "torch" / "hub" / "checkpoints" / TV_FILE, weights_only=True))
    with torch.no_grad():
        probs = ref.eval()(w.transforms()(pil_to_tensor(Image.open(img).convert("RGB")))[None]).softmax(1)[0]
    assert got[0]["index"] == int(probs.argmax()) and got[0]["class"] == w.meta["categories"][got[0]["index"]]
    assert abs(got[0]["prob"] - float(probs.max())) < 1e-4


def test_export_from_a_pretrained_source_keeps_its_preprocessing(offline, tmp_path, capsys) -> None:
    out = tmp_path / "b0.safetensors"
    args = ["export", "--pretrained", "timm:tf_efficientnetv2_b0", "--format", "safetensors", "--out", str(out)]
    assert main([*args, "--size", "64", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["max_abs_diff"] <= 1e-3 and rep["top1_agree"] == rep["n"]
    import effv2

    m = effv2.load(out)
    assert m.data_config == DataConfig(64, 0.875, "bicubic", *IMAGENET) and m.classes[0] == "tench"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("timm:resnet50", "timm model 'resnet50' is not supported"),
        ("torchvision:efficientnet_v2_s.NOPE", "valid: IMAGENET1K_V1"),
        ("timm:tf_efficientnetv2_b0.nope", "valid: tf_efficientnetv2_b0.in1k"),
        ("timm:tf_efficientnetv2_b1", "hub/models--timm--tf_efficientnetv2_b1.in1k/snapshots/COMMIT/model.safetensors"),
        ("torchvision:efficientnet_v2_m", "torch/hub/checkpoints/efficientnet_v2_m-dc08266a.pth"),
        ("no/such/weights.pth", "no such file or folder"),
    ],
)
def test_unknown_names_and_missing_caches_are_one_line(offline, tmp_path, capsys, source, expected) -> None:
    img = _image(tmp_path / "c.png", 40, 40, 2)
    capsys.readouterr()
    assert main(["predict", "--pretrained", source, str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"effv2 predict: error: --pretrained {source}") and expected in err[0], err[0]


def test_local_timm_and_torchvision_files_are_detected(tmp_path) -> None:
    import timm
    import torchvision
    from safetensors.torch import save_file

    from effv2.errors import UsageError
    from effv2.inference.pretrained import resolve_pretrained

    torch.manual_seed(0)
    save_file(timm.create_model("tf_efficientnetv2_b0", num_classes=3).state_dict(), str(tmp_path / "w.safetensors"))
    b0 = resolve_pretrained(tmp_path / "w.safetensors")
    assert (b0.kind, b0.model.spec.padding, b0.model.num_classes, b0.classes) == ("timm", "tf_same", 3, None)
    assert b0.data_config == DataConfig(224, 0.875, "bicubic", *IMAGENET)
    tv = torchvision.models.efficientnet_v2_s(weights=None, num_classes=2)
    torch.save({"model": tv.state_dict()}, tmp_path / "ckpt.pth")  # a training checkpoint wrapping the weights
    s = resolve_pretrained(tmp_path / "ckpt.pth")
    assert (s.kind, s.model.card.name, s.data_config.size) == ("torchvision", "efficientnetv2_s", 384)
    # timm's efficientnetv2_s and tf_efficientnetv2_s hold the same tensors: the file name decides
    sd = timm.create_model("efficientnetv2_s", num_classes=2).state_dict()
    save_file(sd, str(tmp_path / "weights.safetensors"))
    with pytest.raises(UsageError, match="efficientnetv2_s or tf_efficientnetv2_s"):
        resolve_pretrained(tmp_path / "weights.safetensors")
    save_file(sd, str(tmp_path / "tf_efficientnetv2_s.safetensors"))
    assert resolve_pretrained(tmp_path / "tf_efficientnetv2_s.safetensors").model.spec.padding == "tf_same"


def _folder(root: Path) -> Path:
    for k, colour in enumerate((60, 190)):
        for split, n in (("train", 8), ("val", 2)):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(np.random.default_rng(10 * k + i).normal(colour, 20, (24, 24, 3)), 0, 255)
                Image.fromarray(arr.astype("uint8")).save(root / split / f"c{k}" / f"{i}.png")
    return root


def test_fine_tuning_from_pretrained_weights_uses_their_mean_std(offline, tmp_path, capsys) -> None:
    """`train --pretrained timm:NAME` (no --model: the source's architecture) trains and evaluates
    with the source's ImageNet mean/std, and the checkpoints, config.json and model folder record it."""

    data, out = _folder(tmp_path / "data"), tmp_path / "run"
    sets = ["epochs=1", "batch_size=8", "eval_batch_size=8", "progressive.enabled=false", "progressive.max_size=32"]
    sets += ["eval_size=32", "amp=none", "num_workers=0", "ema_decay=0", "lr=1e-30", "warmup_epochs=0"]
    args = ["train", "--pretrained", "timm:tf_efficientnetv2_b0", "--data", str(data), "--out", str(out), "--quiet"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "efficientnetv2_b0" and cfg["pretrained"] == "timm:tf_efficientnetv2_b0"
    assert DataConfig.from_dict(cfg["init_data_config"]) == DataConfig(224, 0.875, "bicubic", *IMAGENET)
    import effv2

    tuned = effv2.load(out)
    assert tuned.data_config == DataConfig.effv2_eval(32, *IMAGENET)  # effv2's eval crop, the source's mean/std
    assert tuned.spec.padding == "tf_same" and tuned.classes == ["c0", "c1"]
    folder = out / "model" / "config.json"
    if folder.is_file():  # the run's model folder, when the run writes one
        assert DataConfig.from_dict(json.loads(folder.read_text())["data_config"]) == tuned.data_config
    # the run's own final evaluation equals `effv2 eval` with the recorded preprocessing
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    capsys.readouterr()
    assert (
        main(["eval", "--checkpoint", str(out), "--data", str(data), "--split", "val", "--json", "--amp", "none"]) == 0
    )
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    evals = [m for m in metrics if "loss" in m and "top1" in m]
    assert evals and abs(evals[-1]["loss"] - res["loss"]) < 1e-4


def test_init_from_a_converted_file_brings_its_mean_std(tmp_path) -> None:
    import torchvision

    from effv2.config import resolve_recipe
    from effv2.data.sources import load_source
    from effv2.io.weights import save_weights
    from effv2.models.convert import convert
    from effv2.training.api import _start_weights, run_info

    path = tmp_path / "s.safetensors"
    save_weights(convert("torchvision", torchvision.models.efficientnet_v2_s(weights=None, num_classes=2)), path)
    start = _start_weights(str(path), None)
    bundle = load_source(str(_folder(tmp_path / "data")))
    rec, _ = resolve_recipe(None, model="efficientnetv2_s", dataset=str(tmp_path / "data"), overrides=[])
    info = run_info(rec, "efficientnetv2_s", bundle, start)
    assert (info.mean, info.std) == IMAGENET
    assert run_info(rec, "efficientnetv2_s", bundle).mean == (0.5, 0.5, 0.5)  # from scratch: the card's


@pytest.mark.slow
def test_a_fresh_process_reads_the_cache_variables(caches, tmp_path) -> None:
    """No monkeypatching: HF_HOME / TORCH_HOME / HF_HUB_OFFLINE as a user sets them."""
    img = _image(tmp_path / "d.png", 64, 64, 3)
    env = {**os.environ, "HF_HOME": str(caches / "hf"), "TORCH_HOME": str(caches / "torch"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env["OMP_NUM_THREADS"] = "1"
    for source in ("timm:tf_efficientnetv2_b0", "torchvision:efficientnet_v2_s"):
        proc = subprocess.run(
            [sys.executable, "-m", "effv2", "predict", "--pretrained", source, str(img), "--json", "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)[0]["top"][0]["class"]
