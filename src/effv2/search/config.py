"""What a search is told: its settings (:class:`SearchConfig`), its budget (``parse_budget``) and
the signature of the evaluate function it calls (see :mod:`.driver` for the whole loop)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.values import parse_duration
from ..errors import UsageError
from ..models.spec import ArchSpec

Evaluate = Callable[[ArchSpec, Path], dict[str, Any]]
STUDY_NAME = "effv2-search"


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """``"50"`` -> 50 trials; ``"30m"``, ``"2h"``, ``"90s"``, ``"1h30m"`` -> seconds of wall time."""
    t = str(text).strip().lower()
    if t.isdigit():
        if int(t) < 1:
            raise UsageError("--budget: expected at least 1 trial")
        return int(t), None
    if not t or t[-1] not in "hms":
        raise UsageError(f"--budget {text!r}: expected a number of trials (50) or a time (90s, 30m, 2h, 1h30m)")
    return None, parse_duration(t, "--budget")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    out_dir: Path
    trials: int | None = None  # finished trials the study should hold (a resumed search tops up to it)
    time_s: float | None = None  # wall-clock budget of this session; trials in flight finish
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None  # None: sqlite:///OUT/study.db
    study_name: str = STUDY_NAME
    workers: int = 1
    predictor_screen: int = 0  # K > 1: rank K sampled candidates with the predictor, train the best
    predictor: str = "ridge"  # ridge ranks better than the MLP ensemble below ~60 trials (docs/search.md)
    screen_after: int = 10  # finished trials before the predictor starts screening
    explore: float = 0.25  # share of trials left to the sampler while screening
    include_backbone: bool = True  # trial 0 is the backbone itself, the reference row
    # Architectures (spec dicts) to train first, after the backbone, when the study is created: e.g.
    # the best of a cheaper search (best_specs_of), a second, higher-fidelity stage over them.
    first_specs: tuple[dict, ...] = ()
    population: int = 16  # regularized evolution
    heartbeat_s: int = 30
    grace_s: int = 120
    threads: int | None = None  # torch CPU threads per worker; None: cores / workers when workers > 1
    # Hard wall-clock limit per trial (whatever it is doing: training, timing, a hung read): past it the
    # trial is recorded as failed with the reason and the search goes on. None: no limit.
    trial_timeout_s: float | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.trials is None and self.time_s is None:
            raise UsageError("--budget is required: a number of trials (50) or a time (30m)")
        if self.workers < 1:
            raise UsageError(f"--workers: expected at least 1, got {self.workers}")
        if self.predictor_screen < 0 or self.predictor_screen == 1:
            raise UsageError(
                f"--predictor-screen: expected 0 (off) or at least 2 candidates, got {self.predictor_screen}"
            )
        if not 0 <= self.explore <= 1:
            raise UsageError(f"explore: expected a share in [0, 1], got {self.explore}")
        if self.trial_timeout_s is not None and not self.trial_timeout_s > 0:
            raise UsageError(f"--trial-timeout: expected a positive number of seconds, got {self.trial_timeout_s}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads: expected at least 1, got {self.threads}")
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s:
            raise UsageError("heartbeat: need heartbeat_s >= 1 and grace_s > heartbeat_s")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir).resolve()}/study.db"
