"""Data, references and checks shared by the simulator's kernel case files (tests/sim_kernels_cases.py,
tests/sim_vec_extras_cases.py): imported only inside the simulator child or on a GPU.

Every strategy is compared against an independent numpy float64 two-pass reference
(tests/reference.py style, recomputed here per channel on the decoded values).
Sizes stay tiny: the simulator runs every CUDA thread as a Python thread.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from gpustats import kernels as K
from gpustats.kernels._common import launch_config

from reference import rtol

SIM = K.simulator_enabled()
if SIM:
    sys.setswitchinterval(1e-4)  # simulated barriers wait on the GIL switch interval (5 ms default)

STRATEGIES = [s for s in K.SIMULATOR_STRATEGIES if s != "hist8"]  # every dtype


#: grid stride of the default launch: (blocks, threads) under the simulator
BLOCKS, THREADS = launch_config(10**9)


def _gpu_only():
    from numba import cuda

    if SIM or not cuda.is_available():
        pytest.skip("needs a real NVIDIA GPU with numba-cuda (simulator on or no GPU)")


# ----------------------------------------------------------------------------- data


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _bf16_decode(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def make_data(dtype: str, shape, rng, *, nonfinite=False, loc=0.0, scale=1.0):
    """(stored array [N, C, L] in the kernel's storage dtype, its decoded float64 values)."""
    if dtype == "uint8":
        stored = rng.integers(0, 256, shape, dtype=np.uint8)
        return stored, stored.astype(np.float64)
    if dtype == "uint16":
        stored = rng.integers(0, 65536, shape, dtype=np.uint16)
        return stored, stored.astype(np.float64)
    values = (loc + scale * rng.standard_normal(shape)).astype(np.float32)
    flat = values.reshape(-1)
    if nonfinite and flat.size >= 6:
        flat[1], flat[3], flat[5] = np.nan, np.inf, -np.inf
        flat[0] = 1e-40 if dtype in ("bfloat16", "float32", "float64") else 6e-8  # subnormal
        flat[2] = -0.0
    if dtype == "bfloat16":
        stored = _bf16_bits(values)
        return stored, _bf16_decode(stored).astype(np.float64)
    stored = values.astype(dtype)
    return stored, stored.astype(np.float64)


def to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "CP" else np.ascontiguousarray(a.transpose(0, 2, 1))


def reference(values: np.ndarray) -> dict:
    """Two-pass float64 per-channel statistics of [N, C, L] values, non-finite excluded."""
    channels = values.shape[1]
    rows = values.transpose(1, 0, 2).reshape(channels, -1)
    out = {k: [] for k in ("count", "nonfinite", "mean", "std", "min", "max", "sum", "sumsq")}
    for row in rows:
        ok = np.isfinite(row)
        good = row[ok]
        out["count"].append(good.size)
        out["nonfinite"].append(row.size - good.size)
        mean = good.sum() / good.size if good.size else np.nan
        out["mean"].append(mean)
        out["std"].append(np.sqrt(((good - mean) ** 2).sum() / good.size) if good.size else np.nan)
        out["min"].append(good.min() if good.size else np.inf)
        out["max"].append(good.max() if good.size else -np.inf)
        out["sum"].append(sum(int(v) for v in good) if good.size and np.all(good == np.round(good)) else good.sum())
        out["sumsq"].append(sum(int(v) * int(v) for v in good) if np.all(good == np.round(good)) else None)
    return out


def shift_for(values: np.ndarray) -> np.ndarray:
    """A caller-style shift: a rounded guess at each channel's mean (not exact on purpose)."""
    rows = values.transpose(1, 0, 2).reshape(values.shape[1], -1)
    guess = [np.round(r[np.isfinite(r)].mean(), 1) if np.isfinite(r).any() else 0.0 for r in rows]
    return np.asarray(guess)


def host_of(strategy, acc) -> dict:
    """``acc.to_host()`` plus, for float input, ``mean_d`` and ``m2``: the mean and M2 of d = x - shift
    from the strategy's own state: the shifted sums (``fsum``/``fsumsq``), or for welford its running
    (n, mean, M2) summary (``summary_count`` its n), which is what the CUDA backend reads."""
    host = acc.to_host()
    if acc.integer:
        return host
    if strategy == "welford":
        summary = K.get_strategy("welford").moments_of(acc)
        host["summary_count"], host["mean_d"], host["m2"] = summary["count"], summary["mean"], summary["m2"]
        return host
    n = host["count"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        host["mean_d"] = np.where(n > 0, host["fsum"] / n, 0.0)
    host["m2"] = host["fsumsq"] - n * host["mean_d"] ** 2
    return host


def run(strategy, stored, layout, dtype, values, *, launch=None, acc=None, **kwargs):
    channels = stored.shape[1]
    if acc is None:
        acc = K.Accumulators.zeros(
            channels, integer=K.is_integer(dtype), histogram=kwargs.get("histogram", False), cross=kwargs.get("cross", False)
        )
        if not acc.integer:
            acc.set_shift(shift_for(values))
    K.get_strategy(strategy).reduce(to_layout(stored, layout), layout, dtype, acc, launch=launch, **kwargs)
    return host_of(strategy, acc)


def check(host: dict, ref: dict, dtype: str) -> None:
    np.testing.assert_array_equal(host["count"], ref["count"], err_msg="count")
    np.testing.assert_array_equal(host["nonfinite"], ref["nonfinite"], err_msg="nonfinite")
    np.testing.assert_array_equal(host["vmin"], ref["min"], err_msg="min")
    np.testing.assert_array_equal(host["vmax"], ref["max"], err_msg="max")
    if K.is_integer(dtype):
        assert [int(v) for v in host["isum"]] == [int(v) for v in ref["sum"]], "isum not exact"
        assert [int(v) for v in host["isumsq"]] == [int(v) for v in ref["sumsq"]], "isumsq not exact"
        return
    mean_rtol, std_rtol = rtol(dtype, "kernel"), rtol(dtype, "kernel", "std")  # integers are compared exactly
    n = host["count"].astype(np.float64)
    mean = host["shift"] + host["mean_d"]
    std = np.sqrt(np.maximum(host["m2"] / n, 0.0))
    np.testing.assert_allclose(mean, ref["mean"], rtol=mean_rtol, atol=1e-12, err_msg="mean")
    # E[d^2] - E[d]^2 in the run type: the variance can be off by ~eps * (mean - shift)^2, which
    # only shows when the shift is a poor guess and the spread is ~0 (e.g. a single element)
    eps = 2.0**-53 if dtype == "float64" else 2.0**-24
    std_atol = np.sqrt(8 * eps) * np.max(np.abs(mean - host["shift"])) + 1e-9
    np.testing.assert_allclose(std, ref["std"], rtol=std_rtol, atol=std_atol, err_msg="std")
