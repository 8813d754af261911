"""effv2 bench: timing functions, comparison against timm, machine peak, CLI errors. No timed assertions."""

from __future__ import annotations

import json

import pytest
import torch

from effv2.bench import BenchConfig, fast_defaults, run_bench, time_infer, time_train_step
from effv2.bench.compare import Reference, build_reference, check_same_logits, copy_weights, interleave, reference_for
from effv2.bench.machine import cpu_peak_flops, cuda_peak_flops
from effv2.cli.main import main
from effv2.errors import UsageError
from effv2.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "efficientnetv2_pico", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0"]


def _check_timing(r: dict, steps: int, batch: int) -> None:
    assert r["steps"] == steps and len(r["all_step_s"]) == steps and r["batch_size"] == batch
    assert r["step_s"] > 0 and r["img_per_s"] == pytest.approx(batch / r["step_s"])


def test_time_train_step_updates_weights() -> None:
    model = create_model("efficientnetv2_pico", num_classes=5)
    before = model.classifier.weight.detach().clone()
    r = time_train_step(model, batch_size=2, image_size=32, steps=2, warmup=1)
    _check_timing(r, 2, 2)
    assert len(r["warmup_s"]) == 1
    assert not torch.equal(before, model.classifier.weight)  # a real optimizer step was timed


@pytest.mark.parametrize("amp,channels_last,optimizer", [("bf16", True, "adamw"), ("fp16", False, "rmsprop")])
def test_time_train_step_options(amp: str, channels_last: bool, optimizer: str) -> None:
    model = create_model("efficientnetv2_pico", num_classes=5)
    _check_timing(
        time_train_step(
            model,
            batch_size=2,
            image_size=32,
            steps=1,
            warmup=0,
            amp=amp,
            channels_last=channels_last,
            optimizer=optimizer,
        ),
        1,
        2,
    )


def test_time_infer_eval_mode() -> None:
    model = create_model("efficientnetv2_pico", in_chans=1).train()
    r = time_infer(model, batch_size=3, image_size=32, in_chans=1, steps=2, warmup=0, amp="bf16")
    _check_timing(r, 2, 3)
    assert not model.training


@pytest.mark.parametrize(
    "kwargs", [dict(amp="int8"), dict(batch_size=0), dict(steps=0), dict(optimizer="lamb"), dict(device="tpu")]
)
def test_timing_rejects_bad_input(kwargs: dict) -> None:
    args = dict(batch_size=2, image_size=32, steps=1, warmup=0) | kwargs
    with pytest.raises(UsageError):
        time_train_step(create_model("efficientnetv2_pico"), **args)


def test_interleave_reports_each_variant() -> None:
    calls: list[str] = []
    out = interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, batch_size=4, n_steps=3, warmup=1
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then alternating rounds
    assert set(out) == {"a", "b"} and out["a"]["steps"] == 3


