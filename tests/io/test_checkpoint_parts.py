"""Checkpoint parts (format version 2): a GradScaler's and a task's own state round-trip, missing
parts are refused or optional, version-1 files still load, and bad input is refused before any
file is written or any part is changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from effv2.errors import UsageError
from effv2.io.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from effv2.training.ema import make_ema
from effv2.training.tasks import Task

pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers ----------------------------------------------------------------------------------------
def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _trained(seed: int = 0, steps: int = 3) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """A small model, its EMA and an AdamW with non-trivial state after a few steps."""
    model = _net(seed)
    ema = make_ema(model, 0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(seed + 100)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 4, generator=g)).square().mean().backward()
        opt.step()
        ema.update_parameters(model)
    return model, ema, opt


def _fresh(seed: int = 1) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    model = _net(seed)
    return model, make_ema(model, 0.5), torch.optim.AdamW(model.parameters(), lr=0.1)


def _snapshot(obj) -> dict:
    """A deep copy of a state_dict (tensors cloned) to compare against later."""

    def copy(v):
        if isinstance(v, torch.Tensor):
            return v.detach().clone()
        if isinstance(v, dict):
            return {k: copy(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(copy(x) for x in v)
        return v

    return copy(obj.state_dict())


def _same(a, b) -> bool:
    """Exact equality of nested state_dicts: tensors bitwise (and same dtype), the rest by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _scaler_after_steps() -> torch.amp.GradScaler:
    """A GradScaler whose scale backed off once (an inf gradient) and whose growth tracker is 1."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    for v in (1.0, float("inf"), 1.0):
        opt.zero_grad()
        scaler.scale((p * v).sum()).backward()
        scaler.step(opt)
        scaler.update()
    return scaler


class CountingTask(Task):
    """A task with its own state: a step counter (int64) and a running float tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("penalty", torch.zeros(3))

    def forward(self, batches, step):  # pragma: no cover - not called here
        raise NotImplementedError


class StatelessTask(Task):
    def forward(self, batches, step):  # pragma: no cover - not called here
        raise NotImplementedError


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


# -- (a) GradScaler --------------------------------------------------------------------------------
def test_grad_scaler_state_round_trips_exactly(tmp_path):
    scaler = _scaler_after_steps()
    sd = scaler.state_dict()
    # the state really moved away from a fresh scaler's
    assert sd["scale"] == 512.0 and sd["_growth_tracker"] == 1 and sd["growth_interval"] == 2
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _net(), "scaler": scaler}, state={"step": 3})
    assert json.loads(_metadata(path)["parts"]) == {"model": "module", "scaler": "state"}

    fresh = torch.amp.GradScaler("cpu")
    assert fresh.state_dict() != sd
    load_checkpoint(path, {"model": _net(1), "scaler": fresh}, restore_rng_state=False)
    loaded = fresh.state_dict()
    assert loaded == sd
    assert type(loaded["scale"]) is float and type(loaded["_growth_tracker"]) is int
    assert fresh.get_scale() == 512.0


# -- (b) a task's own state ------------------------------------------------------------------------
def test_task_state_round_trips_and_the_model_is_stored_once(tmp_path):
    model = _net()
    task = CountingTask(model)
    task.steps.fill_(17)
    task.penalty.copy_(torch.tensor([0.25, -1.5, 3.0]))
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model, "task": task}, state={})

    keys = _keys(path)
    task_keys = sorted(k for k in keys if k.startswith("task/"))
    assert task_keys == ["task/penalty", "task/steps"]
    model_keys = {k for k in keys if k.startswith("model/")}
    assert model_keys == {f"model/{k}" for k in model.state_dict()}
    assert not any(k.startswith("task/model") for k in keys)

    model2 = _net(1)
    task2 = CountingTask(model2)
    load_checkpoint(path, {"model": model2, "task": task2}, restore_rng_state=False)
    assert task2.steps.dtype == torch.int64 and int(task2.steps) == 17
    assert torch.equal(task2.penalty, torch.tensor([0.25, -1.5, 3.0]))
    assert _same(model2.state_dict(), model.state_dict())
    assert task2.model is model2  # the task still wraps the model it was given


