"""The demo finds its data itself: local files first, then apt, then torchvision's download, else one line."""

from __future__ import annotations

import pytest

from effv2.cli import demo
from effv2.errors import UsageError


def test_local_data_is_used_without_apt_or_download(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(demo, "_try_apt", lambda: calls.append("apt") or False)
    from effv2.data import sources

    real = sources.load_source

    def fake_load(source, **kw):
        calls.append(("load", kw.get("download", False)))
        return "bundle"

    monkeypatch.setattr(sources, "load_source", fake_load)
    assert demo.find_fashion_mnist(str(tmp_path)) == "bundle"
    assert calls == [("load", False)]
    monkeypatch.setattr(sources, "load_source", real)


def test_missing_data_tries_apt_then_download_then_says_so(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(demo, "_try_apt", lambda: calls.append("apt") or False)
    from effv2.data import sources

    def fake_load(source, **kw):
        calls.append(("load", kw.get("download", False)))
        if kw.get("download"):
            raise OSError("network unreachable")
        raise UsageError("fashion-mnist: not found in ...")

    monkeypatch.setattr(sources, "load_source", fake_load)
    with pytest.raises(UsageError) as err:
        demo.find_fashion_mnist(str(tmp_path))
    assert calls == [("load", False), "apt", ("load", True)]
    msg = str(err.value)
    assert "\n" not in msg and "not available" in msg and "network unreachable" in msg


def test_apt_is_only_tried_as_root(monkeypatch):
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    assert demo._try_apt() is False
