"""Named data streams: the primary stream is exactly train_batches, other streams cycle through
their own epochs deterministically, resume by start_batch across their epoch boundaries, and
carry their own augmentation."""

from __future__ import annotations

import pytest
import torch

from effv2.data import TensorImageSet, train_batches
from effv2.data.order import derive_seed
from effv2.data.streams import PRIMARY, Augment, StepContext, Stream, stream_steps, train_steps
from effv2.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

CTX = dict(
    batch_size=8, image_size=16, randaug_magnitude=9.0, mixup_alpha=0.2, cutmix_alpha=1.0, num_classes=10, seed=7
)


def _images(n: int, seed: int) -> TensorImageSet:
    g = torch.Generator().manual_seed(seed)
    return TensorImageSet(
        torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


@pytest.fixture(scope="module")
def labelled() -> TensorImageSet:
    return _images(40, 0)  # 5 steps of 8


@pytest.fixture(scope="module")
def unlabelled(labelled) -> TensorImageSet:
    return labelled.subset(range(20))  # 2 steps of 8 (4 dropped): wraps twice per primary epoch


def _ctx(**kw) -> StepContext:
    return StepContext(**{**CTX, **kw})


def _equal(a, b) -> bool:
    return (
        a.x.shape == b.x.shape
        and torch.equal(a.x, b.x)
        and a.y.dtype == b.y.dtype
        and torch.equal(a.y, b.y)
        and torch.equal(a.index, b.index)
    )


def _steps(streams, ctx, epoch, start_batch=0) -> list[dict]:
    return list(train_steps(streams, ctx, epoch=epoch, start_batch=start_batch))


def test_one_stream_is_exactly_train_batches(labelled):
    ctx = _ctx()
    for epoch in (0, 3):
        steps = _steps([Stream(PRIMARY, labelled)], ctx, epoch)
        ref = list(
            train_batches(
                labelled,
                batch_size=8,
                image_size=16,
                randaug_magnitude=9.0,
                mixup_alpha=0.2,
                cutmix_alpha=1.0,
                num_classes=10,
                seed=7,
                epoch=epoch,
            )
        )
        assert len(steps) == len(ref) == 5
        for s, r in zip(steps, ref):
            assert list(s) == [PRIMARY]
            assert _equal(s[PRIMARY], r)
    # resuming a one-stream epoch is train_batches' resume too
    resumed = _steps([Stream(PRIMARY, labelled)], ctx, 3, start_batch=3)
    assert len(resumed) == 2 and all(_equal(a[PRIMARY], b[PRIMARY]) for a, b in zip(resumed, steps[3:]))


def test_a_second_stream_is_deterministic_cycles_its_own_epochs_and_resumes(labelled, unlabelled):
    ctx = _ctx()
    streams = [Stream(PRIMARY, labelled), Stream("unlabelled", unlabelled)]
    assert stream_steps(streams[0], ctx) == 5 and stream_steps(streams[1], ctx) == 2
    epoch = 1
    full = _steps(streams, ctx, epoch)
    again = _steps(streams, ctx, epoch)
    assert len(full) == len(again) == 5
    for a, b in zip(full, again):
        assert list(a) == [PRIMARY, "unlabelled"]
        assert _equal(a[PRIMARY], b[PRIMARY]) and _equal(a["unlabelled"], b["unlabelled"])

    # the primary is unchanged by the second stream
    alone = _steps(streams[:1], ctx, epoch)
    assert all(_equal(a[PRIMARY], b[PRIMARY]) for a, b in zip(full, alone))

    # the second stream has its own order and draws, even over the same images
    for s in full:
        u, p = s["unlabelled"], s[PRIMARY]
        assert u.x.shape == p.x.shape == (8, 1, 16, 16)
        assert not torch.equal(u.x, p.x)
        assert int(u.index.max()) < len(unlabelled)
    assert [s["unlabelled"].index.tolist() for s in full] != [s[PRIMARY].index.tolist() for s in full]

    # global step g = epoch * 5 + b reads the second stream's batch g % 2 of its epoch g // 2,
    # seeded from (seed, "stream", name); epoch 1 is g = 5..9: its epochs 2 (batch 1), 3, 4
    sub_seed = derive_seed(7, "stream", "unlabelled")
    for b, s in enumerate(full):
        own_epoch, own_batch = divmod(epoch * 5 + b, 2)
        ref = next(
            iter(
                train_batches(
                    unlabelled,
                    batch_size=8,
                    image_size=16,
                    randaug_magnitude=9.0,
                    mixup_alpha=0.2,
                    cutmix_alpha=1.0,
                    num_classes=10,
                    seed=sub_seed,
                    epoch=own_epoch,
                    start_batch=own_batch,
                )
            )
        )
        assert _equal(s["unlabelled"], ref), b
    # across its epoch boundary the second stream reshuffles: batch 0 of its epochs 3 and 4 differ
    assert full[1]["unlabelled"].index.tolist() != full[3]["unlabelled"].index.tolist()

    # resume mid-epoch: batches k.. of the full pass, for both streams; k = 1 and 3 resume at the
    # start of one of the second stream's epochs, k = 2 and 4 in its middle, k = 5 is the epoch's end
    for k in (1, 2, 3, 4, 5):
        resumed = _steps(streams, ctx, epoch, start_batch=k)
        assert len(resumed) == 5 - k
        for a, b in zip(resumed, full[k:]):
            assert _equal(a[PRIMARY], b[PRIMARY]) and _equal(a["unlabelled"], b["unlabelled"])

    # the next primary epoch continues the second stream's cycle where this one ended (g = 10 -> its epoch 5)
    nxt = _steps(streams, ctx, epoch + 1, start_batch=0)
    ref = next(
        iter(
            train_batches(
                unlabelled,
                batch_size=8,
                image_size=16,
                randaug_magnitude=9.0,
                mixup_alpha=0.2,
                cutmix_alpha=1.0,
                num_classes=10,
                seed=sub_seed,
                epoch=5,
                start_batch=0,
            )
        )
    )
    assert _equal(nxt[0]["unlabelled"], ref)


def test_a_stream_without_mixing_or_randaugment_gives_hard_labels(labelled, unlabelled):
    ctx = _ctx()
    weak = Augment(randaug_scale=0, mix=False)
    steps = _steps([Stream(PRIMARY, labelled), Stream("weak", unlabelled, weak)], ctx, 0)
    sub_seed = derive_seed(7, "stream", "weak")
    for b, s in enumerate(steps):
        p, w = s[PRIMARY], s["weak"]
        assert p.y.dtype == torch.float32 and p.y.shape == (8, 10)  # mixup/cutmix: soft targets
        torch.testing.assert_close(p.y.sum(1), torch.ones(8))
        assert (p.y.max(1).values < 1).any()  # some rows really are mixed
        assert w.y.dtype == torch.int64 and w.y.shape == (8,)
        assert torch.equal(w.y, unlabelled.labels[w.index])  # the images' own labels
        own_epoch, own_batch = divmod(b, 2)
        ref = next(
            iter(
                train_batches(
                    unlabelled,
                    batch_size=8,
                    image_size=16,
                    randaug_magnitude=0.0,
                    mixup_alpha=0.0,
                    cutmix_alpha=0.0,
                    num_classes=10,
                    seed=sub_seed,
                    epoch=own_epoch,
                    start_batch=own_batch,
                )
            )
        )
        assert _equal(w, ref), b  # exactly the un-augmented (crop/flip only) batches


def test_stream_names_are_checked(labelled, unlabelled):
    ctx = _ctx()
    with pytest.raises(ValueError, match="first data stream must be 'labelled'"):
        next(train_steps([Stream("unlabelled", unlabelled), Stream(PRIMARY, labelled)], ctx, epoch=0))
    with pytest.raises(ValueError, match="first data stream must be 'labelled'"):
        next(train_steps([], ctx, epoch=0))
    with pytest.raises(ValueError, match="names must be unique"):
        next(train_steps([Stream(PRIMARY, labelled), Stream("u", unlabelled), Stream("u", unlabelled)], ctx, epoch=0))
    with pytest.raises(ValueError, match="names must be unique"):
        next(train_steps([Stream(PRIMARY, labelled), Stream(PRIMARY, unlabelled)], ctx, epoch=0))


def test_a_second_stream_smaller_than_a_batch_is_refused(labelled):
    with pytest.raises(UsageError, match="data stream 'tiny'"):
        next(train_steps([Stream(PRIMARY, labelled), Stream("tiny", _images(5, 1))], _ctx(), epoch=0))
