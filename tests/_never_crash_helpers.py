"""What the never-crash tests share (tests/test_never_crash_*.py): tiny images and folders, the command run
in this process, a child process's environment, and a fixture that fails a test if a file is decoded.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpustats.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _png(seed: int = 0, size=(5, 4)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def _folder(tmp_path: Path, n: int = 4, name: str = "imgs") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:02d}.png").write_bytes(_png(i))
    return folder


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if a file is decoded: checks must come before the run."""
    from gpustats.sources import reduce_tasks

    decoded = []
    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", lambda self, b: decoded.append(b))
    return decoded


def _child_env(**extra) -> dict:
    env = dict(os.environ, **extra)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


U8 = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
