"""Cross-replica BatchNorm (recipe ``sync_bn``): option resolution, conversion, and 2-process torchrun on CPU.

Run as a script under torchrun (``python -m torch.distributed.run --nproc_per_node 2 THIS OUT``) it is
the worker of the slow test: one training step of efficientnetv2_pico built by ``build_parts`` with
different data on each rank, once with sync_bn true and once false, writing each rank's BN running
statistics to OUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from effv2.training.sync_bn import CrossReplicaBatchNorm2d, convert_sync_bn, resolve_sync_bn


@pytest.mark.parametrize(
    "setting,world,device,want",
    [
        (False, 2, "cuda", False),
        (False, 1, "cpu", False),
        ("auto", 1, "cuda", False),
        ("auto", 2, "cuda", True),
        ("auto", 2, "cpu", False),  # off by default on CPU
        (True, 1, "cpu", False),  # one process: nothing to synchronise
        (True, 2, "cpu", True),
        (True, 4, "cuda", True),
    ],
)
def test_sync_bn_resolution(setting, world, device, want):
    assert resolve_sync_bn(setting, world, device) is want


def test_conversion_shares_parameters_and_keeps_the_state_dict():
    from effv2.models import create_model

    model = create_model("efficientnetv2_pico", num_classes=10, in_chans=1)
    before = model.state_dict()
    params = {n: p for n, p in model.named_parameters()}
    n_bn = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    out = convert_sync_bn(model, "cpu")
    assert out is model and n_bn > 0
    assert sum(isinstance(m, CrossReplicaBatchNorm2d) for m in model.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert all(p is params[n] for n, p in model.named_parameters())  # the optimizer's tensors
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert (
        type(convert_sync_bn(create_model("efficientnetv2_pico", num_classes=10), "cuda").stem.bn) is nn.SyncBatchNorm
    )


def test_single_process_cross_replica_bn_is_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    ref, ours = nn.BatchNorm2d(3), CrossReplicaBatchNorm2d(3)
    assert torch.allclose(ours(x), ref(x)) and torch.allclose(ours.running_var, ref.running_var)


def test_torch_sync_batchnorm_rejects_cpu_tensors(tmp_path):
    """Why effv2 has its own CPU path: torch 2.14's SyncBatchNorm refuses CPU input in a process group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        bn = nn.SyncBatchNorm(3)
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            bn(torch.randn(4, 3, 2, 2))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- 2-process torchrun
def _worker(out: Path) -> None:
    import torch.distributed as dist

    from effv2.config import Recipe
    from effv2.data.loader import Batch
    from effv2.models import create_model
    from effv2.runtime import resolve_runtime
    from effv2.training.build import build_parts, seed_everything, train_step

    runtime = resolve_runtime("cpu", amp="none", channels_last=False, distributed=True)
    rank = runtime.dist.rank
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(8, 1, 16, 16, generator=g) * (1 + rank) + 3.0 * rank  # per-rank data, different statistics
    y = torch.randint(0, 10, (8,), generator=g)
    result = {}
    for flag in (True, False):
        seed_everything(0)
        model = create_model("efficientnetv2_pico", num_classes=10, in_chans=1)
        recipe = Recipe(sync_bn=flag, ema_decay=0, amp="none", channels_last=False, optimizer="sgd", lr=0.1)
        parts = build_parts(recipe, model, runtime)
        kinds = {type(m).__name__ for m in parts.model.modules()}
        res = train_step(parts, runtime, recipe)({"labelled": Batch(x, y)}, 0)
        stats = {n: b.tolist() for n, b in parts.model.named_buffers() if n.endswith(("running_mean", "running_var"))}
        result[str(flag).lower()] = {"stepped": res.stepped, "stats": stats, "kinds": sorted(kinds)}
    allx = [torch.empty_like(x) for _ in range(runtime.dist.world_size)]
    dist.all_gather(allx, x)
    if rank == 0:
        result["global_x"] = torch.cat(allx).tolist()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.slow  # ~20 s on 2 cores: a 2-process torchrun; `pytest -m slow`
def test_bn_statistics_are_equal_on_both_ranks_after_a_step_with_sync_bn(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547"]
    cmd += [__file__, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for flag in ("true", "false"):
        assert r0[flag]["stepped"] and r1[flag]["stepped"]
    assert "CrossReplicaBatchNorm2d" in r0["true"]["kinds"] and "BatchNorm2d" not in r0["true"]["kinds"]
    assert "CrossReplicaBatchNorm2d" not in r0["false"]["kinds"]

    def diff(a, b):
        return max(max(abs(u - v) for u, v in zip(a[k], b[k], strict=True)) for k in a)

    assert diff(r0["true"]["stats"], r1["true"]["stats"]) < 1e-6  # synchronised: one set of statistics
    assert diff(r0["false"]["stats"], r1["false"]["stats"]) > 0.1  # per-rank data, per-rank statistics
    # the stem BN saw the global batch: running stats = 0.9 * init + 0.1 * batch stats of conv(x_all)
    from effv2.models import create_model
    from effv2.training.build import seed_everything

    seed_everything(0)
    stem = create_model("efficientnetv2_pico", num_classes=10, in_chans=1).stem.conv
    with torch.no_grad():
        h = stem(torch.tensor(r0["global_x"]))
    mean = h.mean(dim=(0, 2, 3))
    var = h.var(dim=(0, 2, 3), unbiased=True)
    got = r0["true"]["stats"]
    assert torch.allclose(torch.tensor(got["stem.bn.running_mean"]), 0.1 * mean, atol=1e-5)
    assert torch.allclose(torch.tensor(got["stem.bn.running_var"]), 0.9 + 0.1 * var, atol=1e-4)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
