"""effv2.io.checkpoint: one safetensors file per checkpoint, atomic, exact, never unpickled."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import effv2.io.checkpoint as ckpt_mod
from effv2 import create_model
from effv2.errors import UsageError
from effv2.io.checkpoint import (
    Checkpoint,
    CheckpointVersionWarning,
    CheckpointWriteError,
    checkpoint_path,
    find_checkpoint,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from effv2.io.weights import save_weights

PICO = "efficientnetv2_pico"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers -----------------------------------------------------------------------------------------
def _model(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(PICO, num_classes=num_classes)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 2, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _step(optimizer: torch.optim.Optimizer, seed: int = 1) -> None:
    """An optimizer step on random gradients: fills the optimizer state without a forward pass."""
    g = torch.Generator().manual_seed(seed)
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a, b, where: str = "") -> None:
    """Equal in type and value; tensors equal bitwise with the same dtype, shape and device."""
    if not (isinstance(a, dict) and isinstance(b, dict)):  # OrderedDict (state_dict) vs dict is fine
        assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), where
        assert _bits(a) == _bits(b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a, key=str)} != {sorted(b, key=str)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


class ToyOptimizer(torch.optim.Optimizer):
    """Arbitrary state: python int and tuple, int64 / bool / bf16 tensors, a list of tensors;
    tuples and a non-string key inside the param group."""

    def __init__(self, params, lr: float = 0.1, betas: tuple[float, float] = (0.5, 0.25)):
        super().__init__(params, dict(lr=lr, betas=betas, schedule={"kind": "toy", 2: (1, "two")}))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(
                        step=0,
                        buf=torch.zeros_like(p),
                        count=torch.zeros((), dtype=torch.int64),
                        history=[],
                        pair=(0, 0.0),
                    )
                st["step"] += 1
                st["buf"].mul_(group["betas"][0]).add_(p.grad)
                st["count"] += 2**40  # beyond float32's exact integers: a cast would show
                st["history"] = (st["history"] + [p.grad.norm().reshape(1)])[-2:]
                st["pair"] = (st["step"], float(p.grad.abs().max()))
                st["half"] = st["buf"].to(torch.bfloat16)
                st["flag"] = p.grad > 0
                p.add_(st["buf"], alpha=-group["lr"])


def _groups(model: nn.Module) -> list[dict]:
    """Two groups as a trainer makes them: decayed weights and undecayed biases / BN."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": 1e-2}, {"params": rest, "weight_decay": 0.0, "lr": 0.05}]


OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.8, 0.99)),
    "adamw_tensor_lr": lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(1e-3)),
    "custom": lambda ps: ToyOptimizer(ps),
}


# -- round trips ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_state_round_trips_bitwise_and_resumes_identically(tmp_path, name):
    model = _model()
    opt = OPTIMIZERS[name](_groups(model))
    _train(model, opt)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"model": model, "optim": opt}, state={"epoch": 1})

    model2 = _model(seed=7)
    opt2 = OPTIMIZERS[name](_groups(model2))
    for g in opt2.param_groups:  # different hyperparameters: the file's must win
        g["lr"] = 0.5 if not isinstance(g["lr"], torch.Tensor) else torch.tensor(0.5)
    load_checkpoint(path, {"model": model2, "optim": opt2})
    assert_same(model.state_dict(), model2.state_dict(), "model")
    assert_same(opt.state_dict(), opt2.state_dict(), "optim")
    if name == "adamw":
        assert isinstance(opt2.state_dict()["state"][0]["step"], torch.Tensor)

    _train(model, opt, steps=1, seed=9)  # one more step each: the resumed run is the same run
    _train(model2, opt2, steps=1, seed=9)
    assert_same(model.state_dict(), model2.state_dict(), "after a step")
    assert_same(opt.state_dict(), opt2.state_dict(), "optim after a step")


