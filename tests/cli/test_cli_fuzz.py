"""No command line produces a traceback: every bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effv2.cli.main import main

WORDS = st.sampled_from(
    [
        "train",
        "eval",
        "predict",
        "models",
        "convert",
        "bench",
        "search",
        "scale",
        "demo",
        "--model",
        "--data",
        "--out",
        "--set",
        "--recipe",
        "--epochs",
        "--seed",
        "--checkpoint",
        "--resume",
        "--split",
        "--size",
        "--batch",
        "--mode",
        "--from",
        "--budget",
        "--space",
        "--target",
        "efficientnetv2_pico",
        "nope",
        "fashion-mnist",
        "/nonexistent/x",
        "-1",
        "0",
        "1e9",
        "nan",
        "abc",
        "epochs=abc",
        "progressive.enabled=maybe",
        "lr=-1",
        "=",
        "progressive=",
        "batch_size=0",
        "x.y.z=1",
        "amp=fp8",
        "optimizer=lion",
        "eval_size=1",
        "",
        "--",
        "{",
        "[1,2]",
        "\x00",
        "--device",
        "cuda:7",
        "tpu",
        "--overwrite",
        "task=nope",
        "seed=-5",
        "99999999999999999999999",
        "--model-spec",
        "--top-k",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(WORDS, min_size=1, max_size=8))
def test_random_command_lines_never_traceback(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EFFV2_DATA", str(tmp_path / "no-data"))  # nothing to train on: no work can start
    monkeypatch.setattr("effv2.cli.demo.find_fashion_mnist", _no_demo)
    if argv[0] in ("bench", "search", "scale"):
        argv = [argv[0], "--model" if argv[0] == "bench" else "--space", "nope", *argv[1:]]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: --help / --version exit 0, usage errors exit 2
        rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        lines = [
            line for line in err.strip().splitlines() if not line.startswith("usage:") and not line.startswith(" ")
        ]
        assert len(lines) <= 1, err


def _no_demo(*_a, **_k):
    from effv2.errors import UsageError

    raise UsageError("no data in this test")


@pytest.mark.parametrize(
    "setting, key",
    [
        ("epochs=abc", "epochs"),
        ("progressive.enabled=maybe", "progressive.enabled"),
        ("amp=fp8", "amp"),
        ("optimizer=lion", "optimizer"),
        ("no_such=1", "no_such"),
        ("batch_size=0", "batch_size"),
    ],
)
def test_bad_recipe_values_name_the_key(setting, key, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--model",
            "efficientnetv2_pico",
            "--data",
            "fashion-mnist",
            "--out",
            str(tmp_path / "r"),
            "--data-dir",
            str(tmp_path),
            "--set",
            setting,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and key in err[0], err
