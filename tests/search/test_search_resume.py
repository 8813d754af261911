"""A killed search resumes without retraining finished trials; two worker processes share one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from effv2.models.spec import ArchSpec
from effv2.search import SearchConfig, SyntheticEvaluator, get_space, run_search
from effv2.search.driver import open_results

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = get_space("pico")

KILLED_RUN = """
import sys
from pathlib import Path
from effv2.search import SearchConfig, SyntheticEvaluator, get_space, run_search
space = get_space("pico")
run_search(space, SyntheticEvaluator(base=space.base, image_size=16, delay_s=0.4),
           SearchConfig(out_dir=Path(sys.argv[1]), trials=6, sampler="random", quiet=True))
"""


def _wait_for(predicate, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_killed_search_resumes_without_retraining(tmp_path) -> None:
    out = tmp_path / "search"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for(lambda: (out / "trials" / "3" / "spec.json").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)  # mid-trial: trial 3 is "training"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = {n: (out / "trials" / str(n) / "metrics.json").read_text() for n in range(3)}
    study = optuna.load_study(study_name="effv2-search", storage=f"sqlite:///{out}/study.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]

    calls: list[str] = []
    synthetic = SyntheticEvaluator(base=SPACE.base, image_size=16)

    def counting(spec: ArchSpec, trial_dir: Path) -> dict:
        calls.append(trial_dir.name)
        return synthetic(spec, trial_dir)

    result = run_search(
        SPACE,
        counting,
        SearchConfig(out_dir=out, trials=6, sampler="random", quiet=True),
        step_time=synthetic.step_time,
        task=synthetic.task,
    )
    assert result["complete"] == 6
    assert calls == ["4", "5", "6"]  # 0-2 untouched; 3 re-run as 4 with the same choices; then 2 more
    study, _ = open_results(out)
    t3, t4 = study.trials[3], study.trials[4]
    assert t3.state == TrialState.FAIL and t4.state == TrialState.COMPLETE
    assert t4.params == t3.params and t4.user_attrs["retry_of"] == 3
    for n, text in finished.items():
        assert (out / "trials" / str(n) / "metrics.json").read_text() == text


@dataclass
class RendezvousEvaluator:
    """Each worker's first trial waits until both workers have started one: proves they overlap."""

    folder: str

    def __call__(self, spec: ArchSpec, trial_dir: Path) -> dict:
        flag = Path(self.folder) / f"worker-{os.getpid()}"
        if not flag.exists():
            flag.touch()
            _wait_for(lambda: len(list(Path(self.folder).glob("worker-*"))) >= 2, timeout=120)
        return {"top1": 50.0 + sum(s.repeats for s in spec.stages)}


def test_two_worker_processes_share_one_sqlite_study(tmp_path) -> None:
    meet = tmp_path / "meet"
    meet.mkdir()
    synthetic = SyntheticEvaluator(base=SPACE.base, image_size=16)
    cfg = SearchConfig(out_dir=tmp_path / "search", trials=6, sampler="random", workers=2, quiet=True)
    result = run_search(SPACE, RendezvousEvaluator(str(meet)), cfg, step_time=synthetic.step_time, task=synthetic.task)
    assert 6 <= result["complete"] <= 7  # the last trials may overlap by at most workers - 1
    assert len(list(meet.glob("worker-*"))) == 2
    study, _ = open_results(cfg.out_dir)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["worker"] for t in done} == {0, 1}
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    assert json.loads((cfg.out_dir / "best_spec.json").read_text())["spec"]["stages"]
