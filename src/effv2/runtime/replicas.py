"""Data parallelism across the CPU's cores inside one process: each core trains a shard of the batch.

On a 2-core CPU, one training step of a small model with torch's two intra-op threads spends much of
its time in work that does not split well between threads: BatchNorm reductions over a few dozen
channels (ATen's channels-last kernels share cache lines between the threads, benchmarks/bn_width.py),
small depthwise convolutions, elementwise ops on 16x16 maps, and a thread wake-up per op. Giving each
core its own half of the batch instead, one thread each, keeps both cores busy with whole ops.
fp32, channels_last, 2-core Zen 3 (AVX2), this step against one batch on 2 threads, interleaved in one
process (``effv2 bench --mode train``, its "effv2 1 replica" row): the demo's model at 28 px batch 256
1.14x the img/s, efficientnetv2_b0 at 128 px batch 32 1.02-1.07x; a 10-minute demo run trained 14-15%
more steps (benchmarks/RESULTS.md, "Replicas across cores" and "effv2 bench against timm on the Zen 3
with replicas").

How a replicated step runs (:class:`Replicas`, called by training/step.py):

- replica 0 is the task itself; replica i > 0 is a deep copy whose parameters share the original's
  storage (the optimizer's in-place update reaches every replica) and have their own ``.grad``;
- before each step every replica copies the original's buffers (BatchNorm statistics: as DDP's
  ``broadcast_buffers``) and its plain attributes (dropout rates set by a progressive stage, the
  training flag, a task's knobs);
- every stream of the batch is cut into equal consecutive shards; shard i runs forward and backward
  on replica i in worker thread i with ``threads // n`` intra-op threads; its loss is weighted by its
  share of the rows, so the summed gradient is the full batch's mean-loss gradient, as under DDP;
- the replicas' gradients are added into the original's in replica order (a fixed order: the same
  numbers every run), and the returned parts are the weighted means of the shards' parts;
- BatchNorm normalises each shard with its own statistics (what DDP does per process without SyncBN),
  and replica 0's running statistics are the ones kept (as DDP keeps rank 0's);
- randomness inside the forward (dropout, stochastic depth) draws from a generator per shard, seeded
  every step from torch's global generator in the calling thread (:func:`local_generator`): a
  replicated run is as deterministic as an unreplicated one, and ``--resume`` needs no new state.

When (:func:`resolve_replicas`): ``replicas: auto`` trains ``torch.get_num_threads()`` replicas on a
CPU in fp32 (no native bf16: the only kind measured so far), one process (torchrun's ranks are
already one per core group), eager (torch.compile's graphs are not shared between threads), with at
least ``MIN_SHARD`` images a shard; else 1. An integer asks for that many.
"""

from __future__ import annotations

import copy
import dataclasses
import queue
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UsageError

# fewer images a shard and the per-op overheads the replicas save come back (b0 at 128 px: 16 a shard
# was measured faster than one 32-image batch on 2 threads; smaller shards were not measured)
MIN_SHARD = 16

_local = threading.local()


# -- randomness per shard ---------------------------------------------------------------------------
def recorded_replicas(recipe: Mapping[str, Any]) -> int:
    """The count a recorded run (config.json's recipe) trained: a run from before the key, one."""
    n = recipe.get("replicas", 1)
    return n if isinstance(n, int) else 1


def local_generator() -> torch.Generator | None:
    """The generator this thread's stochastic layers draw from (None: torch's global one)."""
    return getattr(_local, "generator", None)


def _set_generator(g: torch.Generator | None) -> None:
    _local.generator = g


