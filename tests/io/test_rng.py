"""effv2.io.rng: every global generator captured as JSON + tensors, restored exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from effv2.errors import UsageError
from effv2.io.rng import capture_rng, restore_rng


def _draws() -> dict:
    """The next numbers a training step would draw, from every generator, including cached gaussians."""
    return {
        "py": [random.random() for _ in range(3)] + [random.gauss(0, 1) for _ in range(3)],
        "np": np.concatenate([np.random.rand(3), np.random.randn(3)]).tolist(),
        "torch": torch.cat([torch.rand(3), torch.randn(3)]).tolist(),
    }


def _seed(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def test_restore_continues_the_interrupted_sequence():
    _seed(1)
    _draws()  # three gaussians each: python and numpy now hold a cached second gaussian
    json_part, tensors = capture_rng()
    stored = json.loads(json.dumps(json_part))  # exactly what a checkpoint's metadata holds
    expected = _draws()  # what the uninterrupted run draws next
    _seed(999)
    _draws()
    restore_rng(stored, {k: v.clone() for k, v in tensors.items()})
    assert _draws() == expected
    assert json_part["python"]["gauss_next"] is not None and json_part["numpy"]["has_gauss"] == 1


def test_capture_does_not_start_cuda():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA already initialised in this process")
    json_part, tensors = capture_rng()
    assert json_part["cuda_devices"] == 0 and not any(k.startswith("cuda/") for k in tensors)
    assert not (torch.cuda.is_available() and torch.cuda.is_initialized())


@pytest.mark.parametrize("damage", ["missing_key", "bad_torch_state", "bad_numpy_shape", "bad_python_state"])
def test_malformed_state_is_refused_and_changes_nothing(damage):
    json_part, tensors = capture_rng()
    json_part = json.loads(json.dumps(json_part))
    if damage == "missing_key":
        del tensors["torch_cpu"]
    elif damage == "bad_torch_state":
        tensors["torch_cpu"] = torch.zeros(7, dtype=torch.uint8)
    elif damage == "bad_numpy_shape":
        tensors["numpy_keys"] = tensors["numpy_keys"][:10]
    else:
        json_part["python"]["internal"] = [1, 2, 3]
    _seed(5)
    before = capture_rng()
    with pytest.raises(UsageError, match="RNG state"):
        restore_rng(json_part, tensors)
    after = capture_rng()
    assert before[0] == after[0] and all(torch.equal(before[1][k], after[1][k]) for k in before[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_round_trip():
    torch.cuda.manual_seed_all(3)
    torch.rand(1, device="cuda")
    json_part, tensors = capture_rng()
    assert json_part["cuda_devices"] == torch.cuda.device_count()
    expected = torch.rand(5, device="cuda").cpu()
    torch.cuda.manual_seed_all(4)
    restore_rng(json.loads(json.dumps(json_part)), tensors)
    assert torch.equal(torch.rand(5, device="cuda").cpu(), expected)
