"""glibc malloc settings (runtime/malloc.py): when they apply, and that they keep freed memory mapped."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from effv2.runtime import malloc

MODULE = Path(malloc.__file__)

# a child that loads malloc.py alone (no torch: a fast start), applies it unless told not to, then
# mallocs 64 MiB, touches every page, frees it, and counts the page faults of doing that a second time
CHILD = r"""
import ctypes, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("m", sys.argv[1]); m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
state = m.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
def touch():
    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")
    }
    env.pop(malloc.ENV, None)
    return {**env, **extra}


def _child(**extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(MODULE)], env=_clean_env(**extra), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_stays_mapped():
    """Without the settings glibc mmaps a 64 MiB block and unmaps it on free, so touching it again
    faults in all 16,384 of its 4 KiB pages; with them the block comes back from the heap, mapped."""
    off, on = _child(EFFV2_MALLOC="off"), _child()
    assert off["state"] == {"applied": False, "why": "EFFV2_MALLOC=off"}
    assert on["state"]["applied"] and on["state"]["settings"]["M_MMAP_THRESHOLD"] == 1 << 30
    assert off["faults"] >= 16_000 and on["faults"] < 1_000


@pytest.mark.parametrize(
    ("env", "plat", "libc", "why"),
    [
        ({}, "linux", "glibc", ""),
        ({"EFFV2_MALLOC": "off"}, "linux", "glibc", "EFFV2_MALLOC=off"),
        ({"EFFV2_MALLOC": "on"}, "linux", "glibc", ""),
        ({"MALLOC_ARENA_MAX": "2"}, "linux", "glibc", "the user's own malloc settings (MALLOC_ARENA_MAX)"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "linux", "glibc", "the user's own malloc settings"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "linux", "glibc", "another allocator in LD_PRELOAD"),
        ({}, "linux", "", "not glibc (linux, unknown C library)"),
        ({}, "darwin", "", "not glibc (darwin"),
    ],
)
def test_why_not(env, plat, libc, why):
    got = malloc.why_not(env, platform_name=plat, libc=libc)
    assert got.startswith(why) if why else got == ""


def test_describe_names_the_settings_or_the_reason():
    on = {
        "applied": True,
        "settings": {"M_MMAP_THRESHOLD": 1 << 30, "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 1 << 28},
    }
    assert malloc.describe(on).startswith("keeps freed memory (mallopt M_MMAP_THRESHOLD=1073741824, ")
    assert malloc.describe({"applied": False, "why": "EFFV2_MALLOC=off"}) == "glibc defaults (EFFV2_MALLOC=off)"
