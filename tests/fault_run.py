"""Test hook, never imported by effv2 itself: run the effv2 CLI with a callback that SIGKILLs the
process right after optimizer step N (after any checkpoint of that step was written).

    python tests/fault_run.py [--import FILE.py] [--kill-at-step N] train --model ... --out RUN
    python -m torch.distributed.run --nproc_per_node 2 tests/fault_run.py --kill-at-step N train ...

``--import FILE.py`` runs a file first (e.g. one that registers a test-only task).

The callback goes in through ``effv2.training.api.train``'s ``callbacks`` argument, so the
production loop has no fault-injection code and reads nothing from the environment.
"""

from __future__ import annotations

import os
import signal
import sys


class KillAtStep:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, trainer, record) -> None:
        pass


def main(argv: list[str]) -> int:
    import runpy

    step = None
    while argv and argv[0] in ("--kill-at-step", "--import"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--import":
            runpy.run_path(value, run_name="effv2_test_plugin")
        else:
            step = int(value)
    import effv2.training.api as api
    from effv2.cli.main import main as effv2_main

    if step is not None:
        real = api.train

        def train(*args, callbacks=(), **kwargs):
            return real(*args, callbacks=[*callbacks, KillAtStep(step)], **kwargs)

        api.train = train  # effv2.cli.train looks train up on the module at call time
    return effv2_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
