"""What the sources tests share (tests/test_sources.py, tests/test_sources_decode.py): the demo folder
(one per test module) and a small image written where a test wants it.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from gpustats.sources import synthetic


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return synthetic.make_demo_folder(tmp_path_factory.mktemp("demo"))


def touch_image(path: Path, size=(4, 3), colour=(10, 20, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt or "PNG")
    return path
