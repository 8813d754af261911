"""A search survives its trials: a trial that runs past its hard time limit or finds its run folder
busy is recorded as failed with the reason and the search goes on; a killed search leaves no orphans."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from effv2.search.driver import run_search
from effv2.search.evaluators import TaskInfo, synthetic_top1
from effv2.search.space import get_space
from effv2.training.run_folder import run_lock

SPACE = get_space("pico")
TASK = TaskInfo(in_chans=1, num_classes=10, image_size=16, batch_size=8)


def test_a_trial_past_its_hard_limit_or_on_a_busy_folder_fails_alone(tmp_path):
    from effv2.search.config import SearchConfig

    def slow_then_fast(spec, trial_dir):
        n = int(trial_dir.name)
        if n == 1:
            time.sleep(30)  # hangs: the limit interrupts it
        if n == 2:  # its run folder is held by another process (another worker claimed the trial)
            with run_lock(trial_dir / "run"):
                from effv2.training.api import train

                train("efficientnetv2_pico", "fashion-mnist", trial_dir / "run")
        return {"top1": synthetic_top1(spec, SPACE.base)}

    cfg = SearchConfig(out_dir=tmp_path / "s", trials=3, sampler="random", quiet=True, trial_timeout_s=1.5)
    t0 = time.time()
    out = run_search(SPACE, slow_then_fast, cfg, step_time=None, task=TASK)
    assert time.time() - t0 < 25
    assert out["complete"] == 3 and out["failed"] == 2
    rows = list(csv.DictReader((tmp_path / "s" / "trials.csv").open()))
    errors = {r["trial"]: r["error"] for r in rows if r["state"] == "FAIL"}
    assert "ran past its limit of 1.5 s" in errors["1"] and "in use by" in errors["2"]


@pytest.mark.slow  # ~30 s: spawns a search with 2 worker processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_search_leaves_no_orphan_workers(tmp_path):
    script = tmp_path / "search.py"
    pids = tmp_path / "pids"
    script.write_text(
        textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from effv2.search.config import SearchConfig
        from effv2.search.driver import run_search
        from effv2.search.evaluators import TaskInfo
        from effv2.search.space import get_space

        def evaluate(spec, trial_dir):
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(60)
            return {{"top1": 1.0}}

        if __name__ == "__main__":
            cfg = SearchConfig(out_dir=Path({str(tmp_path / "s")!r}), trials=4, workers=2, sampler="random", quiet=True)
            run_search(get_space("pico"), evaluate, cfg, step_time=None,
                       task=TaskInfo(in_chans=1, num_classes=10, image_size=16, batch_size=8))
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 120
    while time.time() < deadline and (not pids.exists() or len(pids.read_text().split()) < 2):
        time.sleep(0.5)
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    alive = []
    for pid in workers:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert alive == []
