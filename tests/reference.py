"""The independent float64 reference every numeric test compares against (numpy, two-pass).

Kept free of gpustats imports on purpose: it must not share code with what it checks.
"""

from __future__ import annotations

import numpy as np

#: relative tolerances per input dtype (one table, kornia's habit). Integer paths are exactly
#: rounded; their tolerance is the float64 reference's own rounding error (exactness itself is
#: tested bitwise across splits and against hand-derived values).
RTOL = {"uint8": 1e-13, "uint16": 1e-13, "int16": 1e-13, "int8": 1e-13, "float64": 1e-12, "float32": 1e-9,
        "float16": 1e-9, "bfloat16": 1e-9}


def pixels(batches, layout: str) -> np.ndarray:
    """All pixels of all batches as a float64 array [P, C] (layout names the batches' layout)."""
    rows = []
    for b in batches:
        a = np.asarray(b, dtype=np.float64)
        if layout == "NCHW":
            a = a.transpose(0, 2, 3, 1)
        elif layout == "CHW":
            a = a.transpose(1, 2, 0)
        rows.append(a.reshape(-1, a.shape[-1]))
    return np.concatenate(rows)


def moments(px: np.ndarray, scale: float = 1.0, ddof: int = 0) -> dict:
    """Two-pass float64 mean/std/var/min/max per channel of [P, C] pixels divided by scale."""
    x = px / scale
    mean = x.sum(axis=0) / x.shape[0]
    var = ((x - mean) ** 2).sum(axis=0) / (x.shape[0] - ddof)
    return {"mean": mean, "var": var, "std": np.sqrt(var), "min": x.min(axis=0), "max": x.max(axis=0),
            "count": np.full(x.shape[1], x.shape[0])}


def assert_matches(result, ref: dict, rtol: float, atol: float = 0.0) -> None:
    for name in ("mean", "std", "var", "min", "max"):
        np.testing.assert_allclose(getattr(result, name), ref[name], rtol=rtol, atol=atol, err_msg=name)
    np.testing.assert_array_equal(result.count, ref["count"])
