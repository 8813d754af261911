"""benchmarks/inference.py on small models at their small sizes, one round: every form is timed, and every
form's logits agree with the eager model's (fp32 forms to 1e-4; bf16 autocast, where the fast
defaults pick it, to 5% of the logit range). No timing claims."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support import load_benchmark  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_script():
    return load_benchmark("inference.py", "inference_bench")


@pytest.fixture(scope="module")
def bench():
    return _load_script()


def test_every_form_is_timed_and_agrees_with_eager(bench, tmp_path):
    # the demo's model as the demo builds it (1 channel, 10 classes, 28 px): about 5 s
    rows = bench.measure_case(
        "efficientnetv2_mini", 28, 1, 10, batches=(1, 4), rounds=1, warmup=1, min_round_s=0.0, workdir=tmp_path
    )
    assert [(r["batch"], r["form"]) for r in rows] == [(b, f) for b in (1, 4) for f in bench.FORMS]
    assert set(bench.FORMS) == {"eager", "eager_fast", "folded", "torch_export", "onnxruntime"}
    # the exports are effv2's own files, written where asked
    assert (tmp_path / "efficientnetv2_mini-28.pt2").is_file() and (tmp_path / "efficientnetv2_mini-28.onnx").is_file()
    for r in rows:
        assert r["best_img_per_s"] >= r["img_per_s"] > 0 and r["ms_per_batch"] > 0 and len(r["round_s"]) == 1
        assert r["top1_agree"] == r["n"] == r["batch"], r
        tol = 5e-2 if "amp bf16" in r["how"] or "amp fp16" in r["how"] else 1e-4
        assert r["max_abs_diff"] <= tol, r
        assert r["form"] != "eager" or (r["max_abs_diff"] == 0 and r["vs_eager"] == 1.0)
    # folding has something to fold: the BN statistics are not the identity
    assert any(r["max_abs_diff"] > 0 for r in rows if r["form"] == "folded")


def test_the_command_line_writes_the_table_and_json(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["--case", "efficientnetv2_pico:32:3:10", "--batches", "2", "--rounds", "1", "--warmup", "0"]
    assert bench.main([*args, "--min-round-s", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["form"] for r in report["rows"]] == list(bench.FORMS)
    assert report["machine"]["torch"] and "--case" in report["command"]
    printed = capsys.readouterr().out
    assert "| efficientnetv2_pico | 32 | 2 | onnxruntime |" in printed
