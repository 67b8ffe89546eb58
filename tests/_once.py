"""A long fixture's work done once per test session, also when pytest-xdist spreads a module over workers.

The README's test command runs ``pytest -n auto``; a module-scoped fixture would then run once per worker
that gets one of the module's tests (xdist's ``loadgroup`` does not keep a module together under pytest 9).
:func:`shared_folder` is the recipe of xdist's documentation: the first worker to ask does the work in a
folder every worker of the session shares, under a file lock; the others wait for it and read what it left.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock


def shared_folder(request: pytest.FixtureRequest, name: str, produce: Callable[[Path], None]) -> Path:
    """The folder in which ``produce(folder)`` ran, once per session. If it failed, every caller fails with
    its error (the work is not repeated by each worker)."""
    base = request.getfixturevalue("tmp_path_factory").getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker: its basetemp is <session basetemp>/popen-gwN
        base = base.parent
    folder = base / f"once-{name}"
    with FileLock(str(folder) + ".lock"):
        failed = folder / ".failed"
        if not (folder / ".done").exists() and not failed.exists():
            folder.mkdir(exist_ok=True)
            try:
                produce(folder)
            except BaseException as exc:  # pytest.fail included
                failed.write_text(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}")
                raise
            (folder / ".done").write_text("")
    if failed.exists():
        pytest.fail(f"{name}: the shared run failed in another worker:\n{failed.read_text()}")
    return folder
