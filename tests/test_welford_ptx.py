"""The welford strategy's third kernel (its sum-form export, which tests/test_kernels_ptx.py's fixed
list does not name) compiles for sm_90 without register spills; skips as that file does."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from test_kernels_ptx import _REASON, CC, F1, F2, I1, I2, PTXAS  # skips under the simulator, like it

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.mark.parametrize("channels", [1, 3, 16])
def test_welford_export_kernel_compiles_for_sm90(channels, tmp_path):
    from numba import cuda

    from gpustats.kernels import welford

    kernel = welford._build_export(channels)
    ptx, _ = cuda.compile_ptx(kernel.py_func, (I2, F2, I1, F1, F1), cc=CC)
    assert ".entry" in ptx
    if PTXAS is None:
        pytest.skip("no ptxas: PTX only")
    path = tmp_path / "export.ptx"
    path.write_text(ptx)
    out = subprocess.run([PTXAS, f"-arch=sm_{CC[0]}{CC[1]}", "-v", str(path), "-o", os.devnull],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not any(int(v) for v in re.findall(r"(\d+) bytes spill stores", out.stderr)), out.stderr[-1000:]
