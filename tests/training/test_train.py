"""End-to-end training: run folder contents, progressive stages, resume exactness, CLI, torchrun."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effv2.cli.main import main

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-mnist"
FAST = [
    "epochs=2",
    "batch_size=32",
    "eval_batch_size=128",
    "progressive.n_stages=2",
    "progressive.min_size=16",
    "progressive.max_size=24",
    "eval_size=24",
    "amp=none",
    "ema_decay=0.9",
    "num_workers=0",
    "progressive.randaug_max=5",
    "progressive.mixup_max=0.2",
]


def _write_idx(path: Path, arr: torch.Tensor) -> None:
    dims = list(arr.shape)
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.numpy().tobytes())


def _read_idx(path: Path) -> torch.Tensor:
    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return torch.frombuffer(bytearray(b[4 + 4 * nd :]), dtype=torch.uint8).view(*dims)


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory) -> Path:
    """A 256-train / 128-test Fashion-MNIST in the Debian layout (real images, so it is learnable)."""
    if not SHARED.is_dir():
        pytest.skip("shared Fashion-MNIST not available")
    d = tmp_path_factory.mktemp("fmnist")
    for split, n in (("train", 256), ("t10k", 128)):
        _write_idx(d / f"{split}-images-idx3-ubyte.gz", _read_idx(SHARED / f"{split}-images-idx3-ubyte.gz")[:n])
        _write_idx(d / f"{split}-labels-idx1-ubyte.gz", _read_idx(SHARED / f"{split}-labels-idx1-ubyte.gz")[:n])
    return d


def _train_args(data_dir: Path, out: Path, extra: list[str] = (), *more: str) -> list[str]:
    args = [
        "train",
        "--model",
        "efficientnetv2_pico",
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--quiet",
        *more,
    ]
    for s in [*FAST, *extra]:
        args += ["--set", s]
    return args


def _train(tmp: Path, data_dir: Path, name: str, extra: list[str] = (), *more: str) -> tuple[int, Path]:
    out = tmp / name
    return main(_train_args(data_dir, out, extra, *more)), out


def test_run_folder_has_what_a_user_expects(tmp_path, tiny_fmnist):
    rc, out = _train(tmp_path, tiny_fmnist, "run")
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "efficientnetv2_pico" and cfg["recipe"]["epochs"] == 2
    # replicas "auto" recorded as decided (batch 32 in fp32 on a CPU: a shard of 16 per thread, up to 2)
    assert cfg["recipe"]["replicas"] == min(torch.get_num_threads(), 2)
    from effv2.training.api import _resume_config

    old = tmp_path / "before-replicas"  # a run recorded before the key existed resumes as it trained: 1
    old.mkdir()
    del cfg["recipe"]["replicas"]
    (old / "config.json").write_text(json.dumps(cfg))
    assert _resume_config(old, None, {})[1].replicas == 1 and _resume_config(out, None, {})[1].replicas != "auto"
    # an asked count the run cannot train: a usage error (exit 2), not a traceback
    assert main(_train_args(tiny_fmnist, tmp_path / "r", ["replicas=2", "compile=true"])) == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for key in ("epoch", "stage", "image_size", "top1", "top5", "loss", "lr", "images_seen", "wall_s"):
        assert key in rows[0]
    # progressive: two stages, growing image size, growing regularisation
    assert [r["stage"] for r in rows] == [0, 1]
    assert rows[0]["image_size"] == 16 and rows[1]["image_size"] == 24
    assert rows[0]["randaug"] < rows[1]["randaug"]
    n_train = json.loads((out / "config.json").read_text())["data_fingerprint"]["train"]
    assert n_train < 256  # a stratified 10% validation hold-out of the 256 training images
    assert rows[1]["images_seen"] == 2 * (n_train // 32) * 32
    assert 0 <= rows[-1]["top1"] <= 100 and rows[-1]["top5"] >= rows[-1]["top1"]
    assert (out / "checkpoints" / "last.safetensors").is_file()
    assert (out / "checkpoints" / "best.safetensors").is_file()
    assert (out / "curves.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and "test_top1" in summary


def test_eval_and_predict_cli(tmp_path, tiny_fmnist, capsys):
    rc, out = _train(tmp_path, tiny_fmnist, "run")
    assert rc == 0
    capsys.readouterr()
    assert (
        main(["eval", "--checkpoint", str(out), "--data", "fashion-mnist", "--data-dir", str(tiny_fmnist), "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 128 and 0 <= res["top1"] <= res["top5"] <= 100
    # the final summary's test accuracy is the same number eval reports for the best checkpoint's weights
    from PIL import Image

    img = tmp_path / "shirt.png"
    Image.fromarray(_read_idx(tiny_fmnist / "t10k-images-idx3-ubyte.gz")[0].numpy()).save(img)
    assert main(["predict", "--checkpoint", str(out), str(img), "--top-k", "3", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    probs = [p["prob"] for p in pred[0]["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert pred[0]["top"][0]["class"] in {
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    } | {str(i) for i in range(10)}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(("model/", "ema/", "optim/"))}


FAULT_RUN = str(Path(__file__).resolve().parents[1] / "fault_run.py")


def _cli(*args: str, env: dict | None = None, kill_at_step: int | None = None) -> subprocess.CompletedProcess:
    """The effv2 CLI in a subprocess; with ``kill_at_step`` through the test hook that SIGKILLs it there."""
    runner = ["-m", "effv2"] if kill_at_step is None else [FAULT_RUN, "--kill-at-step", str(kill_at_step)]
    return subprocess.run(
        [sys.executable, *runner, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def test_killed_and_resumed_run_is_bitwise_exact(tmp_path, tiny_fmnist):
    """SIGKILL mid-epoch (step 5 of 8, last checkpoint at step 3), resume: same weights as uninterrupted.
    With 2 replicas (runtime/replicas.py): shards, per-shard dropout generators and all."""
    extra = ["deterministic=true", "checkpoint_every_steps=3", "replicas=2"]
    rc, full = _train(tmp_path, tiny_fmnist, "full", extra)
    assert rc == 0 and json.loads((full / "config.json").read_text())["recipe"]["replicas"] == 2
    part = tmp_path / "part"
    args = _train_args(tiny_fmnist, part, extra)
    killed = _cli(*args, kill_at_step=5)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _cli("train", "--resume", str(part), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(full / "checkpoints" / "last.safetensors"), _weights(part / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_bad_input_is_one_line_exit_2(tmp_path, tiny_fmnist, capsys):
    assert main(["train", "--model", "nope", "--data", "fashion-mnist", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'nope'" in err[0]
    rc, _ = _train(tmp_path, tiny_fmnist, "y", ["no_such_key=1"])
    assert rc == 2 and "no_such_key" in capsys.readouterr().err
    rc, _ = _train(tmp_path, tiny_fmnist, "z", ["batch_size=100000"])
    assert rc == 2 and "batch_size" in capsys.readouterr().err
    rc, _ = _train(tmp_path, tiny_fmnist, "w", ["progressive.min_size=2"])
    assert rc == 2 and "min_size" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--model",
                "efficientnetv2_pico",
                "--data",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 2
    )


def test_torchrun_two_cpu_processes(tmp_path, tiny_fmnist):
    """Two CPU processes under torchrun, to a time budget whose plan falls back to the fixed-size schedule
    with the first stage's regularization (so the fallback stage is timed too): every rank plans from rank
    0's measurements and follows its warm-up decisions (a step is collective: ranks that warmed up for
    different numbers of steps would wait on each other for ever), one writer, the global batch split."""
    out = tmp_path / "ddp"
    proc = _torchrun_budgeted(tiny_fmnist, out, "--time-budget", "4s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    plan = cfg["plan"]
    assert plan["progressive"]["used"] is False and plan["progressive"]["last_stage_step_s"] > 0
    assert plan["steps"] == cfg["recipe"]["max_steps"] and len(plan["step_s"]) == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r.get("image_size") is not None]
    steps = [r["step"] for r in epochs]
    assert steps and steps == sorted(set(steps))  # one writer (rank 0): no row twice
    assert 0 < epochs[-1]["step"] <= plan["steps"]
    assert epochs[-1]["images_seen"] == epochs[-1]["step"] * 32  # the global batch of 32 split over 2 ranks


def _torchrun_budgeted(data: Path, out: Path, *extra: str, sets=()) -> subprocess.CompletedProcess:
    """`effv2 train` of the pico model in two CPU processes under torchrun, planned from a budget or
    another run (``extra``), with the fixed-size fallback and the first stage's regularization."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    cmd += ["-m", "effv2", "train", "--model", "efficientnetv2_pico", "--data", "fashion-mnist"]
    cmd += ["--data-dir", str(data), "--out", str(out), "--quiet", *extra]
    for s in [*FAST, "progressive.min_epochs=1000", "progressive.fallback_regularization=first", *sets]:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow  # ~25 s on the 2-core Zen 4: three 2-process torchrun runs; `pytest -m slow`