def test_state_recipe_extra_round_trip_exactly(tmp_path):
    state = {
        "epoch": 3,
        "step": 1200,
        "stage": 1,
        "best_top1": -math.inf,
        "nan": math.nan,
        "sampler": {"epoch": 3, "position": (17, 4)},
        "by_rank": {0: [1, 2], 1: [3]},
        "looks_like_a_tag": {"__tuple__": [1, 2]},
        "text": "naïve ✓",
        "none": None,
        "flag": True,
        "big": 2**70,
        "np_scalar": np.float32(0.5),
    }
    recipe = {"epochs": 350, "lr": 0.256, "betas": (0.9, 0.999)}
    extra = {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "mask": torch.rand(5) > 0.5,
        "ids": torch.arange(10, dtype=torch.int64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _model()}, state=state, recipe=recipe, extra=extra)
    ck = load_checkpoint(path)
    assert isinstance(ck, Checkpoint) and ck.path == path
    expected = dict(state, np_scalar=0.5)  # numpy scalars come back as python numbers
    assert_same(expected, ck.state, "state")
    assert_same(recipe, ck.recipe, "recipe")
    assert_same(extra, ck.extra, "extra")
    assert ck.meta["card"]["name"] == PICO and ck.meta["num_classes"] == 10
    assert ck.meta["torch_version"] == torch.__version__
    assert_same(_model().state_dict(), ck.model_state, "model_state")  # kept when no model was given


def test_values_that_need_pickle_are_refused_before_writing(tmp_path):
    path = tmp_path / "c.safetensors"
    with pytest.raises(UsageError, match=r"state/t is a tensor; pass tensors through extra="):
        save_checkpoint(path, {"model": _model()}, state={"t": torch.zeros(2)})
    with pytest.raises(UsageError, match=r"state/when is of type object, which cannot be stored without pickle"):
        save_checkpoint(path, {"model": _model()}, state={"when": object()})
    assert not path.exists() and _temps(tmp_path) == []


def test_tensors_sharing_memory_are_saved(tmp_path):
    base = torch.arange(12.0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _model()}, state={}, extra={"a": base[:6], "b": base[6:], "same": base})
    ck = load_checkpoint(path)
    assert_same({"a": base[:6].clone(), "b": base[6:].clone(), "same": base}, ck.extra)


# -- wrapped models -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _wrap(model: nn.Module, how: str) -> nn.Module:
    if how == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if how == "compile":
        return torch.compile(model)  # OptimizedModule: keys get "_orig_mod."; compiling is lazy
    if how == "ddp+compile":
        return torch.compile(nn.parallel.DistributedDataParallel(model))
    return model


WRAPS = ["ddp", "compile", "ddp+compile"]
PAIRS = [("plain", "plain")] + [(w, "plain") for w in WRAPS] + [("plain", w) for w in WRAPS]


@pytest.mark.parametrize(("save_as", "load_as"), PAIRS)
def test_wrapped_and_plain_models_load_into_each_other(tmp_path, process_group, save_as, load_as):
    src = _model()
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    _step(opt)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _wrap(src, save_as), "optim": opt}, state={})
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert "model/stem.conv.weight" in keys and not any("module." in k or "_orig_mod" in k for k in keys)
    dst = _model(seed=5)
    opt2 = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
    load_checkpoint(path, {"model": _wrap(dst, load_as), "optim": opt2})
    assert_same(src.state_dict(), dst.state_dict())
    assert_same(opt.state_dict(), opt2.state_dict())


