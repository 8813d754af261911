from __future__ import annotations

from pathlib import Path

import pytest
from inference_helpers import make_run, write_images


@pytest.fixture(scope="module")
def pico_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("pico"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images"))
