"""Replicas across CPU cores (runtime/replicas.py): when they are used, how a batch is cut, and that a
replicated step computes the full batch's mean-loss gradient, deterministically, with each worker on
its own thread count."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from effv2.config import Recipe
from effv2.config.values import RecipeError
from effv2.data.loader import Batch
from effv2.errors import UsageError
from effv2.models import create_model
from effv2.models.blocks import Dropout, DropPath
from effv2.runtime import Runtime
from effv2.runtime.replicas import MIN_SHARD, Replicas, _set_generator, resolve_replicas, shard_batches
from effv2.training.build import build_parts, train_step
from effv2.training.tasks.classify import ClassifyTask

CPU = torch.device("cpu")


def _auto(**kw):
    args = dict(device=CPU, amp="none", batch_size=256, compile=False, world_size=1, threads=2)
    args.update(kw)
    return resolve_replicas("auto", **args)


# -- the decision -----------------------------------------------------------------------------------
def test_auto_trains_a_replica_per_thread_in_fp32_on_cpu():
    assert _auto()[0] == 2
    assert _auto(threads=4, batch_size=64)[0] == 4
    assert _auto(threads=4, batch_size=48)[0] == 3  # 16 images a shard at least
    assert _auto(batch_size=2 * MIN_SHARD)[0] == 2


@pytest.mark.parametrize(
    "kw, why",
    [
        (dict(batch_size=2 * MIN_SHARD - 1), "batch 31"),
        (dict(amp="bf16"), "bf16"),
        (dict(compile=True), "compile"),
        (dict(world_size=2), "torchrun"),
        (dict(threads=1), "one intra-op thread"),
        (dict(device=torch.device("cuda")), "cuda"),
    ],
)
def test_auto_is_one_replica_elsewhere_and_says_why(kw, why):
    n, reason = _auto(**kw)
    assert n == 1 and why in reason


def test_an_asked_count_is_obeyed_or_refused_in_one_line():
    assert resolve_replicas(3, device=CPU, amp="bf16", batch_size=48, compile=False, world_size=1, threads=2)[0] == 3
    assert (
        resolve_replicas(1, device=torch.device("cuda"), amp="none", batch_size=8, compile=True, world_size=2)[0] == 1
    )
    bad = [
        (dict(device=torch.device("cuda")), "need a CPU"),
        (dict(compile=True), "torch.compile is on"),
        (dict(batch_size=3), "at least 4 images a batch"),  # 2 a shard: BatchNorm needs two in training
        (dict(world_size=2), "under torchrun"),
        (dict(amp="fp16"), "GradScaler"),
    ]
    for kw, msg in bad:
        args = dict(device=CPU, amp="none", batch_size=32, compile=False, world_size=1)
        args.update(kw)
        with pytest.raises(UsageError, match=msg) as info:
            resolve_replicas(2, **args)
        assert "\n" not in str(info.value) and str(info.value).startswith("replicas: 2")
    with pytest.raises(UsageError, match="integer >= 1"):
        resolve_replicas(0, device=CPU, amp="none", batch_size=32, compile=False, world_size=1)


def test_the_recipe_key_is_checked_on_construction():
    assert Recipe().replicas == "auto" and Recipe(replicas=2).replicas == 2
    with pytest.raises(RecipeError, match="replicas"):
        Recipe(replicas=0)


# -- cutting a batch --------------------------------------------------------------------------------
def test_every_stream_is_cut_into_consecutive_shards_weighted_by_their_rows():
    x = torch.arange(10 * 2 * 2 * 2, dtype=torch.float32).reshape(10, 2, 2, 2)
    y = torch.arange(10)
    first = Batch(x, y, bad=[{"path": "a.png", "reason": "truncated"}], index=torch.arange(100, 110))
    other = Batch(torch.zeros(20, 1, 2, 2), torch.zeros(20, dtype=torch.long))  # another stream, twice the rows
    shards, weights = shard_batches({"labelled": first, "unlabelled": other}, 3)
    assert [s["labelled"].x.shape[0] for s in shards] == [3, 3, 4]
    assert [s["unlabelled"].x.shape[0] for s in shards] == [6, 7, 7]
    assert weights == pytest.approx([0.3, 0.3, 0.4]) and sum(weights) == pytest.approx(1.0)
    assert torch.equal(torch.cat([s["labelled"].x for s in shards]), x)
    assert torch.equal(torch.cat([s["labelled"].index for s in shards]), first.index)
    assert [len(s["labelled"].bad) for s in shards] == [1, 0, 0]  # a batch's notes are reported once


def test_a_stream_effv2_cannot_cut_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="'pairs'"):
        shard_batches({"pairs": {"a": torch.zeros(4)}}, 2)


# -- stochastic layers ------------------------------------------------------------------------------
def test_without_a_thread_generator_the_layers_are_torchs_own_bit_for_bit():
    x = torch.randn(8, 4, 3, 3)
    for ours, theirs in ((DropPath(0.3, "row"), StochasticDepth(0.3, "row")), (Dropout(0.3), nn.Dropout(0.3))):
        torch.manual_seed(5)
        a = ours(x)
        torch.manual_seed(5)
        assert torch.equal(a, theirs(x))


def test_with_a_thread_generator_the_layers_draw_from_it_only():
    x = torch.randn(64, 4, 3, 3)
    for layer in (DropPath(0.5, "row"), Dropout(0.5)):
        outs = []
        for _ in range(2):
            _set_generator(torch.Generator().manual_seed(11))
            state = torch.get_rng_state()
            try:
                outs.append(layer(x))
            finally:
                _set_generator(None)
            assert torch.equal(torch.get_rng_state(), state)  # the global generator untouched
        assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)


# -- a replicated step ------------------------------------------------------------------------------
def _step(model: nn.Module, replicas: int, *, recipe: Recipe | None = None):
    rec = recipe or Recipe(optimizer="sgd", label_smoothing=0.1)
    rt = Runtime(channels_last=False, replicas=replicas)
    parts = build_parts(rec, model.train(), rt)
    return parts, train_step(parts, rt, rec)


def _batch(n: int = 40, c: int = 1, size: int = 12, classes: int = 10, seed: int = 3) -> dict[str, Batch]:
    g = torch.Generator().manual_seed(seed)
    return {"labelled": Batch(torch.randn(n, c, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))}


def _toy() -> nn.Module:  # no BatchNorm, no dropout: a replicated step must equal the plain one
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 10))


def test_a_replicated_step_is_the_full_batchs_mean_loss_step():
    batches = _batch(n=42)  # 42 rows into 4 shards of 10, 11, 10, 11: weights by rows
    ref_parts, ref = _step(_toy(), 1)
    parts, step = _step(_toy(), 4)
    for i in range(3):
        a, b = ref(batches, i, lr=0.1), step(batches, i, lr=0.1)
        assert b.loss == pytest.approx(a.loss, rel=1e-5) and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-5)
    for p, q in zip(ref_parts.model.parameters(), parts.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_with_batchnorm_each_shard_is_normalised_by_itself_and_shard_0_keeps_the_statistics():
    """The gradient is the weighted sum of each shard's gradient through its own BN statistics (what
    DDP computes), and the running statistics are those shard 0 left (DDP keeps rank 0's)."""
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico", num_classes=10, in_chans=1, drop_rate=0.0, drop_path_rate=0.0)
    twin = create_model("efficientnetv2_pico", num_classes=10, in_chans=1, drop_rate=0.0, drop_path_rate=0.0)
    twin.load_state_dict(model.state_dict())
    batches = _batch(n=32, size=16)
    parts, step = _step(model, 2, recipe=Recipe(optimizer="sgd", label_smoothing=0.0, lr=1e-9))
    step(batches, 0, lr=0.0)  # lr 0: the weights stay, the gradients and statistics are what is compared
    twin.train()
    grads = [torch.zeros_like(p) for p in twin.parameters()]
    stats = None
    x, y = batches["labelled"].x, batches["labelled"].y
    for k, (lo, hi) in enumerate(((0, 16), (16, 32))):
        twin.zero_grad()
        (nn.functional.cross_entropy(twin(x[lo:hi]), y[lo:hi]) * 0.5).backward()
        for g, p in zip(grads, twin.parameters()):
            g += p.grad
        if k == 0:  # training-mode BN reads the batch's statistics: the buffers do not change shard 1's gradient
            stats = {n: b.clone() for n, b in twin.named_buffers()}
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    for n, b in model.named_buffers():
        assert torch.equal(b, stats[n]), n


def _fmnist_run(replicas: int, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("efficientnetv2_fmnist", num_classes=10, in_chans=1, drop_rate=0.3, drop_path_rate=0.3)
    parts, step = _step(model, replicas, recipe=Recipe(optimizer="sgd", ema_decay=0.9))
    batches = _batch(n=32, size=20)
    for i in range(steps):
        assert step(batches, i, lr=0.05).stepped
    return {**parts.model.state_dict(), **{f"ema.{k}": v for k, v in parts.ema.state_dict().items()}}


def test_a_replicated_run_with_dropout_and_stochastic_depth_repeats_bit_for_bit():
    a, b = _fmnist_run(2), _fmnist_run(2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_copies_follow_the_stage_settings_and_mode_of_the_original():
    torch.manual_seed(0)
    model = create_model("efficientnetv2_pico", num_classes=10, in_chans=1)
    parts, step = _step(model, 2)
    model.set_drop_rate(0.25)
    model.set_drop_path_rate(0.15)
    step(_batch(n=32, size=16), 0, lr=0.01)
    copy = step.replicas.copies[0]
    assert copy.model.dropout.p == 0.25 and copy.training and copy.model.training
    parts.task.eval()  # the copies follow the mode too (a step in eval mode: BN on its running statistics)
    step(_batch(n=32, size=16), 1, lr=0.01)
    assert not copy.training and not copy.model.training and not copy.model.dropout.training
    paths = [m.p for m in copy.model.modules() if isinstance(m, DropPath)]
    assert paths and paths == [m.p for m in model.modules() if isinstance(m, DropPath)]
    shared = [p.data_ptr() for p in model.parameters()]
    assert [p.data_ptr() for p in copy.model.parameters()] == shared  # one set of weights, updated in place


def test_drop_path_keeps_its_mode_with_a_thread_generator():
    x = torch.ones(64, 2, 2, 2)
    _set_generator(torch.Generator().manual_seed(0))
    try:
        rows = DropPath(0.5, "row")(x)
        whole = DropPath(0.5, "batch")(x)
    finally:
        _set_generator(None)
    assert len(set(rows[:, 0, 0, 0].tolist())) == 2  # some rows dropped, others scaled by 2
    assert len(set(whole.flatten().tolist())) == 1  # one draw for the whole batch


def test_a_dropped_step_leaves_no_worker_thread_behind():
    import gc
    import threading

    def alive() -> int:
        return sum(t.name == "effv2-replica" and t.is_alive() for t in threading.enumerate())

    before = alive()
    parts, step = _step(_toy(), 2)
    step(_batch(n=8), 0, lr=0.1)
    assert alive() == before + 2
    workers = step.replicas.workers
    del parts, step
    gc.collect()
    for w in workers:
        w.join(timeout=10)
    assert alive() == before


def test_each_worker_keeps_its_own_thread_count():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        reps = Replicas(ClassifyTask(_toy()), 2, threads=2)
        assert torch.get_num_threads() == 2  # the caller's restored
        counts = []
        for w in reps.workers:
            w.jobs.put(lambda: (torch.ones(1 << 20).sum(), torch.get_num_threads())[1])  # after a parallel op
            counts.append(w.results.get())
        assert counts == [(True, 1), (True, 1)]
        reps.close()
        for w in reps.workers:
            w.join(timeout=10)
            assert not w.is_alive()
    finally:
        torch.set_num_threads(prev)


class _Failing(ClassifyTask):
    replicable = True

    def forward(self, batches, step):
        if batches["labelled"].y[0] == -1:  # a test hook: shard 1 starts with this label
            raise ValueError("shard failed")
        out = super().forward(batches, step)
        if torch.isnan(batches["labelled"].x).any():
            out["loss"] = out["loss"] * float("nan")
        return out


def test_a_worker_error_reaches_the_caller_and_a_bad_shard_skips_the_whole_step():
    model = _toy()
    rec = Recipe(optimizer="sgd")
    rt = Runtime(replicas=2)
    task = _Failing(model)
    parts = build_parts(rec, model.train(), rt)
    parts.task = task
    step = train_step(parts, rt, rec)
    batches = _batch(n=8)
    before = [p.detach().clone() for p in model.parameters()]
    b = batches["labelled"]
    y = b.y.clone()
    y[4] = -1
    with pytest.raises(ValueError, match="shard failed"):
        step({"labelled": Batch(b.x, y)}, 0, lr=0.1)
    x = b.x.clone()
    x[5] = float("nan")  # only shard 1 goes bad
    result = step({"labelled": Batch(x, b.y)}, 0, lr=0.1)
    assert not result.stepped
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert step(batches, 1, lr=0.1).stepped
