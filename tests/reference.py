"""The independent float64 reference every numeric test compares against (numpy, two-pass).

Kept free of gpustats imports on purpose: it must not share code with what it checks.
"""

from __future__ import annotations

import numpy as np

#: The one tolerance table of the tests (kornia's habit): relative tolerance of (mean, std), per
#: route and input dtype. Why each value:
#:
#: * ``"cpu"`` (the CPU backend against :func:`moments`): integers are reduced exactly and rounded
#:   once, so their tolerance is the float64 reference's own rounding (exactness itself is tested
#:   bitwise across splits and against hand-derived values); floats are widened to float64 and
#:   reduced two-pass per image then merged in float64: 1e-12 for float64 input, and 1e-9 for the
#:   narrower floats, whose test data (offsets, ragged batches) the float64 reference sums with its
#:   own pairwise rounding.
#: * ``"kernel"`` (the CUDA kernels, numba simulator, against :func:`moments`-like references):
#:   float16/bfloat16/float32 are summed in float32 runs of at most RUN_LENGTH elements before float64
#:   takes over, so a run's rounding (2**-24 relative) shows at 1e-6 in the mean and 1e-5 in the std
#:   (E[d^2] - E[d]^2); float64 runs lose only float64 rounding: 1e-12.
#: * ``"cuda_vs_cpu"`` (the CUDA backend against the CPU backend on the same batches, offset 1e4,
#:   spread 1e-2): the float32 runs again (1e-5 in the std; the mean is shifted first, 1e-9; 16-bit
#:   floats 1e-7, where the CPU's float32 per-run rounding differs from the kernels'); float64 data
#:   is float64 on both sides: 1e-12.
TOLERANCE = {
    "cpu": {"uint8": (1e-13, 1e-13), "uint16": (1e-13, 1e-13), "int16": (1e-13, 1e-13), "int8": (1e-13, 1e-13),
            "float64": (1e-12, 1e-12), "float32": (1e-9, 1e-9), "float16": (1e-9, 1e-9), "bfloat16": (1e-9, 1e-9)},
    "kernel": {"float16": (1e-6, 1e-5), "bfloat16": (1e-6, 1e-5), "float32": (1e-6, 1e-5), "float64": (1e-12, 1e-12)},
    "cuda_vs_cpu": {"float16": (1e-7, 1e-5), "bfloat16": (1e-7, 1e-5), "float32": (1e-9, 1e-5),
                    "float64": (1e-12, 1e-12)},
}


def rtol(dtype: str, route: str = "cpu", stat: str = "mean") -> float:
    """The relative tolerance of ``stat`` ("mean" or "std") for ``dtype`` on ``route`` (:data:`TOLERANCE`)."""
    return TOLERANCE[route][str(dtype).replace("torch.", "")][stat == "std"]


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
