"""Packaging: kernels/ installs as gpustats.kernels; import gpustats stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light_and_does_not_touch_numba_or_cuda():
    code = (  # no torch (so no CUDA through it) and no numba, down to the entry point itself
        "import time, sys; t = time.perf_counter(); import gpustats; from gpustats import compute_stats; "
        "dt = time.perf_counter() - t; print(dt); assert 'numba' not in sys.modules, 'numba imported'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr
    # what makes the import light is asserted above (no numba, no CUDA); the time is a generous
    # bound that only a heavy import (numba alone takes ~1 s here) would break, even on a busy machine
    assert float(out.stdout.strip()) < 3.0


@pytest.mark.slow
def test_non_editable_install_provides_gpustats_kernels(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "--target", str(target), str(ROOT)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "gpustats" / "kernels" / "__init__.py").is_file()
    assert not (target / "kernels").exists()  # no clashing top-level "kernels" module
    env = {**os.environ, "PYTHONPATH": str(target), "NUMBA_ENABLE_CUDASIM": "1", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("NUMBA_CACHE_DIR", None)
    code = ("import gpustats, gpustats.kernels as k; from gpustats.backends import cpu_int_loops; print(k.__file__); "
            "print(gpustats.__file__); print(cpu_int_loops.u8_sums.stats.cache_path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    kfile, gfile, cache = out.stdout.split()
    assert kfile.startswith(str(target)) and gfile.startswith(str(target))  # the installed copy, not the checkout
    # numba's compiled loops go to the per-user cache, not next to the installed sources (pip uninstall would
    # leave them behind, and the leftover folder shadowed a later editable install)
    assert cache.startswith(str(tmp_path / "xdg" / "gpustats" / "numba")), cache
