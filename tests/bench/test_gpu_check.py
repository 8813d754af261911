"""benchmarks/gpu_check.py: its pure parts (arguments, summary, status lines, one part in-process) fast,
and the whole --dry-run (every part on CPU, each in its own subprocess) as a slow test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "tests"))
from support import load_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def gc():
    yield load_benchmark("gpu_check.py", register=True)  # dataclasses / pickling look it up by name
    sys.modules.pop("gpu_check", None)


def test_parse_args(gc, capsys):
    a = gc.parse_args(["--out", "x", "--dry-run", "--parts", "models, data"])
    assert a.dry_run and a.parts == ["models", "data"] and a.out == "x" and a._part is None
    assert gc.parse_args(["--out", "x"]).parts == list(gc.PARTS)
    with pytest.raises(SystemExit):
        gc.parse_args(["--out", "x", "--parts", "models,nope"])
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gc.parse_args(["--parts", "models"])  # --out is required
    assert set(gc.TIMEOUTS) == set(gc.PARTS) == set(gc.PART_FUNCS)
    assert gc.part_timeout("train", True, 2.0) == 2 * gc.TIMEOUTS["train"][1]


def test_summary_and_status_lines(gc, tmp_path):
    parts = {
        "models": {"status": "PASS", "reason": None, "numbers": {"a": 1}, "seconds": 1.0},
        "export": {"status": "SKIP", "reason": "export is not built yet", "numbers": {}, "seconds": 0.1},
        "train": {"status": "FAIL", "reason": "loss did not fall", "numbers": {}, "seconds": 2.0},
    }
    machine = gc.machine_info()
    assert {"torch", "torch_cuda", "cuda_available", "driver_version"} <= set(machine)
    path = gc.write_summary(tmp_path / "out", machine, parts, dry_run=True)
    s = json.loads(path.read_text())
    assert s["dry_run"] is True and s["counts"] == {"PASS": 1, "FAIL": 1, "SKIP": 1}
    assert s["parts"]["models"]["numbers"] == {"a": 1} and s["machine"]["torch"] == machine["torch"]
    assert gc.status_line("models", parts["models"]) == "PASS models"
    assert gc.status_line("export", parts["export"]) == "SKIP export: export is not built yet"
    assert gc.status_line("train", parts["train"]) == "FAIL train: loss did not fall"


def test_parts_in_process(gc, tmp_path):
    ctx = gc.Context(out=tmp_path, dry_run=True, data_dir=None)
    r = gc.run_part("data", ctx)
    assert r["status"] == "PASS", r
    n = r["numbers"]
    assert n["loader_workers0_images"] > 0 and n["loader_workers2_images"] == n["loader_workers0_images"]
    assert n["decode_jpeg_img_per_s"] > 0 and n["decode_jpeg_device"] == "cpu"

    def boom(ctx, numbers):
        numbers["x"] = 1
        raise ValueError("bad")

    gc.PART_FUNCS["boom"] = boom
    try:
        r = gc.run_part("boom", ctx)
    finally:
        gc.PART_FUNCS.pop("boom")
    assert r == {"status": "FAIL", "reason": "ValueError: bad", "numbers": {"x": 1}}


def test_models_part_in_process(gc, tmp_path):
    r = gc.run_part("models", gc.Context(out=tmp_path, dry_run=True, data_dir=None))
    assert r["status"] == "PASS", r
    res = r["numbers"]["results"]
    assert set(res) == {"efficientnetv2_pico", "efficientnetv2_mini"}
    for row in res.values():
        assert set(row) == {"fp32", "bf16", "fp16"}
        assert all(isinstance(v, str) or v["no_grad"] == 0 for v in row.values())


def test_static_skip_starts_no_process(gc, tmp_path, monkeypatch):
    assert gc.STATIC_SKIPS == {}  # every part is built (export included)
    monkeypatch.setitem(gc.STATIC_SKIPS, "export", "not built on this machine")
    args = gc.parse_args(["--out", str(tmp_path), "--dry-run", "--parts", "export"])
    r = gc.run_part_subprocess("export", args)
    assert r["status"] == "SKIP" and r["reason"] and r["log"] is None
    assert not (tmp_path / "parts").exists()


def test_loss_tap_records_and_delegates(gc):
    class Res:
        def __init__(self, loss, stepped=True):
            self.loss, self.stepped = loss, stepped

    class Step:
        optimizer = "the optimizer"

        def __call__(self, batches, index, lr=None):
            return Res(float(index), stepped=index != 2)

    losses: list[float] = []
    tap = gc._LossTap(Step(), losses)
    assert [tap({}, i).loss for i in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert losses == [0.0, 1.0, 3.0] and tap.optimizer == "the optimizer"  # skipped steps are not recorded


def test_full_run_without_cuda_skips_with_reason(gc, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = gc.run_part("models", gc.Context(out=tmp_path, dry_run=False, data_dir=None))
    assert r["status"] == "SKIP" and "CUDA is not available" in r["reason"]


@pytest.mark.slow
def test_dry_run(tmp_path):
    """~2 minutes on a loaded 2-core machine (each part imports torch and effv2 in its own process)."""
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--dry-run"], capture_output=True, text=True, timeout=1800
    )
    lines = proc.stdout.strip().splitlines()
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert {"dry_run", "ok", "total_s", "machine", "counts", "parts"} <= set(summary) and summary["dry_run"] is True
    assert {"torch", "torch_cuda", "driver_version", "cuda_available", "python"} <= set(summary["machine"])
    assert summary["ok"] is True and summary["counts"]["FAIL"] == 0
    assert list(summary["parts"]) == list(_parts())
    for part, r in summary["parts"].items():
        assert {"status", "reason", "numbers", "seconds"} <= set(r), part
        assert r["status"] == "PASS" or (r["status"] == "SKIP" and r["reason"]), (part, r)
        assert any(line.split(":")[0] in (f"PASS {part}", f"SKIP {part}") for line in lines), (part, lines)
    ex = summary["parts"]["export"]
    assert ex["status"] == "PASS", ex
    assert all(ex["numbers"][f"{fmt}_rc"] == 0 for fmt in ("torch-export", "safetensors", "folder", "onnx"))
    assert ex["numbers"]["predict_onnx_rc"] == 0
    if summary["parts"]["train"]["status"] == "PASS":
        kr = summary["parts"]["train"]["numbers"]["kill_resume"]
        assert kr["n_differ"] == 0 and kr["killed_rc"] == -9 and isinstance(kr["nondeterministic_kernels"], list)
        assert kr["deterministic_algorithms"] is True and kr["warn_only"] is True
        v = summary["parts"]["train"]["numbers"]["variants"]
        assert v["fp16"]["ran_with"]["amp"] == "fp16" and v["fp16"]["ran_with"]["grad_scaler"] is True
        assert v["compile"]["ran_with"]["forward_type"] == "OptimizedModule"


def _parts():
    return load_benchmark("gpu_check.py", "gpu_check_parts").PARTS
