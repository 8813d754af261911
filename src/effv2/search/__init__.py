"""Training-aware architecture search (EfficientNetV2 section 3.3), a performance predictor and
compound / latency-aware scaling.

- :mod:`.space`: the search space as stage rows with choices (``get_space``, ``SearchSpace``)
- :mod:`.driver`: the Optuna study: persistent, resumable, parallel (``run_search``)
  (split by job: :mod:`.config` settings and budget, :mod:`.storage` opening a study and reading
  a folder back, :mod:`.resume` creating or resuming the study, :mod:`.worker` one process's trials)
- :mod:`.evaluators`: proxy training (``ProxyEvaluator``) and a synthetic stand-in
- :mod:`.predictor`: the accuracy predictor and ``predictor_report``
- :mod:`.results`: trials.csv, the printed table, pareto.png, best_spec.json
- :mod:`.scale`: compound scaling with V2's caps and latency-aware compound scaling (LACS)
"""

from .cost import REWARD_V, REWARD_W, Cost, model_cost, model_params, reward
from .driver import SearchConfig, open_results, parse_budget, run_search
from .evaluators import ProxyEvaluator, SyntheticEvaluator, TaskInfo, synthetic_top1
from .predictor import MLPEnsemble, RidgePredictor, encode, predictor_report, spearman
from .space import SearchSpace, StageChoices, genotype, get_space, load_space

__all__ = [
    "REWARD_V",
    "REWARD_W",
    "Cost",
    "MLPEnsemble",
    "ProxyEvaluator",
    "RidgePredictor",
    "SearchConfig",
    "SearchSpace",
    "StageChoices",
    "SyntheticEvaluator",
    "TaskInfo",
    "encode",
    "genotype",
    "get_space",
    "load_space",
    "model_cost",
    "model_params",
    "open_results",
    "parse_budget",
    "predictor_report",
    "reward",
    "run_search",
    "spearman",
    "synthetic_top1",
]
