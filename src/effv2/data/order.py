"""Which samples go where: seeds, epoch permutations, rank shards, stratified splits.

Everything here is a pure function of its arguments. That is the data layer's key design rule:
the shuffle order is a function of (seed, epoch), and all augmentation randomness of training
batch b is a function of (seed, epoch, b, rank), so an interrupted epoch resumes exactly at any
batch and a run gives the same batches whatever the number of loader workers.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence

import torch

from ..errors import UsageError


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a stable hash of ``parts`` (same on every machine and Python run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Run the block with the global CPU generator seeded to ``seed``, then restore its state.

    torchvision's v2 transforms (RandAugment, MixUp, CutMix, RandomResizedCrop) draw from the
    global CPU generator and take no generator argument, so this is how their draws are made a
    function of our seed. Unlike ``torch.manual_seed`` it leaves the CUDA generators alone, so the
    trainer's own random state (dropout, stochastic depth) is never disturbed.
    """
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def steps_per_epoch(n_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Training batches per rank and epoch; the tail that does not fill a global batch is dropped."""
    if batch_size < 1 or world_size < 1 or n_samples < 0:
        raise UsageError(f"steps_per_epoch: need batch_size >= 1 and world_size >= 1, got {batch_size}, {world_size}")
    return n_samples // (batch_size * world_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's shuffle order: int64 (n,), identical on every rank."""
    return torch.randperm(n, generator=generator(derive_seed(seed, epoch, "perm")))


def train_batch_positions(batch: int, *, batch_size: int, rank: int, world_size: int) -> range:
    """Positions in the epoch permutation that rank ``rank`` uses for its batch ``batch``.

    Global batch b is permutation[b*B*W : (b+1)*B*W]; rank r takes its r-th block of B. So the
    ranks' batches are disjoint, and with world_size 1 and batch B*W one process sees exactly the
    union of what W processes see.
    """
    start = (batch * world_size + rank) * batch_size
    return range(start, start + batch_size)


def eval_shard(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` eval samples: shards are disjoint and cover 0..n-1.

    Sizes differ by at most one; no sample is padded or repeated, so summing per-rank counts
    (all-reduce) gives exact totals.
    """
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not in 0..{world_size - 1}")
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def stratified_split(
    labels: Sequence[int] | torch.Tensor, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split sample indices into (train, val), class by class, reproducibly from ``seed``.

    Each class with n >= 2 samples gives max(1, round(n * val_fraction)) of them (at most n - 1)
    to val; a class with a single sample stays in train. Both lists come back sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    if val_fraction == 0.0 or labels_t.numel() == 0:
        return list(range(labels_t.numel())), []
    val: list[torch.Tensor] = []
    for cls in torch.unique(labels_t).tolist():
        members = torch.nonzero(labels_t == cls).flatten()
        n = members.numel()
        if n < 2:
            continue
        k = min(n - 1, max(1, round(n * val_fraction)))
        order = torch.randperm(n, generator=generator(derive_seed(seed, cls, "split")))
        val.append(members[order[:k]])
    val_idx = torch.cat(val).sort().values if val else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(labels_t.numel(), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten().tolist(), val_idx.tolist()