def test_plan_from_under_torchrun(tmp_path, tiny_fmnist):
    """--plan-from under torchrun: rank 0 reads the source run and every rank trains its plan, or every
    rank stops with rank 0's one-line error (a refusal never leaves a rank waiting at a collective)."""
    src, twin = tmp_path / "src", tmp_path / "twin"
    proc = _torchrun_budgeted(tiny_fmnist, src, "--time-budget", "3s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((src / "config.json").read_text())["plan"]
    proc = _torchrun_budgeted(tiny_fmnist, twin, "--plan-from", str(src))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((twin / "config.json").read_text())
    assert cfg["plan"] == {**plan, "from": str(src), "hard_stop_s": cfg["recipe"]["time_budget_s"]}
    assert cfg["recipe"]["max_steps"] == plan["steps"] and cfg["world_size"] == 2
    proc = _torchrun_budgeted(tiny_fmnist, tmp_path / "no", "--plan-from", str(src), sets=["batch_size=64"])
    assert proc.returncode != 0 and proc.stderr.count("its plan was made for batch_size 32, this run has 64") == 2


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path, tiny_fmnist, capsys):
    from effv2.training.tasks import TASKS, register
    from effv2.training.tasks.classify import ClassifyTask

    calls = {"n": 0}  # forward calls: one a step with replicas=1

    class FlakyTask(ClassifyTask):  # a test-only task: the loss goes bad on chosen steps
        def forward(self, batches, step):
            calls["n"] += 1
            out = super().forward(batches, step)
            if calls["n"] == 2:  # one bad step: skipped, counted, training goes on
                out["loss"] = out["loss"] * float("nan")
            if calls["n"] >= 12:  # from the second epoch on: every step bad -> stop after 3 in a row
                out["loss"] = out["loss"] * float("inf")
            return out

    register("test_flaky")(FlakyTask)
    try:
        rc, out = _train(tmp_path, tiny_fmnist, "nan", ["max_nonfinite_steps=3", "task=test_flaky", "replicas=1"])
    finally:
        TASKS.pop("test_flaky")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "3 non-finite steps in a row" in err[0] and "rank 0" in err[0] and "batch" in err[0]
    from effv2.io.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / "checkpoints" / "last.safetensors", restore_rng_state=False)
    assert ckpt.state["epoch"] == 1 and ckpt.state["nonfinite_total"] == 1  # the end-of-epoch-1 checkpoint, intact
    n_train = json.loads((out / "config.json").read_text())["data_fingerprint"]["train"]
    assert ckpt.state["global_step"] == n_train // 32 - 1  # one batch skipped


