"""Issue 17 regressions that need a process or the CLI: numba's cache on a read-only install, and
``--covariance --ddof 1`` on a single pixel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

#: a run where no cache folder can be written (NUMBA_CACHE_DIR, which gpustats then uses alone, lies under a
#: regular file: even root cannot create it): the loops compile in memory, without a warning
_NO_CACHE_LOCATION = """
import warnings
warnings.simplefilter("error")  # any warning fails the run
import numpy as np
from gpustats import compute_stats
from gpustats.backends import cpu_int_loops
x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
r = compute_stats([x, x[:1]], device="cpu", layout="NCHW")
print(r.count.tolist(), type(cpu_int_loops.u8_sums._cache).__name__)
"""


def _env() -> dict:
    env = dict(os.environ)
    for name in ("NUMBA_ENABLE_CUDASIM", "WORLD_SIZE", "NUMBA_CACHE_DIR", "NUMBA_CACHE_LOCATOR_CLASSES"):
        env.pop(name, None)
    return env


def test_cpu_kernels_compile_without_a_writable_cache_and_without_warnings(tmp_path):
    """numba's ``cache=True`` raised "no locator available" at import on a read-only install."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = dict(_env(), NUMBA_CACHE_DIR=str(blocker / "numba"))
    proc = subprocess.run([sys.executable, "-c", _NO_CACHE_LOCATION], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[60,", "60,", "60]", "NullCache"], proc.stdout
    assert proc.stderr.strip() == "", proc.stderr[-3000:]


def test_cli_covariance_ddof1_single_pixel_reports_nan(tmp_path, capsys):
    """A one-pixel image with --covariance --ddof 1 raised numpy's LinAlgError; now NaN (undefined)."""
    from gpustats.cli import main

    Image.fromarray(np.array([[[10, 20, 30]]], dtype=np.uint8)).save(tmp_path / "one.png")
    rc = main(["stats", str(tmp_path), "--device", "cpu", "--workers", "0", "--covariance", "--ddof", "1",
               "--format", "json", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    cov = json.loads(out)["stats"]["covariance"]
    assert np.isnan(np.array(cov["cov"], dtype=float)).all()
    assert np.isnan(np.array(cov["eigenvalues"], dtype=float)).all()
    rc = main(["stats", str(tmp_path), "--device", "cpu", "--workers", "0", "--covariance", "--ddof", "1", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0 and "nan" in out, err
