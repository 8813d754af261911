"""Batches: determinism (seed, epoch, batch, rank), resume by start_batch, rank shards, mixing, bad files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from effv2.data import Batch, FileImageSet, TensorImageSet, eval_batches, steps_per_epoch, train_batches
from effv2.data.augment import ScaledRandAugment, _reflect, pad_crop_flip, randaugment_chunks, random_resized_boxes
from effv2.data.order import derive_seed, epoch_permutation, eval_shard, seeded_cpu_rng, stratified_split
from effv2.errors import UsageError

KW = dict(
    batch_size=16,
    image_size=28,
    randaug_magnitude=9,
    mixup_alpha=0.2,
    cutmix_alpha=1.0,
    num_classes=10,
    seed=5,
    epoch=2,
)


@pytest.fixture(scope="module")
def gray() -> TensorImageSet:
    g = torch.Generator().manual_seed(0)
    return TensorImageSet(
        torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(100) % 10
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> FileImageSet:
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(12):
        p = str(root / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (20 + i, 30 - i, 3), dtype=np.uint8)).save(p)
        paths.append(p)
        labels.append(i % 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (root / "05.png").unlink()
    bad = str(root / "05.jpg")  # passes a header check, fails to decode
    with open(bad, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    paths[5] = bad
    return FileImageSet(paths, labels)


def all_batches(imageset, **kw) -> list[Batch]:
    return list(train_batches(imageset, **{**KW, **kw}))


def same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(p.x, q.x) and torch.equal(p.y, q.y) and p.bad == q.bad for p, q in zip(a, b, strict=True)
    )


# ------------------------------------------------------------------ pure order functions
def test_pinned_seeds_and_order():
    # pinned so that a change of the order (which would break resuming old runs) is noticed
    assert derive_seed(0, 0, "perm") == derive_seed(0, 0, "perm") != derive_seed(0, 1, "perm")
    assert derive_seed(1, 2, 3) == 2904650318439132554
    assert epoch_permutation(10, 0, 0).tolist() == [8, 6, 2, 1, 4, 7, 9, 0, 5, 3]
    assert steps_per_epoch(100, 16) == 6 and steps_per_epoch(100, 16, 2) == 3 and steps_per_epoch(10, 16) == 0
    assert [list(eval_shard(10, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_stratified_split_counts():
    labels = [0] * 10 + [1] * 5 + [2]
    tr, va = stratified_split(labels, 0.2, 0)
    assert sorted(tr + va) == list(range(16)) and np.bincount([labels[i] for i in va], minlength=3).tolist() == [
        2,
        1,
        0,
    ]
    assert stratified_split(labels, 0.2, 0) == (tr, va) and stratified_split(labels, 0.0, 0) == (list(range(16)), [])


# ------------------------------------------------------------------ in-memory batches
def test_tensor_batches_are_a_pure_function_of_seed_epoch_batch(gray):
    full = all_batches(gray)
    assert len(full) == 6 and same(full, all_batches(gray))
    assert not torch.equal(full[0].x, all_batches(gray, epoch=3)[0].x)
    assert same(all_batches(gray, start_batch=4), full[4:])  # resume mid-epoch
    assert all_batches(gray, start_batch=6) == []
    b = full[0]
    assert b.x.shape == (16, 1, 28, 28) and b.x.dtype == torch.float32  # grayscale stays C=1
    assert b.y.shape == (16, 10) and b.y.dtype == torch.float32
    assert torch.allclose(b.y.sum(1), torch.ones(16)) and (b.y >= 0).all()  # soft targets
    assert b.index.tolist() == epoch_permutation(100, 5, 2)[:16].tolist()


def test_global_rng_and_threads_untouched(gray):
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    all_batches(gray, batch_size=32)
    assert torch.equal(state, torch.get_rng_state()) and torch.get_num_threads() == threads


def test_rank_shards_disjoint_and_equal_length(gray):
    ranks = [all_batches(gray, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == steps_per_epoch(100, 16, 2) == 3
    idx = [torch.cat([b.index for b in r]).tolist() for r in ranks]
    assert set(idx[0]).isdisjoint(idx[1])
    assert sorted(idx[0] + idx[1]) == sorted(epoch_permutation(100, 5, 2)[:96].tolist())
    # a single process with the global batch sees exactly the union of the ranks' batches
    single = all_batches(gray, batch_size=32, world_size=1)
    assert torch.cat([single[0].index]).tolist() == ranks[0][0].index.tolist() + ranks[1][0].index.tolist()


def test_no_augmentation_is_exact_normalisation(gray):
    plain = dict(randaug_magnitude=0, mixup_alpha=0, cutmix_alpha=0, hflip=False, crop="none")
    b = all_batches(gray, **plain)[0]
    assert b.y.dtype == torch.int64 and b.y.tolist() == gray.labels[b.index].tolist()
    assert torch.allclose(b.x, gray.images[b.index].float() / 255 * 2 - 1, atol=1e-6)  # mean 0.5, std 0.5
    e = list(eval_batches(gray, batch_size=40, image_size=28, mean=(0.2,), std=(0.4,)))
    assert [len(x.y) for x in e] == [40, 40, 20]
    assert torch.allclose(e[1].x, (gray.images[40:80].float() / 255 - 0.2) / 0.4, atol=1e-6)


def test_mixup_and_cutmix_targets(gray):
    for mix in ({"mixup_alpha": 0.2, "cutmix_alpha": 0}, {"mixup_alpha": 0, "cutmix_alpha": 1.0}):
        b = all_batches(gray, randaug_magnitude=0, **mix)[1]
        assert b.y.shape == (16, 10) and torch.allclose(b.y.sum(1), torch.ones(16))
        assert ((b.y > 0).sum(1) <= 2).all()  # a blend of at most two classes


def test_crops_resize_and_channels_last(gray):
    for crop in ("pad_crop", "random_resized", "none"):
        b = all_batches(gray, crop=crop, image_size=40, channels_last=True)[0]
        assert b.x.shape == (16, 1, 40, 40) and b.x.is_contiguous(memory_format=torch.channels_last)
        assert b.x.min() >= -1 and b.x.max() <= 1


def test_bad_arguments(gray):
    with pytest.raises(UsageError, match="more than the 100 training images"):
        all_batches(gray, batch_size=101)
    with pytest.raises(UsageError, match="start_batch 7"):
        all_batches(gray, start_batch=7)
    with pytest.raises(UsageError, match="crop must be one of"):
        all_batches(gray, crop="zoom")
    with pytest.raises(UsageError, match="rank 2"):
        all_batches(gray, rank=2, world_size=2)


def test_eval_shards_cover_all(gray):
    seen = [
        torch.cat([b.index for b in eval_batches(gray, batch_size=7, image_size=20, rank=r, world_size=3)])
        for r in range(3)
    ]
    assert torch.cat(seen).tolist() == list(range(100))
    assert next(eval_batches(gray, batch_size=7, image_size=20)).x.shape == (7, 1, 20, 20)


# ------------------------------------------------------------------ augmentation pieces
def test_reflect_and_pad_crop():
    assert _reflect(torch.arange(-2, 6), 4).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.uint8).view(2, 3, 5, 6)
    assert torch.equal(pad_crop_flip(x, torch.Generator().manual_seed(0), pad=0, hflip=False), x)
    g = torch.Generator().manual_seed(1)
    out = pad_crop_flip(x, g, pad=2, hflip=False)
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for i in range(2):  # every output is a window of the reflect-padded image
        windows = [padded[i, :, r : r + 5, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i].float(), w) for w in windows)


def test_random_resized_boxes_in_range():
    boxes = random_resized_boxes(500, 30, 40, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (
        (boxes[:, 0] >= 0).all()
        and (boxes[:, 1] >= 0).all()
        and (boxes[:, 2] <= 40).all()
        and (boxes[:, 3] <= 30).all()
    )
    frac = w * h / 1200
    assert (frac >= 0.07).all() and (frac <= 1).all() and ((w / h) <= 4 / 3 + 0.1).all()


def test_scaled_randaugment_matches_torchvision_at_10():
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = ScaledRandAugment(2, 10.0)
    theirs = v2.RandAugment(2, magnitude=30, num_magnitude_bins=31, fill=128)
    for s in range(20):
        with seeded_cpu_rng(s):
            a = ours(x)
        with seeded_cpu_rng(s):
            b = theirs(x)
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("shape", "chunk", "num_ops", "m"),
    [
        ((256, 1, 28, 28), 8, 2, 2.0),
        ((37, 1, 24, 24), 8, 2, 15.0),
        ((20, 3, 16, 20), 3, 3, 9.0),
        ((5, 3, 8, 8), 8, 1, 5.0),
    ],
)
@pytest.mark.parametrize("group_max_bytes", [1 << 18, 0])  # grouped, and one call per chunk (large images)
def test_randaugment_chunks_equals_one_call_per_chunk(shape, chunk, num_ops, m, group_max_bytes):
    """Grouping chunks that drew the same op into one call changes nothing: same images, same RNG after."""
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ra = ScaledRandAugment(num_ops, m)
    changed = []
    for s in range(6):
        with seeded_cpu_rng(s):
            grouped, after_grouped = randaugment_chunks(x, ra, chunk, group_max_bytes=group_max_bytes), torch.rand(3)
        with seeded_cpu_rng(s):
            per_chunk, after_per_chunk = torch.cat([ra(p) for p in x.split(chunk)]), torch.rand(3)
        assert torch.equal(grouped, per_chunk) and torch.equal(after_grouped, after_per_chunk)
        changed.append(not torch.equal(grouped, x))
    assert any(changed)  # the ops did something (a single chunk may draw Identity for one seed)


def test_file_transforms_pickle_for_spawned_workers():
    import pickle

    from effv2.data.augment import file_train_transform

    t = file_train_transform(image_size=16, crop="auto", hflip=True, randaug_ops=2, randaug_magnitude=12.0)
    x = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    with seeded_cpu_rng(3):
        a = t(x)
    with seeded_cpu_rng(3):
        b = pickle.loads(pickle.dumps(t))(x)
    assert a.shape == (3, 16, 16) and torch.equal(a, b)


def test_scaled_randaugment_extrapolates_and_clamps():
    def value(m, op):
        fn = ScaledRandAugment(2, m)._AUGMENTATION_SPACE[op][0]
        return float(fn(1, 32, 32)[0])

    assert value(15, "Rotate") == pytest.approx(45.0) and value(5, "ShearX") == pytest.approx(0.15)
    assert value(15, "Brightness") == pytest.approx(0.99) and value(15, "Solarize") == 0.0
    assert value(10, "Posterize") == 4 and value(25, "Posterize") == 1


# ------------------------------------------------------------------ file sets
def test_file_batches_same_for_0_and_2_workers(files):
    kw = dict(batch_size=4, image_size=16, cutmix_alpha=0)
    w0 = all_batches(files, **kw)
    assert len(w0) == 3 and w0[0].x.shape == (4, 3, 16, 16)
    assert same(w0, all_batches(files, num_workers=2, **kw))
    assert same(all_batches(files, start_batch=2, **kw), w0[2:])
    # the truncated file was replaced by the next index and reported
    bad = [r for b in w0 for r in b.bad]
    assert bad == [{"path": files.paths[5], "reason": bad[0]["reason"]}] and "truncated" in bad[0]["reason"]
    idx = torch.cat([b.index for b in w0]).tolist()
    assert 5 not in idx and idx.count(6) == 2


def test_file_eval_drops_bad_samples(files):
    got = list(eval_batches(files, batch_size=5, image_size=16))
    assert [len(b.y) for b in got] == [5, 4, 2]  # the batch holding the bad file is one short
    assert torch.cat([b.index for b in got]).tolist() == [i for i in range(12) if i != 5]
    assert [r["path"] for b in got for r in b.bad] == [files.paths[5]]


@pytest.mark.skipif(
    not os.path.isdir("/work/shared/data/fashion-mnist"), reason="shared Fashion-MNIST copy not present"
)
def test_fashion_mnist_batches():
    from effv2.data import load_source

    b = load_source("fashion-mnist", data_dir="/work/shared/data/fashion-mnist")
    batch = next(train_batches(b.train, **{**KW, "batch_size": 256}))
    assert batch.x.shape == (256, 1, 28, 28) and batch.y.shape == (256, 10)
