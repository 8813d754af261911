"""torch.compile's cache goes to the user's cache folder (XDG), never over a folder the user chose."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from effv2.runtime import compile_cache, resolve_runtime
from effv2.runtime.compile_cache import ENV, default_compile_cache, use_persistent_compile_cache


@pytest.fixture(autouse=True)
def no_user_setting(monkeypatch):
    """As if the user had not set TORCHINDUCTOR_CACHE_DIR before effv2 was imported."""
    monkeypatch.setattr(compile_cache, "USER_SETTING", None)


def test_the_default_folder_follows_xdg_then_home(tmp_path):
    assert default_compile_cache({"XDG_CACHE_HOME": "/x/cache", "HOME": "/h"}) == (
        default_compile_cache({"XDG_CACHE_HOME": "/x/cache"})
    )
    assert str(default_compile_cache({"XDG_CACHE_HOME": "/x/cache", "HOME": "/h"})) == "/x/cache/effv2/inductor"
    assert str(default_compile_cache({"HOME": "/h"})) == "/h/.cache/effv2/inductor"
    assert str(default_compile_cache({"XDG_CACHE_HOME": "", "HOME": "/h"})) == "/h/.cache/effv2/inductor"


def test_it_sets_and_creates_the_folder_when_unset(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_persistent_compile_cache() == str(tmp_path / "xdg" / "effv2" / "inductor")
    assert os.environ[ENV] == str(tmp_path / "xdg" / "effv2" / "inductor")
    assert (tmp_path / "xdg" / "effv2" / "inductor").is_dir()


def test_a_folder_the_user_set_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "USER_SETTING", str(tmp_path / "mine"))
    monkeypatch.setenv(ENV, "/tmp/torchinductor_someone")  # what importing torch._dynamo fills in
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_persistent_compile_cache() == str(tmp_path / "mine")
    assert os.environ[ENV] == str(tmp_path / "mine")
    assert not (tmp_path / "xdg").exists()


def test_torch_default_filled_in_at_import_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "/tmp/torchinductor_someone")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert use_persistent_compile_cache() == str(tmp_path / "effv2" / "inductor")
    assert os.environ[ENV] == str(tmp_path / "effv2" / "inductor")


def test_a_folder_that_cannot_be_made_leaves_torch_default(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(ENV, "/tmp/torchinductor_someone")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert use_persistent_compile_cache() is None
    assert os.environ[ENV] == "/tmp/torchinductor_someone"


def test_wrap_points_the_cache_before_compiling(tmp_path, monkeypatch):
    seen = {}

    def fake_compile(net, **kw):
        seen["dir"] = os.environ.get(ENV)
        return net

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(torch, "compile", fake_compile)
    resolve_runtime("cpu", amp="none", channels_last=False, compile=True).wrap(torch.nn.Linear(2, 2))
    assert seen["dir"] == str(tmp_path / "effv2" / "inductor")


def test_inductor_writes_its_cache_there(tmp_path):
    """A real compile in a fresh process (effv2's import, then torch._dynamo's, as a user's run has
    them): inductor's cache lands under $XDG_CACHE_HOME/effv2/inductor, not in /tmp. Forward only, under
    no_grad (one graph to generate, not a joint forward and backward: half the test's time)."""
    code = textwrap.dedent(
        """
        import torch
        from effv2.runtime import resolve_runtime
        net = resolve_runtime("cpu", amp="none", channels_last=False, compile=True).wrap(torch.nn.Linear(4, 3))
        with torch.no_grad():
            net(torch.randn(2, 4))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "compiler" in proc.stderr.lower():
        pytest.skip(f"no working C++ compiler for inductor: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "effv2" / "inductor"
    assert folder.is_dir() and any(p.is_file() for p in folder.rglob("*")), "inductor wrote nothing to the cache"