def test_bench_cli_json_pico(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *TINY, "--mode", "infer", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    eff = r["results"][0]
    assert eff["variant"] == "effv2" and eff["img_per_s"] > 0 and eff["flop_per_s"] > 0
    assert r["macs_per_img"] > 0 and r["flop_per_img"] == 2 * r["macs_per_img"]
    assert r["effv2_settings"]["fold_bn"] == fast_defaults("cpu")["fold_bn_infer"]
    assert eff["peak_flop_per_s"] is None or 0 < eff["peak_share"] < 1
    assert r["ratios"] == {} and r["machine"]["torch"] == torch.__version__


def test_bench_train_flops_are_three_forwards() -> None:
    r = run_bench(
        BenchConfig(
            model="efficientnetv2_pico",
            image_size=32,
            batch_size=2,
            steps=1,
            warmup=0,
            mode="train",
            amp="none",
            channels_last=True,
        )
    )
    assert r["flop_per_img"] == 6 * r["macs_per_img"]
    assert r["settings_source"]["channels_last"] == "flag" and r["effv2_settings"]["channels_last"] is True


def test_bench_compare_timm_b0(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    args = [
        "bench",
        "--model",
        "efficientnetv2_b0",
        "--size",
        "32",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--mode",
        "infer",
        "--compare",
        "timm",
        "--json",
    ]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    variants = [x["variant"] for x in r["results"]]
    assert variants[0] == "effv2" and "timm defaults" in variants
    assert "effv2 / timm defaults" in r["ratios"] and all(v > 0 for v in r["ratios"].values())
    check = r["logit_check"]["timm"]
    assert "tf_efficientnetv2_b0" in check["checked"] and check["max_abs_diff"] <= 1e-5


@torch.no_grad()
def test_same_weights_same_logits_and_mismatch_raises() -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("efficientnetv2_b0", num_classes=10)
    ref = reference_for("timm", "efficientnetv2_b0")
    assert ref == Reference("timm", "tf_efficientnetv2_b0", "tf_same", 1e-3)
    ref_model = build_reference(ref, num_classes=10, in_chans=3, drop_rate=0.2, drop_path_rate=0.2)
    copy_weights(model, ref_model)
    x = torch.randn(2, 3, 64, 64)
    twin = create_model("efficientnetv2_b0", num_classes=10, padding="tf_same")
    twin.load_state_dict(model.state_dict())
    torch.testing.assert_close(twin.eval()(x), ref_model.eval()(x), atol=1e-6, rtol=1e-5)
    check_same_logits("efficientnetv2_b0", model, ref, ref_model, image_size=64, in_chans=3, num_classes=10)
    ref_model.classifier.bias.add_(1.0)  # no longer the same network
    with pytest.raises(RuntimeError, match="logits differ"):
        check_same_logits("efficientnetv2_b0", model, ref, ref_model, image_size=64, in_chans=3, num_classes=10)


def test_reference_table() -> None:
    assert reference_for("timm", "efficientnetv2_s").name == "efficientnetv2_s"
    assert reference_for("torchvision", "efficientnetv2_l").name == "efficientnet_v2_l"
    assert reference_for("torchvision", "efficientnetv2_b0") is None
    assert reference_for("timm", "efficientnetv2_pico") is None


def test_cpu_peak_from_flags() -> None:
    info = {
        "flags": ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"],
        "cores": 4,
        "mhz": 2000.0,
        "mhz_source": "test",
        "torch_threads": 4,
    }
    assert cpu_peak_flops("fp32", info=info)[0] == pytest.approx(4 * 2e9 * 64)
    assert cpu_peak_flops("bf16", info=info)[0] == pytest.approx(4 * 2e9 * 1024)
    assert cpu_peak_flops("fp16", info=info)[0] == pytest.approx(4 * 2e9 * 64)  # no fp16 ISA: fp32 rate
    avx2 = info | {"flags": ["avx", "avx2", "fma"], "torch_threads": 2}
    assert cpu_peak_flops("bf16", info=avx2)[0] == pytest.approx(2 * 2e9 * 32)  # capped by torch threads
    assert cpu_peak_flops("fp32", info=info | {"mhz": None})[0] is None


def test_cpu_peak_on_zen4_counts_one_512_bit_fma_per_cycle() -> None:
    zen4 = {
        "flags": ["avx2", "fma", "avx512f", "avx512_bf16"],
        "cores": 2,
        "mhz": 2600.0,
        "mhz_source": "test",
        "torch_threads": 2,
        "vendor": "AuthenticAMD",
        "family": 25,
    }
    fp32, how = cpu_peak_flops("fp32", info=zen4)
    assert fp32 == pytest.approx(2 * 2.6e9 * 32) and "Zen 4" in how
    assert cpu_peak_flops("bf16", info=zen4)[0] == pytest.approx(2 * 2.6e9 * 64)
    assert cpu_peak_flops("fp32", info=zen4, fma_units=2)[0] == pytest.approx(2 * 2.6e9 * 64)
    intel = zen4 | {"vendor": "GenuineIntel", "family": 6}
    assert cpu_peak_flops("fp32", info=intel)[0] == pytest.approx(2 * 2.6e9 * 64)


def test_cpu_label_names_family_model_and_the_isa_flags() -> None:
    """Every figure names its CPU as lscpu does: the model name alone ("AMD EPYC") was Zen 3, 4 and 5."""
    from effv2.bench.machine import cpu_label, describe

    zen4 = {"model_name": "AMD EPYC", "family": 25, "model": 17, "cores": 2}
    zen4["flags"] = ["sse2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "sha_ni"]
    assert cpu_label(zen4) == "AMD EPYC, family 25 model 17, 2 cores, avx2 fma avx512f avx512_bf16 avx512_vnni"
    zen3 = zen4 | {"model": 1, "flags": ["avx", "avx2", "fma"]}
    assert cpu_label(zen3) == "AMD EPYC, family 25 model 1, 2 cores, avx2 fma"
    bare = {"model_name": "arm", "family": None, "model": None, "cores": 4, "flags": ["neon"]}
    assert cpu_label(bare) == "arm, 4 cores, no AVX2"
    here = describe("cpu")
    assert here["cpu_label"].startswith(here["cpu"] + ", ") and f"{here['cpu_cores']} cores" in here["cpu_label"]


def test_cpu_peak_on_zen3_and_zen5() -> None:
    """Zen 3 (family 25, AVX2 only) has two 256-bit FMA pipes: 32 FLOP/cycle, not Zen 4's halved rate;
    Zen 5 (family 26) has full-width 512-bit pipes."""
    zen3 = {
        "flags": ["avx", "avx2", "fma"],
        "cores": 2,
        "mhz": 2450.0,
        "mhz_source": "test",
        "torch_threads": 2,
        "vendor": "AuthenticAMD",
        "family": 25,
    }
    assert cpu_peak_flops("fp32", info=zen3)[0] == pytest.approx(2 * 2.45e9 * 32)
    zen5 = zen3 | {"family": 26, "flags": ["avx2", "fma", "avx512f", "avx512_bf16"]}
    fp32, how = cpu_peak_flops("fp32", info=zen5)
    assert fp32 == pytest.approx(2 * 2.45e9 * 64) and "Zen 5" in how
    assert cpu_peak_flops("bf16", info=zen5)[0] == pytest.approx(2 * 2.45e9 * 128)


def test_measured_gemm_and_the_reasons_for_the_defaults() -> None:
    from effv2.bench.machine import fast_defaults_reasons, measured_gemm_flops

    assert 1e8 < measured_gemm_flops("fp32", n=256, repeats=2) < 1e14
    why = fast_defaults_reasons("cpu")
    assert set(why) == {"amp", "channels_last", "compile", "fold_bn_infer", "malloc"}  # malloc: CPU only
    assert why["malloc"].startswith(("keeps freed memory", "glibc defaults"))
    assert why["amp"].startswith(fast_defaults("cpu")["amp"].replace("none", "fp32"))
    assert fast_defaults_reasons("cpu", batch_size=1)["amp"].startswith("fp32")


def test_cuda_peak_table() -> None:
    assert cuda_peak_flops("bf16", "NVIDIA H100 80GB HBM3")[0] == pytest.approx(989.4e12)
    assert cuda_peak_flops("fp32", "NVIDIA A100-SXM4-40GB")[0] == pytest.approx(156e12)  # TF32 convs
    assert cuda_peak_flops("fp32", "NVIDIA A100-SXM4-40GB", tf32=False)[0] == pytest.approx(19.5e12)
    assert cuda_peak_flops("bf16", "Some Future GPU")[0] is None


def test_fast_defaults_keys() -> None:
    d = fast_defaults("cpu")
    assert set(d) == {"amp", "channels_last", "compile", "fold_bn_infer"}
    assert d["amp"] in ("none", "bf16", "fp16")
    assert fast_defaults("cpu", batch_size=1)["amp"] == "none"  # bf16 measured slower for single images


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "nope", "--size", "32"], "unknown model 'nope'"),
        ([*TINY, "--mode", "train", "--fold-bn"], "--fold-bn applies to --mode infer only"),
        ([*TINY, "--compare", "timm"], "nothing to compare with"),
        ([*TINY, "--compare", "keras"], "'keras' is not one of"),
        ([*TINY, "--compile"], "--compile needs --warmup >= 1"),
        ([*TINY, "--threads", "0"], "--threads"),
    ],
)
def test_cli_errors_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_times_replicas_beside_one_and_says_why() -> None:
    """Train mode with replicas > 1: an "effv2 1 replica" variant is timed beside, and the source of the
    setting says whether the flag or the auto rule chose it; infer mode refuses --replicas."""
    cfg = dict(model="efficientnetv2_pico", image_size=32, batch_size=32, steps=1, warmup=0, mode="train", amp="none")
    r = run_bench(BenchConfig(replicas=2, **cfg))
    assert [x["variant"] for x in r["results"]] == ["effv2", "effv2 1 replica"]
    assert r["effv2_settings"]["replicas"] == 2 and r["settings_source"]["replicas"] == "flag"
    assert "replicas=2" in r["results"][0]["settings"] and "replicas" not in r["results"][1]["settings"]
    assert set(r["ratios"]) == {"effv2 / effv2 1 replica"}
    one = run_bench(BenchConfig(replicas=1, **cfg))
    assert [x["variant"] for x in one["results"]] == ["effv2"] and one["effv2_settings"]["replicas"] == 1
    auto = run_bench(BenchConfig(**{**cfg, "batch_size": 8}))  # under 32 images: one replica, and why
    assert auto["effv2_settings"]["replicas"] == 1 and auto["settings_source"]["replicas"].startswith("auto: one")
    with pytest.raises(UsageError, match="--replicas applies to --mode train"):
        BenchConfig(replicas=2, **{**cfg, "mode": "infer"})