def test_averaged_model_ema_round_trips_with_n_averaged(tmp_path):
    model = _model()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(3):
        _step(opt, seed=i)
        ema.update_parameters(model)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model, "ema": ema}, state={})

    ema2 = AveragedModel(_model(seed=3), multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    load_checkpoint(path, {"model": _model(), "ema": ema2})
    assert_same(ema.state_dict(), ema2.state_dict())
    assert int(ema2.n_averaged) == 3

    plain = _model(seed=4)  # the EMA weights into a plain model (evaluation, export)
    ck = load_checkpoint(path, {"ema": plain})
    assert_same(ema.module.state_dict(), plain.state_dict())
    assert ck.ema_state is None and ck.model_state is not None

    # Saved from a plain module: loading into a fresh AveragedModel counts the weights as one
    # average, so the next update blends into them instead of overwriting them with the model.
    path2 = tmp_path / "plain_ema.safetensors"
    save_checkpoint(path2, {"model": model, "ema": plain}, state={})
    ema3 = AveragedModel(_model(seed=6), multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    load_checkpoint(path2, {"ema": ema3})
    assert int(ema3.n_averaged) == 1
    before = ema3.module.stem.conv.weight.clone()
    ema3.update_parameters(model)
    assert torch.allclose(ema3.module.stem.conv.weight, 0.9 * before + 0.1 * model.stem.conv.weight)


# -- refusals -------------------------------------------------------------------------------------------
def test_architecture_mismatch_names_first_differing_key_and_changes_nothing(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _model(num_classes=10)}, state={})
    other = _model(num_classes=12, seed=3)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(UsageError) as err:
        load_checkpoint(path, {"model": other})
    assert str(err.value) == (
        f"{path}: architecture mismatch at 'classifier.weight': shape (10, 64) in file, (12, 64) in model"
    )
    assert_same(before, other.state_dict())
    mini = create_model("efficientnetv2_mini", num_classes=10)
    with pytest.raises(
        UsageError,
        match=r"architecture mismatch at 'stem.conv.weight': shape \(8, 3, 3, 3\) "
        r"in file, \(24, 3, 3, 3\) in model",
    ):
        load_checkpoint(path, {"model": mini})


def test_optimizer_mismatch_is_refused_before_anything_changes(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(opt)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model, "optim": opt}, state={})
    fresh = _model(seed=9)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(UsageError, match="optimizer mismatch: file has SGD state, the optimizer is AdamW"):
        load_checkpoint(path, {"model": fresh, "optim": torch.optim.AdamW(fresh.parameters())})
    two = torch.optim.SGD(_groups(fresh), lr=0.1)
    sizes = [len(g["params"]) for g in two.param_groups]
    with pytest.raises(UsageError, match=re.escape(f"parameters per group [30] in file, {sizes} in optimizer")):
        load_checkpoint(path, {"model": fresh, "optim": two})
    assert_same(before, fresh.state_dict())
    with pytest.raises(UsageError, match="has no 'ema' weights"):
        load_checkpoint(path, {"ema": _model()})
    save_checkpoint(tmp_path / "no_opt.safetensors", {"model": model}, state={})
    with pytest.raises(UsageError, match="has no optimizer state"):
        load_checkpoint(tmp_path / "no_opt.safetensors", {"optim": opt})


def test_other_versions_warn_naming_both_or_are_refused_when_strict(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    with monkeypatch.context() as m:
        m.setattr(ckpt_mod, "_versions", lambda: {"effv2_version": "0.0.9", "torch_version": "2.0.0+cu118"})
        save_checkpoint(path, {"model": _model()}, state={})
    import effv2

    with pytest.warns(CheckpointVersionWarning) as rec:
        load_checkpoint(path)
    msg = str(rec[0].message)
    assert f"torch 2.0.0+cu118 (this is {torch.__version__})" in msg
    assert f"effv2 0.0.9 (this is {effv2.__version__})" in msg
    with pytest.raises(UsageError, match=r"written by torch 2\.0\.0\+cu118 .*refused \(strict_versions\)"):
        load_checkpoint(path, strict_versions=True)

    # Same public version, another build (+cu130 vs +cpu): the format is the same, no warning.
    with monkeypatch.context() as m:
        public = torch.__version__.split("+")[0]
        m.setattr(ckpt_mod, "_versions", lambda: {"effv2_version": effv2.__version__, "torch_version": public + "+cpu"})
        save_checkpoint(path, {"model": _model()}, state={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path, strict_versions=True)


# -- damaged files -----------------------------------------------------------------------------------
def _saved(tmp_path: Path) -> Path:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    _step(opt)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model, "optim": opt}, state={"epoch": 1})
    return path


