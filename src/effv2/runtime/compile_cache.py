"""Where torch.compile keeps what it compiled, so the next run does not pay again.

Inductor's caches (the FX graph cache and the compiled C++ kernels, on by default in torch 2.14) live in
``$TORCHINDUCTOR_CACHE_DIR``, which defaults to ``/tmp/torchinductor_<user>``: emptied by every reboot
and by tmp cleaners, after which a budgeted run on a 2-core CPU spends about a minute of its budget
compiling again (``benchmarks/RESULTS.md``, "torch.compile for a budgeted bf16 run"). effv2 points it at
the user's cache folder instead, the XDG convention: ``$XDG_CACHE_HOME/effv2/inductor``, else
``~/.cache/effv2/inductor``. A ``TORCHINDUCTOR_CACHE_DIR`` the user set is never overridden, and a
cache folder that cannot be created leaves torch's default in place (a cache is an optimisation, never
a reason to fail a run).

Whether the user set the variable is read when this module is imported, which ``effv2/__init__.py``
does first: importing torch._dynamo (which effv2's model code does) already fills the variable in with
torch's /tmp default, so it cannot be told from the user's choice later. Inductor reads the variable
each time it needs the folder, so setting it just before the first compile is in time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV = "TORCHINDUCTOR_CACHE_DIR"
USER_SETTING: str | None = os.environ.get(ENV) or None  # before anything imported torch._dynamo


def default_compile_cache(environ: Mapping[str, str] | None = None) -> Path:
    """The folder effv2 prefers for inductor's caches (pure: reads only ``environ``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(base) / "effv2" / "inductor"


def use_persistent_compile_cache() -> str | None:
    """Point ``TORCHINDUCTOR_CACHE_DIR`` at :func:`default_compile_cache` unless the user set it
    (:data:`USER_SETTING`, the variable as it was when effv2 was imported).

    Returns the folder in use: the user's, effv2's, or None when effv2's cannot be created or written
    (torch's own default then applies). Call it before ``torch.compile``.
    """
    if USER_SETTING:
        os.environ[ENV] = USER_SETTING
        return USER_SETTING
    folder = default_compile_cache()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    os.environ[ENV] = str(folder)
    return str(folder)
