"""torchrun / DDP plumbing: set-up and the few collectives the loop needs.

gloo on CPU, NCCL on CUDA; rank 0 writes logs and checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> Dist:
    """Join the process group torchrun set up (RANK/WORLD_SIZE/LOCAL_RANK); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return Dist(rank=rank, world_size=world, local_rank=local)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_true(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (used so all ranks skip a bad step together)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: object, d: Dist) -> list[object]:
    """Every rank's ``obj`` (JSON-like values), in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


class RankRNG:
    """A checkpoint part holding every rank's global RNG states (dropout and stochastic-depth masks
    differ between ranks): gathered to the writer before a save, each rank restores its own."""

    def __init__(self, d: Dist) -> None:
        self.dist = d
        self._states: list[object] = []

    def gather(self) -> None:
        """Collective: call on every rank before the checkpoint is written."""
        from ..io.rng import capture_rng

        self._states = gather_objects(capture_rng(), self.dist)

    def state_dict(self) -> dict[str, object]:
        return {"ranks": [{"json": j, "tensors": t} for j, t in self._states]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        from ..io.rng import restore_rng

        ranks = state["ranks"]
        if len(ranks) != self.dist.world_size:
            raise ValueError(f"saved by {len(ranks)} processes, resumed with {self.dist.world_size}")
        mine = ranks[self.dist.rank]
        restore_rng(mine["json"], mine["tensors"])
