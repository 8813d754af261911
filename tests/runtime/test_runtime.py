"""The execution policy: device resolution and its errors, scoped deterministic mode and threads,
the GradScaler only for fp16, and resolve_runtime's fields."""

from __future__ import annotations

import pytest
import torch

from effv2.errors import UsageError
from effv2.runtime import Dist, Runtime, deterministic, resolve_device, resolve_runtime, use_threads

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@no_cuda
def test_auto_is_cpu_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("device", ["tpu0", "cuda:x", "foo:1", "", "xla", "meta"])
def test_an_unknown_device_is_a_one_line_usage_error_naming_it(device):
    with pytest.raises(UsageError) as info:
        resolve_device(device)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"--device {device}") or msg.startswith(f"--device {device!r}")


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_cuda_is_a_one_line_usage_error(device):
    with pytest.raises(UsageError) as info:
        resolve_device(device)
    msg = str(info.value)
    assert "\n" not in msg and "CUDA is not available" in msg
    assert msg.startswith(f"--device {device}:")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks a machine without MPS")
def test_mps_without_mps_is_a_usage_error():
    with pytest.raises(UsageError, match="--device mps"):
        resolve_device("mps")


def _flags():
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )


@pytest.fixture
def restore_flags():
    prev = _flags()
    yield
    torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
    torch.backends.cudnn.benchmark = prev[2]


@pytest.mark.parametrize("start", [(False, False, False), (False, False, True), (True, False, False)])
def test_deterministic_is_scoped(restore_flags, start):
    torch.use_deterministic_algorithms(start[0], warn_only=start[1])
    torch.backends.cudnn.benchmark = start[2]
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled() is True
        assert torch.is_deterministic_algorithms_warn_only_enabled() is True
        assert torch.backends.cudnn.benchmark is False
    assert _flags() == start


def test_deterministic_restores_when_the_block_raises(restore_flags):
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    with pytest.raises(KeyError, match="boom"), deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        raise KeyError("boom")
    assert _flags() == (False, False, True)


def test_deterministic_nests_and_can_be_off(restore_flags):
    torch.use_deterministic_algorithms(False)
    with deterministic():
        with deterministic():
            assert torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled()  # the inner one restored the outer's setting
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.fixture
def two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(prev)


def test_use_threads_sets_and_restores(two_threads):
    with use_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="x"), use_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("x")
    assert torch.get_num_threads() == 2
    with use_threads(None):
        assert torch.get_num_threads() == 2
    with use_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def test_grad_scaler_only_for_fp16():
    assert Runtime(amp="none").grad_scaler() is None
    assert Runtime(amp="bf16").grad_scaler() is None
    scaler = Runtime(amp="fp16").grad_scaler()
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert scaler.get_scale() == 65536.0  # torch's default init_scale
    assert Runtime(amp="fp16").grad_scaler() is not scaler  # a new one each call


@no_cuda
def test_resolve_runtime_fields():
    rt = resolve_runtime("auto", amp="none", channels_last=False)
    assert rt == Runtime(device=torch.device("cpu"), amp="none", channels_last=False, compile=False, dist=Dist())
    assert rt.amp_dtype is None and rt.dist.enabled is False and rt.dist.is_main is True
    assert rt.describe() == {
        "device": "cpu",
        "amp": "none",
        "channels_last": False,
        "compile": False,
        "replicas": 1,
        "world_size": 1,
    }
    rt = resolve_runtime("cpu", amp="bf16", channels_last=True, compile=True)
    assert (rt.amp, rt.amp_dtype, rt.channels_last, rt.compile) == ("bf16", torch.bfloat16, True, True)
    x = torch.zeros(2, 3, 4, 4)
    assert rt.input(x).is_contiguous(memory_format=torch.channels_last)
    assert resolve_runtime("cpu", amp="none", channels_last=False).input(x) is x


def test_unknown_amp_is_refused():
    with pytest.raises(UsageError, match="amp: 'int8' is not one of none, bf16, fp16"):
        Runtime(amp="int8")
    with pytest.raises(UsageError, match="amp: 'int8' is not one of auto, none, bf16, fp16"):
        resolve_runtime("cpu", amp="int8", channels_last=False)
