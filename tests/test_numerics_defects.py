"""Issue 17 regressions that need a process or the CLI: ``--covariance --ddof 1`` on a single pixel."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


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