# -- (c) missing parts -----------------------------------------------------------------------------
def test_a_stateless_task_loads_from_a_file_without_a_task_part(tmp_path):
    model = _net()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model}, state={"epoch": 2})
    model2 = _net(1)
    ckpt = load_checkpoint(path, {"model": model2, "task": StatelessTask(model2)}, restore_rng_state=False)
    assert ckpt.state == {"epoch": 2}
    assert _same(model2.state_dict(), model.state_dict())


def test_a_stateful_task_missing_from_the_file_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _net()}, state={})
    model2 = _net(1)
    with pytest.raises(UsageError, match=r"no 'task' weights.*'task' part"):
        load_checkpoint(path, {"model": model2, "task": CountingTask(model2)}, restore_rng_state=False)


def test_a_missing_scaler_is_refused_clearly_unless_optional(tmp_path):
    model = _net()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model}, state={})
    model2, scaler = _net(1), torch.amp.GradScaler("cpu", init_scale=64.0)
    before = _snapshot(model2)
    with pytest.raises(UsageError) as info:
        load_checkpoint(path, {"model": model2, "scaler": scaler}, restore_rng_state=False)
    msg = str(info.value)
    assert "\n" not in msg and "'scaler'" in msg and str(path) in msg
    assert "no 'scaler' state" in msg
    assert _same(model2.state_dict(), before)  # refused: the model was not loaded either

    load_checkpoint(path, {"model": model2, "scaler": scaler}, restore_rng_state=False, optional=("scaler",))
    assert _same(model2.state_dict(), model.state_dict())
    assert scaler.get_scale() == 64.0  # kept its fresh state


# -- (d) version 1 ---------------------------------------------------------------------------------
def _rewrite_as_v1(src: Path, dst: Path) -> None:
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(meta["format_version"]) == FORMAT_VERSION == 2
    del meta["parts"]
    meta["format_version"] = json.dumps(1)
    save_file(tensors, str(dst), metadata=meta)


def test_a_version_1_checkpoint_loads_model_ema_and_optimizer_bitwise(tmp_path):
    model, ema, opt = _trained()
    v2, v1 = tmp_path / "v2.safetensors", tmp_path / "v1.safetensors"
    save_checkpoint(v2, {"model": model, "ema": ema, "optim": opt}, state={"step": 3}, recipe={"lr": 0.1})
    _rewrite_as_v1(v2, v1)
    assert "parts" not in _metadata(v1) and _metadata(v1)["format_version"] == "1"

    model2, ema2, opt2 = _fresh()
    ckpt = load_checkpoint(v1, {"model": model2, "ema": ema2, "optim": opt2}, restore_rng_state=False)
    assert ckpt.state == {"step": 3} and ckpt.recipe == {"lr": 0.1}
    assert ckpt.meta["format_version"] == 1
    assert _same(model2.state_dict(), model.state_dict())
    assert _same(ema2.state_dict(), ema.state_dict())  # includes n_averaged
    assert int(ema2.n_averaged) == 3
    assert _same(opt2.state_dict(), opt.state_dict())
    assert ckpt.model_state is None and ckpt.ema_state is None  # loaded into the parts


def test_a_version_1_checkpoint_names_the_parts_it_cannot_have(tmp_path):
    model, ema, opt = _trained()
    v2, v1 = tmp_path / "v2.safetensors", tmp_path / "v1.safetensors"
    save_checkpoint(v2, {"model": model, "ema": ema, "optim": opt}, state={})
    _rewrite_as_v1(v2, v1)
    model2, ema2, opt2 = _fresh()
    parts = {
        "model": model2,
        "ema": ema2,
        "optim": opt2,
        "scaler": torch.amp.GradScaler("cpu"),
        "task": StatelessTask(model2),
    }
    with pytest.raises(UsageError, match="no 'scaler' state"):
        load_checkpoint(v1, parts, restore_rng_state=False)
    load_checkpoint(v1, parts, restore_rng_state=False, optional=("scaler",))
    assert _same(model2.state_dict(), model.state_dict())
    assert _same(opt2.state_dict(), opt.state_dict())


