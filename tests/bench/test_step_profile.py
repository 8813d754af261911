"""benchmarks/step_profile.py: which kind of work each aten op counts as, the conv FLOPs it divides by,
and one real profile of the toy model's step (a second or two). No timing claims."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from effv2.models import create_model
from effv2.models.flops import count_macs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support import load_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def prof():
    return load_benchmark("step_profile.py", "step_profile_bench")


def test_ops_are_sorted_into_kinds_of_work(prof):
    assert prof.kind_of("aten::convolution_backward") == "conv backward"
    assert prof.kind_of("aten::mkldnn_convolution") == "conv forward"
    assert prof.kind_of("aten::native_batch_norm_backward") == "batch norm backward"
    assert prof.kind_of("aten::native_batch_norm") == "batch norm forward"
    assert prof.kind_of("aten::silu_") == "activation forward"
    assert prof.kind_of("aten::silu_backward") == "activation backward"
    assert prof.kind_of("aten::_foreach_add_") == "optimizer and EMA (foreach)"
    assert prof.kind_of("aten::add_") == prof.kind_of("aten::copy_") == "other elementwise and bookkeeping"


def test_conv_flops_are_the_model_macs_less_the_classifier(prof):
    model = create_model("efficientnetv2_pico", num_classes=7, in_chans=1).eval()
    batch = 3
    conv, stem_dgrad = prof.conv_forward_flops(model, torch.randn(batch, 1, 16, 16))
    classifier = 2 * model.classifier.in_features * 7
    assert conv == batch * (2 * count_macs(model, 16, 1) - classifier)
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    # the stem's input gradient would cost as much as its forward: 2 * out pixels * out ch * k*k*in ch
    assert stem.stride == (1, 1) and stem.kernel_size == (3, 3)
    assert stem_dgrad == 2 * batch * 16 * 16 * stem.out_channels * 9 * 1


def test_a_real_profile_accounts_for_the_whole_step(prof, capsys):
    args = ["--model", "efficientnetv2_pico", "--size", "16", "--batch", "4", "--in-chans", "1"]
    # --threads changes the process's torch threads: conftest's restore_torch_threads gives them back
    assert prof.main([*args, "--num-classes", "10", "--steps", "2", "--threads", "1", "--amp", "none"]) == 0
    out = capsys.readouterr().out
    shares = [float(s) for s in re.findall(r"\| ([\d.]+)% \|", out)]
    assert shares and abs(sum(shares) - 100.0) < 0.5
    for kind in ("conv forward", "conv backward", "batch norm backward"):
        assert f"| {kind} |" in out
    assert re.search(r"conv forward: +[\d.]+ GFLOP in [\d.]+ ms = \d+ GFLOP/s", out)
    assert "measured fp32 GEMM" in out


def test_bad_sizes_are_a_usage_error(prof, capsys):
    assert prof.main(["--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
