"""Experiment logging (training/logging_sinks.py): TensorBoard event files and metrics.csv mirror
metrics.jsonl exactly, curves.png is redrawn at every evaluation, a resume duplicates no step."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import effv2.training.api as api
from effv2.cli.main import main
from effv2.errors import UsageError
from effv2.training.callbacks import Callback
from effv2.training.logging_sinks import IMG_PER_S_TAG, metrics_csv, parse_log, scalars, tag_for

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "golden"))
sys.path.insert(0, str(HERE.parent))
import run_golden  # noqa: E402

from support import pico_train_args, run_cli  # noqa: E402

needs_data = pytest.mark.skipif(not run_golden.SHARED.is_dir(), reason="shared Fashion-MNIST not available")
pytestmark = pytest.mark.usefixtures("one_thread")
# 232 training images at batch 32: 7 steps an epoch; two stages, so the first record has top1_stage
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
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    if not run_golden.SHARED.is_dir():
        pytest.skip("shared Fashion-MNIST not available")
    return run_golden.write_subset(tmp_path_factory.mktemp("fm") / "fmnist")


def _jsonl(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard's own reader sees RUN_DIR/tensorboard/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _same_f32(a: float, b: float) -> bool:
    """Event files store float32: equal after rounding the JSON value to float32 (NaN equals NaN)."""
    a32, b32 = float(np.float32(a)), float(np.float32(b))
    return (math.isnan(a32) and math.isnan(b32)) or a32 == b32


def _assert_tensorboard_equals_jsonl(run: Path) -> None:
    rows, events = _jsonl(run), _events(run)
    expected: dict[str, list[tuple[int, float]]] = {}
    previous = None
    for rec in rows:
        numbers = {
            k: v for k, v in rec.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        for k, v in numbers.items():
            expected.setdefault(tag_for(k), []).append((rec["step"], float(v)))
        images, wall = rec["images_seen"], rec["wall_s"]
        if previous is not None:
            images, wall = images - previous["images_seen"], wall - previous["wall_s"]
        expected.setdefault(IMG_PER_S_TAG, []).append((rec["step"], images / wall))
        previous = rec
    assert sorted(events) == sorted(expected)
    for tag, want in expected.items():
        got = events[tag]
        assert [s for s, _ in got] == [s for s, _ in want], tag  # one event per record: no step twice
        assert all(_same_f32(g, w) for (_, g), (_, w) in zip(got, want)), (tag, got, want)


def _assert_csv_equals_jsonl(run: Path) -> None:
    rows = _jsonl(run)
    with open(run / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    header = list(dict.fromkeys(k for r in rows for k in r))
    assert list(table[0]) == header and len(table) == len(rows)
    for rec, line in zip(rows, table):
        for k in header:
            if k not in rec:
                assert line[k] == ""
            elif isinstance(rec[k], bool):
                assert line[k] == str(rec[k])
            else:
                assert type(rec[k])(line[k]) == rec[k], (k, line[k], rec[k])  # exact round trip


class CurvesProbe(Callback):
    """Looks at curves.png right after each evaluation (the sinks run before user callbacks)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def on_epoch_end(self, trainer, record) -> None:
        png = trainer.out_dir / "curves.png"
        self.seen.append((record["epoch"], hashlib.sha256(png.read_bytes()).hexdigest() if png.exists() else ""))


@needs_data
def test_tensorboard_and_csv_mirror_metrics_jsonl_and_curves_follow_every_evaluation(
    tmp_path, data, monkeypatch, capsys
):
    probe, real = CurvesProbe(), api.train
    monkeypatch.setattr(api, "train", lambda *a, callbacks=(), **kw: real(*a, callbacks=[*callbacks, probe], **kw))
    run = tmp_path / "run"
    args = [a for a in pico_train_args(data, run, SETS, "--log", "tensorboard,csv") if a != "--quiet"]
    assert main(args) == 0
    rows = _jsonl(run)
    assert [r["step"] for r in rows] == [7, 14] and "top1_stage" in rows[0] and "top1_stage" not in rows[1]
    # the epoch line leads with the stage's own figure while a stage trains below the eval size
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch ") and " top5 " in x]
    assert len(lines) == 2
    r0, r1 = rows
    assert f"size 16: top1 {r0['top1_stage']:.2f}% at 16px; at the 24px eval size top1 {r0['top1']:.2f}% " in lines[0]
    assert f"size 24: top1 {r1['top1']:.2f}% top5 {r1['top5']:.2f}% " in lines[1]
    events = _events(run)
    for tag in ("train/loss", "train/lr", "val/top1", "val/top5", "val/top1_stage", "schedule/image_size"):
        assert tag in events, tag  # the tags a user looks for
    assert [v for _, v in events["schedule/image_size"]] == [16.0, 24.0]
    _assert_tensorboard_equals_jsonl(run)
    _assert_csv_equals_jsonl(run)
    # curves.png existed after the first evaluation and was redrawn after the second
    assert [e for e, _ in probe.seen] == [1, 2] and all(h for _, h in probe.seen)
    assert probe.seen[0][1] != probe.seen[1][1]
    assert json.loads((run / "config.json").read_text())["log"] == ["csv", "tensorboard"]


