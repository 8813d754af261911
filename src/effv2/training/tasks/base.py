"""The task seam: the base class every training technique derives from."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ...runtime import Runtime


class Task(nn.Module):
    """Owns what one training step computes; the loop owns everything every task shares.

    - ``model`` is the network being trained (the one the optimizer steps, the one DDP wraps and the
      one saved as the checkpoint's "model"); a task may hold more modules (a teacher, auxiliary
      heads): they are its own state.
    - :meth:`forward` returns a dict of scalar tensors with at least ``"loss"``.
    - :meth:`on_stage` is called when a progressive stage begins (adaptive regularization);
      :meth:`after_step` after every optimizer step that was taken (EMA teachers, schedules).
    - ``state_dict()`` holds the task's own state only (not ``model``, which the checkpoint stores
      as "model"), so a stateless task saves nothing and a new one needs no checkpoint change.
    """

    name: ClassVar[str] = "task"
    streams: ClassVar[tuple[str, ...]] = ("labelled",)  # the data streams forward() reads
    # whether a step may cut the batch into shards trained by copies of this task in parallel
    # (runtime/replicas.py): the copies share the parameters and follow the buffers and plain attributes
    # each step; a task whose loss is not a mean over the batch's rows, or that keeps other state
    # changed in forward(), sets this False. Randomness in forward() must come from
    # runtime.replicas.local_generator() when it is set
    replicable: ClassVar[bool] = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.__dict__["_net"] = model  # what forward calls: the model, or its DDP/compiled wrapper
        self.__dict__["_runtime"] = Runtime()

    @classmethod
    def from_recipe(cls, model: nn.Module, recipe: Any) -> Task:
        """Build from the recipe; each task reads its own keys."""
        return cls(model)

    # -- set by the loop ------------------------------------------------------------------------
    def bind(self, net: nn.Module, runtime: Runtime) -> Task:
        """Call ``net`` (a DDP or compiled wrapper of ``model``) under ``runtime``'s precision."""
        self.__dict__["_net"] = net
        self.__dict__["_runtime"] = runtime
        return self

    @property
    def net(self) -> nn.Module:
        return self._net

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self._runtime.autocast()

    # -- hooks ----------------------------------------------------------------------------------
    def forward(self, batches: Mapping[str, Any], step: int) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def on_stage(self, stage: Any) -> None:
        """Adaptive regularization: the stage sets dropout and stochastic depth on the model."""
        if hasattr(self.model, "set_drop_rate"):
            self.model.set_drop_rate(stage.dropout)
        if hasattr(self.model, "set_drop_path_rate"):
            self.model.set_drop_path_rate(stage.drop_path)

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (0-based) was applied."""

    # -- the task's own state -------------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        return OrderedDict((k, v) for k, v in sd.items() if not k.startswith(prefix + "model."))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        own = set(self.state_dict())
        missing = sorted(own - set(state_dict))
        unexpected = sorted(set(state_dict) - own)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"task {self.name}: state does not fit (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        return super().load_state_dict(dict(state_dict), strict=False, assign=assign)
