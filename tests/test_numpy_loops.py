"""The numpy twins (gpustats/backends/cpu_numpy_loops.py) give every output of the numba loops bit for bit.

The CPU backend runs the twins until a loop's compile pays (gpustats/backends/cpu_loops.py), so a
state must not depend on which ran. Each case calls both implementations of a loop with the same
arguments and compares every output array byte for byte (so an infinity and the sign of a zero count; a NaN
matches any NaN), over random shapes, both layouts, every integer dtype, float data with NaN, +-inf,
+-0.0, huge offsets and all-negative-zero rows, thread shares, and rows longer than a tile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpustats.backends import cpu_float_loops, cpu_int_loops, cpu_numpy_loops
from gpustats.backends.cpu import readonly

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same(a, b) -> bool:
    """Byte for byte, except that a NaN equals any NaN: IEEE 754 leaves a NaN's sign and payload open, and
    LLVM may swap an addition's operands, which picks the NaN that propagates (on an Intel Xeon a co-moment
    of a row with a NaN and an infinity came out +NaN from the loop and -NaN from the twin)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind != "f":
        return a.tobytes() == b.tobytes()
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    return bool((nan_a == nan_b).all()) and a[~nan_a].tobytes() == b[~nan_b].tobytes()


def _layout(rng, channels: int, length: int, rows: int, cp: bool) -> tuple:
    return (rows, channels, length) if cp else (rows, length, channels)


def _ints(rng, dtype: str, shape: tuple) -> np.ndarray:
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, shape)
    if rng.random() < 0.3:  # narrow values: extremes that repeat
        x = np.clip(x, info.min, info.min + 3)
    return readonly(x.astype(dtype))


def _floats(rng, dtype: str, shape: tuple, special: float) -> np.ndarray:
    scale = 10.0 ** rng.uniform(-6, 8)
    x = rng.standard_normal(shape) * scale + rng.choice([0.0, 1e8, -3.0])
    u = rng.random(shape)
    for lo, value in ((0.0, np.nan), (1.0, np.inf), (2.0, -np.inf), (3.0, -0.0), (4.0, 0.0)):
        x = np.where((u >= lo * special) & (u < (lo + 1) * special), value, x)
    if rng.random() < 0.15:  # rows of signed zeros only (the sum's sign of zero)
        x = np.where(u < 0.5, -0.0, 0.0)
    return readonly(x.astype(dtype))


def _call_both(name: str, make_args, threads: int) -> None:
    """``name`` of the numba loops and of the twins, each over ``threads`` shares into its own fresh outputs
    (``make_args()`` -> (args before t, outputs to compare)), compared byte for byte."""
    numba_module = cpu_float_loops if name in ("float_rows", "hist_float") else cpu_int_loops
    results = []
    for module in (numba_module, cpu_numpy_loops):
        args, outs = make_args()
        returned = []
        for t in range(threads):
            returned.append(getattr(module, name)(*args, t, threads) if threads else getattr(module, name)(*args))
        results.append((outs, returned))
    (a, ra), (b, rb) = results
    for i, (x, y) in enumerate(zip(a, b)):
        assert _same(x, y), (name, i, x, y)
    assert ra == rb


shapes = st.tuples(st.integers(1, 4), st.integers(0, 300), st.integers(1, 5), st.booleans())


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, dtype=st.sampled_from(["uint8", "int8", "uint16", "int16"]),
       cross=st.booleans(), hist=st.booleans(), threads=st.integers(1, 3))
def test_int_rows_are_bitwise_the_numba_loops(seed, shape, dtype, cross, hist, threads):
    rng = np.random.default_rng(seed)
    rows, length, channels, cp = shape
    hist = hist and dtype == "uint8"
    x = _ints(rng, dtype, _layout(rng, channels, length, rows, cp))

    def args():
        outs = [np.zeros((rows, channels), np.int64) for _ in range(5)]
        outs += [np.zeros((rows, channels, channels) if cross else (1, 1, 1), np.int64),
                 np.zeros((rows, channels, 256) if hist else (1, 1, 1), np.int64)]
        return (x, cp, cross, hist, *outs), outs

    _call_both("int_rows", args, threads)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, threads=st.integers(1, 3))