def test_truncated_or_damaged_files_are_one_line_usage_errors(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cuts = [0, 4, 8, 20, header_end // 2, header_end - 1, header_end, header_end + 10, len(data) // 2, len(data) - 1]
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(UsageError, match=rf"^{bad}: not a complete checkpoint \(") as err:
            load_checkpoint(bad, {"model": _model()})
        assert "\n" not in str(err.value)
    flipped = bytearray(data)
    flipped[len(data) - 100] ^= 0x01  # one bit in the tensor data, invisible to the format itself
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(UsageError, match=r"not a complete checkpoint \(checksum mismatch in '.+'\)"):
        load_checkpoint(bad)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(UsageError, match="not a complete checkpoint"):
        load_checkpoint(garbage)
    with pytest.raises(UsageError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_weights_file_is_not_a_checkpoint(tmp_path):
    save_weights(_model(), tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="not an effv2 training checkpoint .*load_into"):
        load_checkpoint(tmp_path / "w.safetensors")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("state", '{"__dict__": 5}', "metadata 'state' or 'recipe' is malformed"),
        ("state", "[1, 2]", "metadata 'state' and 'recipe' must be JSON objects"),
        ("optim_param_groups", '[{"lr": 1}]', "optimizer state is malformed"),
        ("rng", '{"python": 1}', "RNG state: incomplete or malformed"),
    ],
)
def test_malformed_metadata_is_refused_and_changes_nothing(tmp_path, key, value, message):
    path = _saved(tmp_path)
    _rewrite_metadata(path, **{key: value})  # as a crafted file would: checksums cover tensors only
    model = _model(seed=3)
    opt = torch.optim.AdamW(model.parameters())
    before, rng_before = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    with pytest.raises(UsageError, match=re.escape(message)):
        load_checkpoint(path, {"model": model, "optim": opt})
    assert_same(before, model.state_dict())
    assert not opt.state and torch.equal(rng_before, torch.get_rng_state())


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


def _rewrite_metadata(path: Path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    save_file(tensors, str(path), metadata=meta)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    # A JSON string holding pickle bytes is just a string.
    _rewrite_metadata(path, state=json.dumps({"blob": payload.decode("latin-1")}))

    def refuse(*a, **k):
        raise AssertionError("something tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = _model()
    ck = load_checkpoint(path, {"model": model, "optim": torch.optim.AdamW(model.parameters())})
    assert ck.state["blob"].encode("latin-1") == payload and not marker.exists()
    # Raw pickle bytes as a metadata value: not JSON, refused as data, never run.
    _rewrite_metadata(path, state=payload.decode("latin-1"))
    with pytest.raises(UsageError, match=r"metadata 'state' is not JSON"):
        load_checkpoint(path)
    assert not marker.exists()


# -- failed writes -------------------------------------------------------------------------------------
def _enospc_from_writer(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"partial")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("failure", ["writer", "replace", "fsync"])
def test_failed_write_keeps_previous_and_leaves_no_temp(tmp_path, monkeypatch, failure):
    path = checkpoint_path(tmp_path, "last")
    save_checkpoint(path, {"model": _model()}, state={"counter": 1})
    with monkeypatch.context() as m:
        if failure == "writer":  # what safetensors raises on a real full disk (see the tmpfs test)
            m.setattr(ckpt_mod, "save_file", _enospc_from_writer)
            reason = "No space left on device"
        elif failure == "replace":

            def replace(src, dst):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            m.setattr(os, "replace", replace)
            reason = "No space left on device"
        else:

            def fsync(fd):
                raise OSError(errno.EIO, os.strerror(errno.EIO))

            m.setattr(os, "fsync", fsync)
            reason = "Input/output error"
        with pytest.raises(CheckpointWriteError) as err:
            save_checkpoint(path, {"model": _model()}, state={"counter": 2}, keep_previous=False)
    assert str(err.value) == f"could not write checkpoint {path}: {reason}; the previous checkpoint is intact"
    assert isinstance(err.value, UsageError)
    assert load_checkpoint(path).state == {"counter": 1}
    assert _temps(path.parent) == []


def test_failed_first_write_says_nothing_was_written(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, "last")
    monkeypatch.setattr(ckpt_mod, "save_file", _enospc_from_writer)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device; no checkpoint was written$"):
        save_checkpoint(path, {"model": _model()}, state={})
    assert not path.exists() and _temps(path.parent) == []


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, "last")
    save_checkpoint(path, {"model": _model()}, state={"counter": 1})
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(
        CheckpointWriteError,
        match=r"No space left on device \(needs 0\.\d MiB, 0\.0 MiB free\); "
        r"the previous checkpoint is intact",
    ):
        save_checkpoint(path, {"model": _model()}, state={"counter": 2})
    assert load_checkpoint(path).state == {"counter": 1} and _temps(path.parent) == []


# -- other processes ------------------------------------------------------------------------------------
# Importing torch takes seconds on a busy machine, so one server process imports it once and forks a
# fresh child per job: each job is a real separate process (own RNG state, own resource limits, killable
# with SIGKILL) for the cost of a fork.
_SERVER = """
import json, os, sys, traceback
import torch, numpy, effv2.io.checkpoint
while line := sys.stdin.readline():
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            sys.argv = ["job", *job["argv"]]
            exec(compile(job["code"], "job", "exec"), {"__name__": "__job__"})
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(f"@@pid {pid}", flush=True)
    print(f"@@exit {os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}", flush=True)
"""

_JOB_PRELUDE = """
import sys, torch
from effv2 import create_model
from effv2.io.checkpoint import CheckpointWriteError, save_checkpoint
torch.set_num_threads(1)
path = sys.argv[1]
model = create_model("efficientnetv2_pico", num_classes=10)
"""


class ForkServer:
    def __init__(self, folder: Path):
        self.stderr = folder / "server.stderr"
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.pending: list[str] = []

    def start(self, body: str, *argv: str) -> int:
        """Fork a job running ``_JOB_PRELUDE + body``; returns its pid."""
        job = {"code": _JOB_PRELUDE + textwrap.dedent(body), "argv": list(argv)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        while not (line := self._read()).startswith("@@pid "):
            self.pending.append(line)
        return int(line.split()[1])

    def readline(self) -> str:
        """The job's next output line ('' once it has ended)."""
        if self.pending:
            return self.pending.pop(0)
        line = self._read()
        if line.startswith("@@exit "):
            self.pending.append(line)
            return ""
        return line

    def finish(self) -> tuple[list[str], int]:
        """Wait for the job: (its remaining output lines, its exit code; -9 when SIGKILLed)."""
        lines = []
        while True:
            line = self.pending.pop(0) if self.pending else self._read()
            if line.startswith("@@exit "):
                return lines, int(line.split()[1])
            lines.append(line)

    def run(self, body: str, *argv: str) -> list[str]:
        self.start(body, *argv)
        lines, code = self.finish()
        assert code == 0, self.stderr.read_text()
        return lines

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        assert line, f"fork server died: {self.stderr.read_text()}"
        return line.rstrip("\n")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forks"))
    yield server
    server.close()


def test_real_write_error_file_size_limit(tmp_path, forks):
    """A real failing write (RLIMIT_FSIZE makes the kernel refuse with EFBIG): one line, old file intact."""
    path = checkpoint_path(tmp_path, "last")
    body = """
        import resource, signal
        save_checkpoint(path, {"model": model}, state={"counter": 1})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        try:
            save_checkpoint(path, {"model": model}, state={"counter": 2}, extra={"big": torch.zeros(100_000)})
        except CheckpointWriteError as exc:
            print(exc)
    """
    lines = forks.run(body, str(path))
    assert lines == [f"could not write checkpoint {path}: File too large; the previous checkpoint is intact"]
    assert load_checkpoint(path).state == {"counter": 1} and _temps(path.parent) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_real_full_disk_on_a_small_tmpfs(tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = checkpoint_path(disk, "last")
        save_checkpoint(path, {"model": _model()}, state={"counter": 1})
        big = {"big": torch.zeros(300_000)}  # 1.2 MB: more than the disk holds
        with pytest.raises(
            CheckpointWriteError,
            match=r"No space left on device \(needs 1\.\d MiB, 0\.\d MiB free\); "
            r"the previous checkpoint is intact",
        ):
            save_checkpoint(path, {"model": _model()}, state={"counter": 2}, extra=big)
        # Past the free-space check (as if another process freed space in between): the writer hits ENOSPC.
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**40, 0, 2**40))
        with pytest.raises(CheckpointWriteError) as err:
            save_checkpoint(path, {"model": _model()}, state={"counter": 3}, extra=big)
        assert str(err.value) == (
            f"could not write checkpoint {path}: No space left on device; the previous checkpoint is intact"
        )
        assert load_checkpoint(path).state == {"counter": 1}
        assert load_checkpoint(previous_path(path)).state == {"counter": 1}
        assert _temps(path.parent) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- previous checkpoint, temp files, finding ---------------------------------------------------------------
def test_keep_previous_keeps_the_replaced_checkpoint(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, "last")
    save_checkpoint(path, {"model": _model()}, state={"counter": 1})
    assert not previous_path(path).exists()  # nothing replaced yet
    save_checkpoint(path, {"model": _model()}, state={"counter": 2})
    assert previous_path(path).name == "last.prev.safetensors"
    assert load_checkpoint(previous_path(path)).state == {"counter": 1}
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    save_checkpoint(path, {"model": _model()}, state={"counter": 3})  # no hard links here: copied instead
    assert load_checkpoint(previous_path(path)).state == {"counter": 2}
    assert load_checkpoint(path).state == {"counter": 3}
    save_checkpoint(path, {"model": _model()}, state={"counter": 4}, keep_previous=False)
    assert load_checkpoint(previous_path(path)).state == {"counter": 2}  # left alone
    assert _temps(path.parent) == []


def test_damaged_last_points_to_the_previous(tmp_path):
    path = checkpoint_path(tmp_path, "last")
    save_checkpoint(path, {"model": _model()}, state={"counter": 1})
    save_checkpoint(path, {"model": _model()}, state={"counter": 2})
    data = path.read_bytes()
    os.unlink(path)  # break the hard link before damaging the file
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        UsageError,
        match=rf"not a complete checkpoint .*; the previous checkpoint is "
        rf"{previous_path(path)}$",
    ):
        load_checkpoint(path)
    assert load_checkpoint(previous_path(path)).state == {"counter": 1}


def test_find_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UsageError, match="no such run folder or checkpoint file"):
        find_checkpoint(run)
    run.mkdir()
    with pytest.raises(UsageError, match=r"no 'last' checkpoint \(looked for .*checkpoints/last.safetensors\)"):
        find_checkpoint(run)
    last = checkpoint_path(run, "last")
    last.parent.mkdir()
    (last.parent / ".last.safetensors.abc123.tmp").write_bytes(b"half a checkpoint")  # a killed save
    with pytest.raises(UsageError, match="no 'last' checkpoint"):
        find_checkpoint(run)
    save_checkpoint(last, {"model": _model()}, state={})
    assert find_checkpoint(run) == last
    assert find_checkpoint(last.parent) == last  # the checkpoints/ folder itself
    assert find_checkpoint(last) == last
    with pytest.raises(UsageError, match="no 'best' checkpoint"):
        find_checkpoint(run, "best")
    save_checkpoint(checkpoint_path(run, "best"), {"model": _model()}, state={})
    assert find_checkpoint(run, "best") == checkpoint_path(run, "best")
    with pytest.raises(UsageError, match="expected one of last, best, got 'first'"):
        checkpoint_path(run, "first")
    assert _temps(last.parent) == []  # the successful save removed the killed save's temp file