# -- the decision -----------------------------------------------------------------------------------
def resolve_replicas(
    setting: str | int,
    *,
    device: torch.device,
    amp: str,
    batch_size: int | None,
    compile: bool,
    world_size: int,
    threads: int | None = None,
) -> tuple[int, str]:
    """How many replicas a step trains, and why (pure given ``threads``, default torch's intra-op threads)."""
    threads = torch.get_num_threads() if threads is None else threads
    if setting != "auto":
        n = int(setting)
        if n < 1:
            raise UsageError(f"replicas: {setting!r} must be auto or an integer >= 1")
        if n > 1:
            if device.type != "cpu":
                raise UsageError(f"replicas: {n} replicas need a CPU device (got {device.type}); use 1 or auto")
            if compile:
                raise UsageError(f"replicas: {n} replicas train eager; torch.compile is on (compile: false, or 1)")
            if world_size > 1:
                raise UsageError(f"replicas: {n} replicas run in one process; under torchrun use 1 or auto")
            if amp == "fp16":
                raise UsageError(f"replicas: {n} replicas train without a GradScaler; amp fp16 needs one (use 1)")
            if batch_size is not None and batch_size < 2 * n:
                raise UsageError(
                    f"replicas: {n} replicas need at least {2 * n} images a batch (2 a shard), not {batch_size}"
                )
        return n, "asked for"
    if device.type != "cpu":
        return 1, f"one: {device.type} (replicas are for CPU cores)"
    if world_size > 1:
        return 1, "one: torchrun already runs a process per core group"
    if compile:
        return 1, "one: torch.compile is on"
    if amp != "none":
        return 1, f"one: {amp} on this CPU (replicas measured in fp32 only)"
    if threads < 2:
        return 1, "one: one intra-op thread"
    n = min(threads, (batch_size or 0) // MIN_SHARD)
    if n < 2:
        return 1, f"one: batch {batch_size} under {2 * MIN_SHARD} ({MIN_SHARD} images a replica at least)"
    return n, f"{n}: fp32 on {threads} threads, a shard of the batch per core (1.02-1.14x on a 2-core Zen 3)"


# -- cutting a batch --------------------------------------------------------------------------------
def _cut(value: Any, lo: int, hi: int, rows: int, name: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value[lo:hi] if value.ndim and value.shape[0] == rows else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows:
                fields[f.name] = v[lo:hi]
            elif isinstance(v, list):
                fields[f.name] = v if lo == 0 else type(v)()  # per-batch notes (files skipped): shard 0's
            else:
                fields[f.name] = v
        return dataclasses.replace(value, **fields)
    raise TypeError(f"replicas: stream {name!r} holds a {type(value).__name__}, which effv2 cannot cut into shards")


def _rows(value: Any, name: str) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.shape[0])
    x = getattr(value, "x", None)
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    raise TypeError(f"replicas: stream {name!r} holds a {type(value).__name__} with no batch dimension effv2 can find")


def shard_batches(batches: Mapping[str, Any], n: int) -> tuple[list[dict[str, Any]], list[float]]:
    """``n`` consecutive shards of every stream (rows ``B*i//n`` to ``B*(i+1)//n``) and each shard's
    weight: its share of the first stream's rows."""
    names = list(batches)
    rows = {k: _rows(batches[k], k) for k in names}
    shards = [
        {k: _cut(batches[k], rows[k] * i // n, rows[k] * (i + 1) // n, rows[k], k) for k in names} for i in range(n)
    ]
    first = rows[names[0]]
    weights = [((first * (i + 1) // n) - (first * i // n)) / first for i in range(n)]
    return shards, weights


# -- the replicas -----------------------------------------------------------------------------------
_PLAIN = (bool, int, float, str, type(None))


def _replica(task: nn.Module) -> nn.Module:
    """A deep copy of ``task`` whose parameters share the original's storage (own ``.grad``)."""
    memo: dict[int, Any] = {}
    for p in task.parameters():
        memo[id(p)] = nn.Parameter(p.data, requires_grad=p.requires_grad)
    return copy.deepcopy(task, memo)


def _follow(src: nn.Module, dst: nn.Module, src_buffers: list[torch.Tensor], dst_buffers: list[torch.Tensor]) -> None:
    """``dst`` takes ``src``'s buffers and plain attributes (module by module, in module order)."""
    if src_buffers:
        torch._foreach_copy_(dst_buffers, src_buffers)
    for a, b in zip(src.modules(), dst.modules()):
        bd = b.__dict__
        for k, v in a.__dict__.items():
            if type(v) in _PLAIN:
                bd[k] = v


class _Worker(threading.Thread):
    """A daemon thread with ``threads`` intra-op threads of its own, running one job at a time."""

    def __init__(self, threads: int) -> None:
        super().__init__(daemon=True, name="effv2-replica")
        self.threads = threads
        self.jobs: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self.results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.ready = threading.Event()

    def run(self) -> None:
        # no local may keep a finished job (and through it the replicas, the model and the last batch)
        # alive while the thread waits for the next one: the owner could never be collected
        # this thread's OpenMP team size (a per-thread setting in libgomp). get_num_threads first: ATen
        # initialises a thread's count lazily, from the process-wide value, at its first parallel op,
        # which would otherwise undo the set_num_threads below once the calling thread restores its own
        torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.ready.set()
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                result: tuple[bool, Any] = (True, job())
            except BaseException as exc:  # re-raised in the calling thread
                result = (False, exc)
            job = None
            self.results.put(result)
            result = None  # type: ignore[assignment]


def _stop_workers(workers: list[_Worker]) -> None:
    for w in workers:
        w.jobs.put(None)


class Replicas:
    """``n`` replicas of ``task`` and a worker thread each; :meth:`forward_backward` is one step's
    forward and backward over a batch cut into ``n`` shards (module docstring)."""

    def __init__(self, task: nn.Module, n: int, *, threads: int | None = None) -> None:
        if n < 2:
            raise ValueError("Replicas needs n >= 2")
        self.task, self.n = task, n
        total = torch.get_num_threads() if threads is None else threads
        self.copies = [_replica(task) for _ in range(n - 1)]
        if task.net is not task.model:
            raise ValueError(
                "replicas: the task is bound to a wrapped net (DDP or torch.compile); replicas train eager"
            )
        for c in self.copies:  # each copy calls its own model
            c.bind(c.model, task.runtime)
        self.params = [p for p in task.parameters() if p.requires_grad]
        self.copy_params = [[p for p in c.parameters() if p.requires_grad] for c in self.copies]
        self.buffers = list(task.buffers())
        self.copy_buffers = [list(c.buffers()) for c in self.copies]
        self.workers = [_Worker(max(1, total // n)) for _ in range(n)]
        for w in self.workers:
            w.start()
        for w in self.workers:
            w.ready.wait()
        torch.set_num_threads(total)  # the workers' set_num_threads also set torch's default for new threads
        self._stop = weakref.finalize(self, _stop_workers, self.workers)
        # not at interpreter exit: a worker woken then is ended by the interpreter inside torch's C++
        # frames (std::terminate, exit code 134); left blocked on its queue it simply ends with the process
        self._stop.atexit = False

    def close(self) -> None:
        """Stop the worker threads (also done when the object is collected)."""
        self._stop()

    def forward_backward(self, batches: Mapping[str, Any], index: int) -> dict[str, torch.Tensor]:
        """Forward and backward of every shard; the original's ``.grad`` then holds the sum of the
        replicas' (weighted) gradients. Returns the weighted mean of the shards' parts."""
        for c, bufs in zip(self.copies, self.copy_buffers):
            _follow(self.task, c, self.buffers, bufs)
            c.zero_grad(set_to_none=True)
        self.task.zero_grad(set_to_none=True)
        shards, weights = shard_batches(batches, self.n)
        # one seed a shard, drawn here from the global generator: the same numbers every run
        seeds = torch.randint(0, 2**62, (self.n,)).tolist()
        replicas = [self.task, *self.copies]
        name = self.task.name

        def job(i: int) -> Callable[[], dict[str, torch.Tensor]]:
            def run() -> dict[str, torch.Tensor]:
                _set_generator(torch.Generator().manual_seed(int(seeds[i])))
                try:
                    out = replicas[i](shards[i], index)
                    if "loss" not in out:
                        raise KeyError(f"task {name}: forward() must return a 'loss'")
                    (out["loss"] * weights[i]).backward()
                    return {k: v.detach() for k, v in out.items()}
                finally:
                    _set_generator(None)

            return run

        results: list[tuple[bool, Any]] = []
        try:
            for i, w in enumerate(self.workers):
                w.jobs.put(job(i))
            for w in self.workers:
                results.append(w.results.get())
        except BaseException:
            # interrupted while the shards run (Ctrl-C, a search trial's timeout): wait for every shard
            # before the exception goes on, so no worker is still writing the model's gradients and
            # buffers, or runs on into the interpreter's shutdown
            for w in self.workers[len(results) :]:
                w.results.get()
            raise
        for ok, value in results:
            if not ok:
                raise value
        outs = [value for _, value in results]
        for params in self.copy_params:  # in replica order: a fixed summation order
            into, add = [], []
            for p, q in zip(self.params, params):
                if q.grad is None:
                    continue
                if p.grad is None:
                    p.grad = q.grad
                else:
                    into.append(p.grad)
                    add.append(q.grad)
            if into:
                torch._foreach_add_(into, add)
            for q in params:
                q.grad = None
        return {k: sum(w * torch.as_tensor(o[k]).float() for w, o in zip(weights, outs)) for k in outs[0]}


def replicable(task: nn.Module) -> bool:
    return bool(getattr(task, "replicable", True))


__all__: Sequence[str] = (
    "MIN_SHARD",
    "Replicas",
    "local_generator",
    "recorded_replicas",
    "replicable",
    "resolve_replicas",
    "shard_batches",
)
