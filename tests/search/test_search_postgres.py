"""Two search processes with their own output folders (two "machines") share one study in a real
PostgreSQL database through Optuna's RDB storage.

Needs a server: set ``EFFV2_TEST_POSTGRES_URL`` to an empty database the test may write to, e.g.
``postgresql://effv2:effv2@localhost/effv2_search`` (README, "Parallel workers and several
machines", shows how to make one), and ``pip install "effv2[postgres]"`` (psycopg 3). Skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from optuna.trial import TrialState

from effv2.search.driver import load_study

URL = os.environ.get("EFFV2_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not URL, reason="EFFV2_TEST_POSTGRES_URL is not set (no PostgreSQL server)")

WORKER = """
import sys
from pathlib import Path
from effv2.search import SearchConfig, SyntheticEvaluator, get_space, run_search
space = get_space("pico")
run_search(space, SyntheticEvaluator(base=space.base, image_size=16, delay_s=0.3),
           SearchConfig(out_dir=Path(sys.argv[1]), storage=sys.argv[2], study_name=sys.argv[3], trials=8,
                        sampler="tpe", seed=int(sys.argv[4]), quiet=True))
"""


def test_two_machines_share_one_postgres_study(tmp_path) -> None:
    pytest.importorskip("psycopg")
    name = f"effv2-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"machine-{i}"), URL, name, str(i)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    study = load_study(URL, name)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 8 <= len(done) <= 9  # both stop at the budget; the last trials may overlap by one
    assert len({t.user_attrs["process"] for t in done}) == 2  # both machines trained trials
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    assert sum(bool(t.user_attrs.get("backbone")) for t in study.trials) == 1  # enqueued once, not per machine
    # each machine's folder holds the trials it ran, and either can report the shared study
    for i in range(2):
        assert (tmp_path / f"machine-{i}" / "trials").is_dir()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "effv2",
            "search",
            "report",
            str(tmp_path / "machine-0"),
            "--storage",
            URL,
            "--study-name",
            name,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert f"{len(done)} finished" in out.stdout