def test_a_version_1_checkpoint_without_optimizer_treats_it_as_missing(tmp_path):
    model = _net()
    v2, v1 = tmp_path / "v2.safetensors", tmp_path / "v1.safetensors"
    save_checkpoint(v2, {"model": model}, state={})
    _rewrite_as_v1(v2, v1)
    model2 = _net(1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    load_checkpoint(v1, {"model": model2, "optim": opt2}, restore_rng_state=False, optional=("optim",))
    assert _same(model2.state_dict(), model.state_dict())


# -- (e) bad parts are refused before writing ------------------------------------------------------
class NoState:
    pass


class HalfState:
    def state_dict(self):
        return {}


@pytest.mark.parametrize(
    "parts, message",
    [
        ({"model": None, "thing": NoState()}, "must have state_dict() and load_state_dict(), got NoState"),
        ({"thing": HalfState()}, "got HalfState"),
        ({"rng": torch.amp.GradScaler("cpu")}, "part name 'rng'"),
        ({"extra": torch.amp.GradScaler("cpu")}, "part name 'extra'"),
        ({"wrapper": nn.Linear(2, 2)}, "part name 'wrapper'"),
        ({"Bad-Name": nn.Linear(2, 2)}, "part name 'Bad-Name'"),
        ({"9lives": nn.Linear(2, 2)}, "part name '9lives'"),
    ],
)
def test_bad_parts_are_refused_before_any_file_is_written(tmp_path, parts, message):
    path = tmp_path / "run" / "c.safetensors"
    with pytest.raises(UsageError) as info:
        save_checkpoint(path, {"model": nn.Linear(2, 2), **parts}, state={})
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # not even the folder


def test_a_refused_save_leaves_the_previous_checkpoint_untouched(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _net()}, state={"n": 1})
    data = path.read_bytes()
    with pytest.raises(UsageError):
        save_checkpoint(path, {"model": _net(), "Bad-Name": _net()}, state={"n": 2})
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no .prev, no temp


# -- (f) a refused load changes nothing ------------------------------------------------------------
def test_a_refused_load_leaves_every_part_and_the_rng_unchanged(tmp_path):
    model, ema, opt = _trained()
    task = CountingTask(model)
    task.steps.fill_(5)
    path = tmp_path / "c.safetensors"
    save_checkpoint(
        path, {"model": model, "ema": ema, "task": task, "scaler": _scaler_after_steps(), "optim": opt}, state={}
    )

    model2, ema2, _ = _fresh()
    sgd = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)  # another optimizer class
    model2(torch.randn(4, 4)).sum().backward()
    sgd.step()  # give it momentum state to protect
    task2, scaler2 = CountingTask(model2), torch.amp.GradScaler("cpu", init_scale=8.0)
    task2.penalty.fill_(-2.0)
    parts = {"model": model2, "ema": ema2, "task": task2, "scaler": scaler2, "optim": sgd}
    before = {k: _snapshot(v) for k, v in parts.items()}
    torch.rand(10)  # the global RNG moved on since the save
    rng_before = torch.get_rng_state()

    with pytest.raises(UsageError, match="optimizer mismatch: file has AdamW state, the optimizer is SGD"):
        load_checkpoint(path, parts, restore_rng_state=True)
    for name, part in parts.items():
        assert _same(part.state_dict(), before[name]), name
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_a_task_state_of_another_shape_is_refused_before_anything_changes(tmp_path):
    model, ema, opt = _trained()
    task = CountingTask(model)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model, "ema": ema, "optim": opt, "task": task}, state={})

    model2, ema2, opt2 = _fresh()
    task2 = CountingTask(model2)
    task2.penalty = torch.zeros(4)  # another shape than the saved (3,)
    parts = {"model": model2, "ema": ema2, "optim": opt2, "task": task2}
    before = {k: _snapshot(v) for k, v in parts.items()}
    with pytest.raises(UsageError, match=r"\(task\): architecture mismatch at 'penalty'"):
        load_checkpoint(path, parts, restore_rng_state=False)
    for name, part in parts.items():
        assert _same(part.state_dict(), before[name]), name


def test_a_scaler_state_that_does_not_load_changes_nothing(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _net(), "scaler": torch.amp.GradScaler("cpu", enabled=False)}, state={})
    model2 = _net(1)
    before = _snapshot(model2)
    with pytest.raises(UsageError):
        load_checkpoint(path, {"model": model2, "scaler": torch.amp.GradScaler("cpu")}, restore_rng_state=False)
    assert _same(model2.state_dict(), before)