def test_uint8_sums_histograms_and_sum_rows_are_bitwise_the_numba_loops(seed, shape, threads):
    rng = np.random.default_rng(seed)
    rows, length, channels, cp = shape
    x = _ints(rng, "uint8", _layout(rng, channels, length, rows, cp))

    def sums():
        out = np.zeros((5, channels), np.int64)
        out[3] = 255
        return (x, cp, out), [out]

    def hist():
        out = np.zeros((channels, 256), np.int64)
        return (x, cp, out), [out]

    def sum_rows():
        outs = [np.zeros((rows, channels), np.int64) for _ in range(5)]
        return (x, cp, *outs), outs

    _call_both("u8_sums", sums, threads)
    _call_both("hist_u8", hist, threads)
    _call_both("u8_sum_rows", sum_rows, threads)


def _float_outputs(rows: int, channels: int, cross: bool) -> list[np.ndarray]:
    outs = [np.zeros((rows, channels), np.int64 if i in (0, 6, 7, 8) else np.float64) for i in range(9)]
    return outs + [np.zeros((rows, channels, channels) if cross else (1, 1, 1))]


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, dtype=st.sampled_from(["float32", "float64"]),
       special=st.sampled_from([0.0, 0.01, 0.1]), cross=st.booleans(), threads=st.integers(1, 3))
@example(seed=0, shape=(1, 38, 2, False), dtype="float32", special=0.01, cross=True, threads=1)  # the NaN sign
def test_float_rows_are_bitwise_the_numba_loop(seed, shape, dtype, special, cross, threads):
    rng = np.random.default_rng(seed)
    rows, length, channels, cp = shape
    x = _floats(rng, dtype, _layout(rng, channels, length, rows, cp), special)

    def args():
        outs = _float_outputs(rows, channels, cross)
        return (x, cp, cross, *outs), outs

    _call_both("float_rows", args, threads)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), shape=shapes, special=st.sampled_from([0.0, 0.05]), clip=st.booleans(),
       bins=st.integers(1, 300))
def test_float_histograms_are_bitwise_the_numba_loop(seed, shape, special, clip, bins):
    rng = np.random.default_rng(seed)
    rows, length, channels, cp = shape
    x = _floats(rng, "float32", _layout(rng, channels, length, rows, cp), special)
    lo, hi = float(np.float32(rng.uniform(-5, 0))), float(np.float32(rng.uniform(0.5, 5)))

    def args():
        hist, ends = np.zeros((channels, bins), np.int64), np.zeros((channels, 2), np.int64)
        return (x, cp, lo, hi, bins, clip, hist, lo + 1e-3, hi - 1e-3, ends), [hist, ends]

    _call_both("hist_float", args, 0)


@pytest.mark.parametrize("cp", [True, False])
def test_rows_longer_than_a_tile_fold_their_sums_across_tiles(cp):
    """One image of 3 channels x 200,000 values spans three tiles (``TILE // 3`` values each): the sequential
    float sums carry across tiles, the integer sums add up, and a NaN in the last tile still sends the row
    down the per-channel path."""
    rng = np.random.default_rng(7)
    length = 200_000
    assert length > cpu_numpy_loops.TILE // 3
    shape = (1, 3, length) if cp else (1, length, 3)
    xf = rng.standard_normal(shape) * 1e3 + 1e7
    for data in (readonly(xf), readonly(np.where(np.arange(xf.size).reshape(shape) == xf.size - 2, np.nan, xf))):
        def args(data=data):
            outs = _float_outputs(1, 3, True)
            return (data, cp, True, *outs), outs

        _call_both("float_rows", args, 1)
    xi = readonly(rng.integers(0, 65536, shape).astype(np.uint16))

    def int_args():
        outs = [np.zeros((1, 3), np.int64) for _ in range(5)] + [np.zeros((1, 3, 3), np.int64), np.zeros((1, 1, 1), np.int64)]
        return (xi, cp, True, False, *outs), outs

    _call_both("int_rows", int_args, 1)


def test_a_twin_that_adds_in_another_order_is_caught(monkeypatch):
    """The comparison is not blind: a twin whose running sums add pairwise (numpy's ``sum``) instead of in
    sequence gives other bits on data where the order matters, and the byte comparison sees it."""
    rng = np.random.default_rng(3)
    x = readonly(rng.standard_normal((2, 3, 5000)) * 1e8 + 1.0)

    def args():
        outs = _float_outputs(2, 3, False)
        return (x, True, False, *outs), outs

    _call_both("float_rows", args, 1)  # the true twin agrees

    def pairwise(self, tile):
        self.total = self.total + tile.sum(axis=-1)

    monkeypatch.setattr(cpu_numpy_loops._Fold, "add", pairwise)
    with pytest.raises(AssertionError):
        _call_both("float_rows", args, 1)
