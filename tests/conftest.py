"""Shared test fixtures. Keep this file generic: fixtures any test module may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests with one intra-op thread (restored afterwards).

    On a shared 2-core machine two OpenMP threads fighting other processes made a small conv net's
    forward pass 60x slower (5.9 s vs 0.08 s for efficientnetv2_s at 64 px); one thread avoids that.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    """Give every test the torch thread count it started with back.

    A test that changes it in the pytest process (a benchmark's ``--threads``, ``torch.set_num_threads``)
    would otherwise leak it into later in-process runs, and the bitwise-resume tests compare an
    in-process run with a subprocess one: a different thread count changes the reductions' order.
    """
    previous = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
