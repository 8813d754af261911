"""Cross-replica BatchNorm for multi-process training (the recipe's ``sync_bn``).

The official code trains with cross-replica BN on TPUs: main.py:78-79 @6a54c87 sets
``bn_type = 'tpu_bn'`` whenever it runs on TPU, and utils.py:173-206 (``TpuBatchNormalization``)
normalises with the mean and mean of squares averaged over all replicas. Here:

- CUDA: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (torch's own, NCCL);
- CPU (gloo): torch 2.14's SyncBatchNorm raises "SyncBatchNorm expected input tensor to be on GPU"
  for CPU tensors, so :class:`CrossReplicaBatchNorm2d` does what TpuBatchNormalization does: the
  per-channel sum, sum of squares and count are summed over the processes with a differentiable
  all-reduce (``torch.distributed.nn.functional.all_reduce``), and the batch statistics and the
  running statistics (unbiased variance, as BatchNorm2d) come from those totals.

``sync_bn`` "auto" turns it on for multi-process CUDA runs; true also for CPU runs; a single
process never converts (there is nothing to synchronise). The converted modules keep the
parameter and buffer names, so checkpoints load either way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def resolve_sync_bn(setting: str | bool, world_size: int, device_type: str) -> bool:
    """Whether to convert: never for one process; "auto" only on CUDA; true on any device."""
    if world_size <= 1 or setting is False:
        return False
    if setting == "auto":
        return device_type == "cuda"
    if setting is True:
        return True
    raise ValueError(f"sync_bn must be 'auto', true or false, got {setting!r}")


class CrossReplicaBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch (all processes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        xf = x.float()
        count = torch.full((1,), float(xf.numel() // C), device=x.device)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), xf.square().sum(dim=(0, 2, 3)), count])  # (2C + 1,)
        stats = all_reduce(stats)  # differentiable sum over the processes
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C : 2 * C] / n - mean.square()).clamp_min(0.0)  # biased, for normalising
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def _replace(module: nn.Module, cls: type[nn.modules.batchnorm._BatchNorm]) -> nn.Module:
    """Every plain BatchNorm2d of ``module`` as ``cls``, sharing its parameters and buffers.

    Subclasses (DualBatchNorm2d routes between two BNs) are left as they are, with their subtree.
    """
    if type(module) is nn.BatchNorm2d:
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        return out.train(module.training)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module
    for name, child in module.named_children():
        new = _replace(child, cls)
        if new is not child:
            setattr(module, name, new)
    return module


def convert_sync_bn(model: nn.Module, device_type: str) -> nn.Module:
    """``model`` with cross-replica BN: torch's SyncBatchNorm on CUDA, CrossReplicaBatchNorm2d on CPU.

    In place below the root (the root is returned, a new module only if it is a BatchNorm2d itself).
    """
    return _replace(model, CrossReplicaBatchNorm2d if device_type == "cpu" else nn.SyncBatchNorm)


__all__ = ["CrossReplicaBatchNorm2d", "convert_sync_bn", "resolve_sync_bn"]
