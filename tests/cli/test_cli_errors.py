"""User mistakes named in the reliability section: each is one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from effv2.cli.main import main
from effv2.errors import UsageError
from effv2.training.report import append_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
import run_golden  # noqa: E402

needs_data = pytest.mark.skipif(not run_golden.SHARED.is_dir(), reason="shared Fashion-MNIST not available")


def _one_line_exit_2(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_full_disk_while_writing_metrics_is_one_line():
    with pytest.raises(UsageError, match="could not write /dev/full: No space left on device"):
        append_jsonl(Path("/dev/full"), {"epoch": 1})


@needs_data
@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--device", "tpu"], "--device tpu"),
        (["--seed", str(2**70)], "--seed"),
        (["--set", "task=nope"], "unknown task 'nope'"),
    ],
)
def test_bad_training_options(tmp_path, capsys, extra, expect):
    data = run_golden.write_subset(tmp_path / "fm")
    argv = [
        "train",
        "--model",
        "efficientnetv2_pico",
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "epochs=1",
        "--set",
        "batch_size=64",  # the subset's 256 images less the default 10% val hold-out
        *extra,
    ]
    assert expect in _one_line_exit_2(argv, capsys)


def test_a_spec_file_with_wrong_types(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"stages": "not a list", "stem": "wide"}))
    msg = _one_line_exit_2(
        ["train", "--model-spec", str(spec), "--data", "fashion-mnist", "--out", str(tmp_path / "r")], capsys
    )
    assert "spec" in msg


def test_an_error_inside_a_loader_worker_is_one_line(tmp_path, capsys):
    """Every file of a folder decodes badly (valid PNG header, garbage data), read by 2 worker processes:
    the worker's error reaches the user as its own one-line message, without the worker's traceback."""
    header = (
        b"\\x89PNG\\r\\n\\x1a\\n"
        + b"\\x00\\x00\\x00\\rIHDR"
        + (16).to_bytes(4, "big") * 2
        + b"\\x08\\x00\\x00\\x00\\x00"
    )
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(40):
            (tmp_path / "imgs" / c / f"{i}.png").write_bytes(header + b"\\x00\\x00\\x00\\x00" + b"garbage" * 20)
    argv = [
        "train",
        "--model",
        "efficientnetv2_pico",
        "--data",
        str(tmp_path / "imgs"),
        "--out",
        str(tmp_path / "r"),
        "--set",
        "num_workers=2",
        "--set",
        "batch_size=8",
        "--set",
        "val_fraction=0.25",
        "--set",
        "epochs=1",
        "--quiet",
    ]
    _one_line_exit_2(argv, capsys)