@needs_data
def test_resume_from_an_older_checkpoint_hides_the_dropped_steps_and_duplicates_none(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert main(pico_train_args(data, run, SETS, "--log", "tensorboard,csv")) == 0
    assert [s for s, _ in _events(run)["val/top1"]] == [7, 14]
    # a damaged last checkpoint: the resume continues from last.prev (step 7), metrics.jsonl drops
    # step 14, and the events already written for step 14 (and 7) must not show twice
    (run / "checkpoints" / "last.safetensors").write_bytes(b"damaged")
    assert main(["train", "--resume", str(run)]) == 0  # --log is the run's own: tensorboard,csv
    assert "resuming from the previous checkpoint" in capsys.readouterr().out
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [r["step"] for r in _jsonl(run)] == [7, 14]
    _assert_tensorboard_equals_jsonl(run)
    _assert_csv_equals_jsonl(run)


@pytest.mark.slow  # two processes, one SIGKILLed: about 11 s
@needs_data
def test_a_killed_run_resumes_its_logs_without_duplicates(tmp_path, data):
    run = tmp_path / "run"
    args = pico_train_args(data, run, SETS, "--log", "tensorboard,csv")
    killed = run_cli(*args, kill_at=10)  # in epoch 2, after the step-7 record was logged
    assert killed.returncode == -9, killed.stderr
    assert [s for s, _ in _events(run)["val/top1"]] == [7]
    done = run_cli("train", "--resume", str(run), "--quiet")
    assert done.returncode == 0, done.stderr
    assert [r["step"] for r in _jsonl(run)] == [7, 14]
    _assert_tensorboard_equals_jsonl(run)
    _assert_csv_equals_jsonl(run)


@needs_data
@pytest.mark.parametrize("value", ["tensorbord", "csv,wandb", "none,csv", ","])
def test_a_bad_log_value_is_one_line_exit_2(tmp_path, data, capsys, value):
    assert main(pico_train_args(data, tmp_path / "run", SETS, "--log", value)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("effv2 train: error: --log "), lines  # no traceback
    assert "--log" in lines[0] and repr(value) in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_parse_log_accepts_sinks_in_any_order_and_none():
    assert parse_log(None) == ("csv",)
    assert parse_log("tensorboard,csv") == parse_log(" CSV , tensorboard ") == ("csv", "tensorboard")
    assert parse_log(["tensorboard"]) == ("tensorboard",)
    assert parse_log("none") == ()
    with pytest.raises(UsageError, match="unknown log sink 'tb'"):
        parse_log("tb")


def test_csv_keeps_every_value_when_a_later_record_brings_a_new_key():
    rows = [{"step": 1, "top1": 0.1 + 0.2, "ema": True}, {"step": 2, "top1": 50.0, "train_kd": 1.5}]
    text = metrics_csv(rows)
    assert text.splitlines() == ["step,top1,ema,train_kd", "1,0.30000000000000004,True,", "2,50.0,,1.5"]
    assert float(text.splitlines()[1].split(",")[1]) == 0.1 + 0.2  # repr: floats read back exactly


def test_scalars_name_every_number_and_the_throughput_of_the_interval():
    rec = {"step": 20, "top1": 71.5, "train_loss": 0.5, "train_kd": 0.25, "images_seen": 640, "wall_s": 4.0}
    prev = {"step": 10, "images_seen": 320, "wall_s": 2.0}
    assert scalars(rec, prev) == {
        "val/top1": 71.5,
        "train/loss": 0.5,
        "train/kd": 0.25,
        "progress/images_seen": 640.0,
        "progress/wall_s": 4.0,
        IMG_PER_S_TAG: 160.0,
    }
    assert scalars({"step": 3, "ema": True, "new_metric": 2}) == {"metrics/new_metric": 2.0}
