"""benchmarks/fp32_cpu.py: the commands each variant runs, the 10-minute "pays" arithmetic, and one real
row per eager variant on the toy model (a few seconds each, in its own process). No timing claims."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support import load_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("fp32_cpu.py", "fp32_cpu_bench")


def test_each_variant_runs_the_bench_it_names(bench):
    argv = {v: bench.variant_command("efficientnetv2_b0:128:32:train", v, 8)[0] for v in bench.VARIANTS}
    for v, a in argv.items():
        assert a[a.index("--amp") + 1] == "none" and a[a.index("--compare") + 1] == "timm"
        assert ("--no-channels-last" in a) == (v == "nchw") and ("--channels-last" in a) == (v != "nchw")
        assert ("--compile" in a) == v.startswith("compile") and ("--no-compile" in a) == (not v.startswith("compile"))
        assert (a[a.index("--threads") + 1] == "1") if v == "threads-1" else "--threads" not in a
    assert "torch.backends.mkldnn.enabled = False" in argv["no-mkldnn"][2]
    # timm has no small-image models: those rows run effv2 alone
    assert "--compare" not in bench.variant_command("efficientnetv2_mini:28:256:train", "nchw", 8)[0]
    assert argv["no-mkldnn"][1] == "-c" and argv["nchw"][1:3] == ["-m", "effv2"]
    # every default case names variants the script knows, and S skips the compile
    assert all(set(vs) <= set(bench.VARIANTS) for vs in bench.CASES.values())
    assert not any(v.startswith("compile") for v in bench.CASES["efficientnetv2_s:128:32:train"])


def test_pays_counts_the_first_step_against_the_budget(bench):
    ref = {"step_s": 1.0, "first_step_s": 1.0}
    assert bench.pays_in(ref, ref) == 1.0
    # twice as fast but 300 s of compile: (600 - 300 + 0.5) / 0.5 = 601 steps against 600
    fast = {"step_s": 0.5, "first_step_s": 300.0}
    assert bench.pays_in(fast, ref) == pytest.approx(601 / 600)
    # a compile longer than the budget gets nothing
    assert bench.pays_in({"step_s": 0.1, "first_step_s": 700.0}, ref) == 0.0


def test_eager_rows_run_in_their_own_processes(bench, tmp_path, capsys):
    out = tmp_path / "fp32.json"
    args = ["--cases", "efficientnetv2_pico:32:4:train", "--variants", "nchw,channels_last,no-mkldnn"]
    assert bench.main([*args, "--steps", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["variant"] for r in rows] == ["nchw", "channels_last", "no-mkldnn"]
    for r in rows:
        assert "error" not in r, r
        assert r["img_per_s"] > 0 and r["step_s"] > 0 and r["first_step_s"] > 0
        assert r["timm_img_per_s"] is None and r["vs_timm_default"] is None  # timm has no pico
        assert r["settings"] == ("fp32 eager NCHW" if r["variant"] == "nchw" else "amp=none, channels_last")
        assert r["machine"]["torch"]
    assert rows[0]["command"].startswith("python -m effv2 bench --model efficientnetv2_pico")
    assert report["isa"] == "native" and report["date"]
    printed = capsys.readouterr().out
    assert "| efficientnetv2_pico:32:4:train | channels_last |" in printed and "| 1.00x |" in printed
    assert "(no timm model)" in printed and report["cpu_flags"]
