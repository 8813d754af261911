"""Run folders and resume: nothing lost, nothing silently replaced (locks, folder checks, what a
resume must match, options given with --resume, damaged checkpoints, bad steps leave no trace)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from effv2.cli.main import main
from effv2.training.run_folder import run_lock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))
sys.path.insert(0, str(HERE.parent))
import run_golden  # noqa: E402

from support import pico_train_args  # noqa: E402

pytestmark = pytest.mark.skipif(not run_golden.SHARED.is_dir(), reason="shared Fashion-MNIST not available")
SETS = [
    "epochs=2",
    "batch_size=32",
    "eval_batch_size=64",
    "progressive.n_stages=2",
    "progressive.min_size=16",
    "progressive.max_size=24",
    "eval_size=24",
    "amp=none",
    "num_workers=0",
    "progressive.randaug_max=5",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return run_golden.write_subset(tmp_path_factory.mktemp("fm") / "fmnist")


def _args(data: Path, out: Path, *extra: str, sets=SETS) -> list[str]:
    return pico_train_args(data, out, sets, *extra)


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


def test_a_second_run_on_a_locked_folder_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, data, capsys):
    out = tmp_path / "run"
    with run_lock(out):
        assert main(_args(data, out)) == 2
        msg = _err(capsys)
        assert "in use by pid" in msg and str(os.getpid()) in msg
    # a holder that dies by SIGKILL: the kernel drops its lock, nothing to clean up
    code = (
        f"import os, signal; from pathlib import Path; from effv2.training.run_folder import run_lock\n"
        f"with run_lock(Path({str(out)!r})): os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    with run_lock(out):
        pass


def test_out_must_be_a_run_folder_or_empty(tmp_path, data, capsys):
    (tmp_path / "file").write_text("x")
    assert main(_args(data, tmp_path / "file")) == 2 and "is a file" in _err(capsys)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert main(_args(data, mine)) == 2 and "not an effv2 run" in _err(capsys)
    assert main(["train", "--resume", str(mine)]) == 2
    assert "not an effv2 run folder to resume" in _err(capsys)
    assert main(_args(data, mine, "--overwrite", sets=[*SETS, "epochs=1"])) == 0
    assert (mine / "notes.txt").read_text() == "precious" and (mine / "summary.json").is_file()


def test_resume_refuses_changed_data_versions_and_options_and_extends_with_epochs(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert Path(cfg["data_dir"]).is_absolute() and cfg["data_fingerprint"]["train"] == 256 - 24  # 10% held out
    # options that would change the run in mid-flight are refused by name
    assert main(["train", "--resume", str(out), "--set", "lr=1"]) == 2 and "--set" in _err(capsys)
    assert main(["train", "--resume", str(out), "--seed", "3"]) == 2 and "--seed" in _err(capsys)
    # --epochs extends a finished run, from any working directory
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["train", "--resume", "run", "--epochs", "3", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["recipe"]["epochs"] == 3
    # other software
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "torch_version": "1.0.0"}))
    assert main(["train", "--resume", str(out), "--epochs", "4"]) == 2 and "torch_version 1.0.0" in _err(capsys)
    # other data: the same names, other images
    (out / "config.json").write_text(json.dumps(cfg))
    other = run_golden.write_subset(tmp_path / "other")
    labels = other / "train-labels-idx1-ubyte.gz"
    arr = run_golden._idx(labels).clone()
    arr[:10] = (arr[:10] + 1) % 10
    import gzip

    with gzip.open(labels, "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + len(arr).to_bytes(4, "big") + arr.numpy().tobytes())
    cfg["data_dir"] = str(other)
    (out / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(out), "--epochs", "4"]) == 2 and "train_sha256" in _err(capsys)


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert main(_args(data, out, sets=[*SETS, "checkpoint_every_steps=3"])) == 0
    last = out / "checkpoints" / "last.safetensors"
    prev = out / "checkpoints" / "last.prev.safetensors"
    assert prev.is_file()
    raw = bytearray(last.read_bytes())
    raw[-100:] = b"\0" * 100  # corrupt tensor data: the CRC catches it
    last.write_bytes(bytes(raw))
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    assert "resuming from the previous checkpoint" in capsys.readouterr().out
    # nothing readable, but metrics exist: refused, not restarted over them
    for f in (out / "checkpoints").iterdir():
        f.unlink()
    assert main(["train", "--resume", str(out)]) == 2 and "refusing to restart" in _err(capsys)
    assert (out / "metrics.jsonl").read_text()


def test_a_skipped_step_leaves_batchnorm_statistics_untouched():
    from effv2.runtime import Runtime
    from effv2.training.step import TrainStep
    from effv2.training.tasks import Task

    class NaNTask(Task):
        def forward(self, batches, step):
            return {"loss": self.net(batches["labelled"]).mean() * float("nan")}

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 1, 6, 6))
    task = NaNTask(model).bind(model, Runtime())
    step = TrainStep(task, torch.optim.SGD(model.parameters(), lr=0.1), Runtime())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = step({"labelled": torch.randn(8, 1, 6, 6) * 5 + 3}, 0)
    assert not res.stepped
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running_mean, running_var and num_batches_tracked too


@pytest.mark.slow  # ~45 s on 2 cores: 2-process torchrun runs; `pytest -m slow`
def test_torchrun_ranks_draw_their_own_masks_and_each_resumes_its_own_rng(tmp_path, data):
    fault = str(HERE.parent / "fault_run.py")
    sets = [
        *SETS,
        "deterministic=true",
        "checkpoint_every_steps=2",
        "progressive.dropout_min=0.2",
        "progressive.dropout_max=0.3",
    ]

    def run(out: Path, port: int, kill: int | None = None, resume: bool = False):
        runner = ["-m", "effv2"] if kill is None else [fault, "--kill-at-step", str(kill)]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            *runner,
        ]
        cmd += ["train", "--resume", str(out), "--quiet"] if resume else _args(data, out, sets=sets)
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )

    full = run(tmp_path / "full", 29561)
    assert full.returncode == 0, full.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "full" / "checkpoints" / "last.safetensors"), "pt") as f:
        states = [f.get_tensor(k) for k in sorted(f.keys()) if k.startswith("rank_rng/") and "torch_cpu" in k]
        a = {k: f.get_tensor(k) for k in f.keys() if k.split("/")[0] in ("model", "ema", "optim")}
    assert len(states) == 2 and not torch.equal(states[0], states[1])  # each rank its own generator
    assert run(tmp_path / "part", 29562, kill=3).returncode != 0
    resumed = run(tmp_path / "part", 29563, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with safe_open(str(tmp_path / "part" / "checkpoints" / "last.safetensors"), "pt") as f:
        b = {k: f.get_tensor(k) for k in f.keys() if k.split("/")[0] in ("model", "ema", "optim")}
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