# -- RNG ----------------------------------------------------------------------------------------------------
def _draws() -> list:
    return [random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.randn(1))]


def test_rng_resumes_the_uninterrupted_sequence(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": _model()}, state={})  # _model() seeds torch: capture happens after
    expected = [_draws() for _ in range(3)]  # what the run draws next, uninterrupted
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    load_checkpoint(path, restore_rng_state=False)
    assert [_draws() for _ in range(3)] != expected
    load_checkpoint(path)
    assert [_draws() for _ in range(3)] == expected


def test_rng_resumes_in_another_process(tmp_path, forks):
    path = tmp_path / "c.safetensors"
    body = """
        import random, numpy as np
        random.seed(7); np.random.seed(7); torch.manual_seed(7)
        save_checkpoint(path, {"model": model}, state={})
        print([random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.randn(1))])
    """
    lines = forks.run(body, str(path))
    load_checkpoint(path)
    assert [repr(_draws())] == lines


# -- kill -9 in the middle of saves ---------------------------------------------------------------------------
_KILL_JOB = """
    # ~21 MB of parameters, every one filled with the counter: a file that mixed two saves would show.
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(20)])
    k = int(sys.argv[2])
    while True:
        k += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(k)
        save_checkpoint(path, {"model": model}, state={"counter": k}, rng=False)
        print(k, flush=True)
"""


def _kill_loop(tmp_path: Path, forks: ForkServer, kills: int, seed: int) -> dict[str, int]:
    rnd = random.Random(seed)
    path = checkpoint_path(tmp_path, "last")
    target = nn.Sequential(*[nn.Linear(512, 512) for _ in range(20)])
    counter, stats = 0, {"kills": 0, "saves": 0, "temp_left": 0}
    for _ in range(kills):
        pid = forks.start(_KILL_JOB, str(path), str(counter))
        first = forks.readline()  # one save done: the file exists from here on
        assert first, forks.stderr.read_text()
        time.sleep(rnd.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        rest, code = forks.finish()
        assert code == -signal.SIGKILL
        reported = [int(x) for x in [first, *rest]]
        stats["kills"] += 1
        stats["saves"] += len(reported)
        stats["temp_left"] += bool(_temps(path.parent))
        assert find_checkpoint(tmp_path) == path
        ck = load_checkpoint(path, {"model": target})
        counter = ck.state["counter"]
        # Killed after the rename but before the print: one more than reported, never anything else.
        assert counter in (reported[-1], reported[-1] + 1), (counter, reported[-1])
        assert all(bool((p == counter).all()) for p in target.parameters()), "a file mixing two saves"
        if previous_path(path).exists():
            assert load_checkpoint(previous_path(path)).state["counter"] in (counter - 1, counter)
    save_checkpoint(path, {"model": target}, state={"counter": counter + 1}, rng=False)
    assert _temps(path.parent) == []  # the next successful save removes what the kills left
    return stats


def test_sigkill_during_saves_leaves_a_complete_checkpoint(tmp_path, forks):
    _kill_loop(tmp_path, forks, kills=4, seed=0)


@pytest.mark.slow
def test_sigkill_during_saves_many_times(tmp_path, forks):
    stats = _kill_loop(tmp_path, forks, kills=60, seed=1)
    print(stats)
    assert stats["temp_left"] > 0  # evidence that kills did land in the middle of writes


# -- CUDA ------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_and_optimizer_round_trip(tmp_path):
    model = _model().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32, device="cuda"), torch.randint(0, 10, (4,), device="cuda")
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model": model, "optim": opt}, state={})
    expected = torch.rand(3, device="cuda")
    model2 = _model(seed=3).cuda()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ck = load_checkpoint(path, {"model": model2, "optim": opt2})
    assert ck.meta["rng"]["cuda_devices"] >= 1
    assert_same(model.state_dict(), model2.state_dict())
    assert_same(opt.state_dict(), opt2.state_dict())
    assert torch.equal(torch.rand(3, device="cuda"), expected)