@pytest.mark.slow
def test_random_sigkills_then_resume_match_uninterrupted(tmp_path, tiny_fmnist):
    """The long reliability check: SIGKILL at random wall-clock moments (mid-step, mid-save), resume each time."""
    import random
    import signal
    import time

    extra = ["deterministic=true", "checkpoint_every_steps=2", "epochs=6"]
    full = tmp_path / "full"
    t0 = time.perf_counter()
    done = _cli(*_train_args(tiny_fmnist, full, extra))
    duration = time.perf_counter() - t0  # a whole run, interpreter start included
    assert done.returncode == 0, done.stderr[-2000:]
    part = tmp_path / "part"
    args = _train_args(tiny_fmnist, part, extra)
    rng = random.Random(1234)
    kills = 0
    for attempt in range(6):
        cmd = args if attempt == 0 else ["train", "--resume", str(part), "--quiet"]
        proc = subprocess.Popen([sys.executable, "-m", "effv2", *cmd], stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.4, 0.9) * duration)  # somewhere in training: mid-step or mid-save
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode == 0:
            break
    done = _cli("train", "--resume", str(part), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 1
    a, b = _weights(full / "checkpoints" / "last.safetensors"), _weights(part / "checkpoints" / "last.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_init_from_weights_for_fine_tuning(tmp_path, tiny_fmnist):
    rc, first = _train(tmp_path, tiny_fmnist, "first", ["epochs=1"])
    assert rc == 0
    rc, tuned = _train(
        tmp_path, tiny_fmnist, "tuned", ["epochs=1", "lr=1e-30", "warmup_epochs=0", "ema_decay=0"], "--init", str(first)
    )
    assert rc == 0
    from effv2.training.inference import load_for_inference

    a = load_for_inference(first).model.state_dict()
    b = load_for_inference(tuned).model.state_dict()
    convs = [k for k in a if k.endswith("conv.weight")]
    assert convs and all(torch.equal(a[k], b[k]) for k in convs)  # lr ~0: the init weights, untouched
    assert json.loads((tuned / "config.json").read_text())["init"] == str(first)


def test_adapt_rgb_weights_to_grayscale_and_new_classes():
    from effv2 import create_model
    from effv2.training.build import adapt_and_load

    src = create_model("efficientnetv2_pico", num_classes=1000, in_chans=3)
    dst = create_model("efficientnetv2_pico", num_classes=10, in_chans=1)
    head = dst.classifier.weight.clone()
    adapt_and_load(dst, src.state_dict(), "src")
    assert torch.equal(dst.stem.conv.weight, src.stem.conv.weight.sum(1, keepdim=True))
    assert torch.equal(dst.classifier.weight, head)  # 1000 -> 10 classes: the new head is kept
    assert torch.equal(dst.blocks[1][0].expand.conv.weight, src.blocks[1][0].expand.conv.weight)


def _jpeg_folder(root: Path, data_dir: Path, per_class: int = 24) -> Path:
    """Real Fashion-MNIST images as JPEG files in class folders (a file set: decoded by loader workers)."""
    from PIL import Image

    images = _read_idx(data_dir / "train-images-idx3-ubyte.gz")
    labels = _read_idx(data_dir / "train-labels-idx1-ubyte.gz")
    counts: dict[int, int] = {}
    for img, lab in zip(images, labels.tolist()):
        if counts.get(lab, 0) < per_class and lab < 4:
            (root / f"c{lab}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.numpy()).save(root / f"c{lab}" / f"{counts.get(lab, 0)}.jpg")
            counts[lab] = counts.get(lab, 0) + 1
    return root


def test_resume_with_loader_workers_is_bitwise_exact(tmp_path, tiny_fmnist):
    folder = _jpeg_folder(tmp_path / "jpegs", tiny_fmnist)
    sets = [
        *FAST,
        "deterministic=true",
        "checkpoint_every_steps=1",
        "num_workers=2",
        "batch_size=16",
        "val_fraction=0.25",
    ]

    def args(out: Path) -> list[str]:
        a = ["train", "--model", "efficientnetv2_pico", "--data", str(folder), "--out", str(out), "--quiet"]
        for s in sets:
            a += ["--set", s]
        return a

    assert main(args(tmp_path / "full")) == 0
    killed = _cli(*args(tmp_path / "part"), kill_at_step=7)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _cli("train", "--resume", str(tmp_path / "part"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = _weights(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = _weights(tmp_path / "part" / "checkpoints" / "last.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # ~45 s on 2 cores: 2-process torchrun runs; `pytest -m slow`
def test_resume_under_torchrun_is_bitwise_exact(tmp_path, tiny_fmnist):
    sets = [*FAST, "deterministic=true", "checkpoint_every_steps=2"]

    def run(out: Path, kill_at_step: int | None = None, resume: bool = False, port: int = 29541):
        runner = ["-m", "effv2"] if kill_at_step is None else [FAULT_RUN, "--kill-at-step", str(kill_at_step)]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            *runner,
            "train",
        ]
        if resume:
            cmd += ["--resume", str(out), "--quiet"]
        else:
            cmd += [
                "--model",
                "efficientnetv2_pico",
                "--data",
                "fashion-mnist",
                "--data-dir",
                str(tiny_fmnist),
                "--out",
                str(out),
                "--quiet",
            ]
            for s in sets:
                cmd += ["--set", s]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )

    full = run(tmp_path / "full", port=29542)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run(tmp_path / "part", kill_at_step=5, port=29543)
    assert killed.returncode != 0
    resumed = run(tmp_path / "part", resume=True, port=29544)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _weights(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = _weights(tmp_path / "part" / "checkpoints" / "last.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
