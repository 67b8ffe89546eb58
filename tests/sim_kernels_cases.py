"""Kernel cases, run by tests/test_kernels_sim.py: under the numba CUDA simulator (in a subprocess
with NUMBA_ENABLE_CUDASIM=1) where there is no GPU, or in-process on a real GPU.

Every strategy is compared against an independent numpy float64 two-pass reference
(tests/reference.py style, recomputed here per channel on the decoded values).
Sizes stay tiny: the simulator runs every CUDA thread as a Python thread.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest
from numba import cuda, int64

from gpustats import kernels as K
from gpustats.kernels._common import launch_config

from reference import rtol

SIM = K.simulator_enabled()
if SIM:
    sys.setswitchinterval(1e-4)  # simulated barriers wait on the GIL switch interval (5 ms default)

pytestmark = pytest.mark.cudasim

STRATEGIES = [s for s in K.SIMULATOR_STRATEGIES if s != "hist8"]  # every dtype
FLOAT_TAGS = ("float16", "bfloat16", "float32", "float64")


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


# ----------------------------------------------------------------------------- reference matches


@pytest.mark.parametrize("layout", ["CP", "PC"])
@pytest.mark.parametrize("dtype", K.DTYPE_TAGS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_reference_every_dtype_and_layout(strategy, dtype, layout):
    rng = np.random.default_rng(zlib.crc32(f"{strategy}-{dtype}-{layout}".encode()))
    stored, values = make_data(dtype, (2, 3, 37), rng, nonfinite=True, loc=3.0, scale=2.0)
    check(run(strategy, stored, layout, dtype, values), reference(values), dtype)


@pytest.mark.parametrize("channels", [1, 4, 16])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_channel_counts(strategy, dtype, channels):
    rng = np.random.default_rng(channels)
    stored, values = make_data(dtype, (1, channels, 29 if channels < 16 else 5), rng, nonfinite=True)
    check(run(strategy, stored, "PC" if channels == 4 else "CP", dtype, values), reference(values), dtype)


# sizes one below / at / above the block (THREADS) and the grid stride (BLOCKS * THREADS), as
# one image ([1, C, L]), as single-pixel rows ([P, C, 1]) and as a ragged image split
def _edge_shapes():
    stride = BLOCKS * THREADS
    sizes = sorted({1, THREADS - 1, THREADS, THREADS + 1, stride - 1, stride, stride + 1})
    shapes = []
    for p in sizes:
        shapes.append((1, 3, p))
        shapes.append((p, 3, 1))
        if p % 5 == 0 or p % 7 == 0:
            k = 5 if p % 5 == 0 else 7
            shapes.append((k, 3, p // k))
    return shapes


@pytest.mark.parametrize("shape", _edge_shapes(), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("strategy", K.SIMULATOR_STRATEGIES)
def test_edge_sizes(strategy, shape):
    dtype = "uint8" if strategy == "hist8" else ("float32" if shape[0] == 1 else "uint16")
    rng = np.random.default_rng(sum(shape))
    stored, values = make_data(dtype, shape, rng)
    layout = "CP" if shape[2] > 1 else "PC"
    check(run(strategy, stored, layout, dtype, values), reference(values), dtype)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_launch_shapes_give_the_same_exact_integers(strategy):
    """Any (blocks, threads) gives the same integer totals: exercises the block tree at 1..64 threads."""
    rng = np.random.default_rng(7)
    stored, values = make_data("uint16", (3, 2, 41), rng)
    ref = reference(values)
    for launch in [(1, 1), (3, 2), (1, 64), (5, 16)]:
        check(run(strategy, stored, "CP", "uint16", values, launch=launch), ref, "uint16")


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_huge_offset_small_spread(strategy, dtype):
    """1e4 offset, std 1e-2: the shifted float32 runs keep std within 1e-5 relative."""
    rng = np.random.default_rng(11)
    stored, values = make_data(dtype, (1, 1, 1500), rng, loc=1e4, scale=1e-2)
    host = run(strategy, stored, "CP", dtype, values)
    ref = reference(values)
    std = np.sqrt(host["m2"][0] / host["count"][0])
    assert abs(std / ref["std"][0] - 1) < 1e-5
    assert abs(host["shift"][0] + host["mean_d"][0] - ref["mean"][0]) < 1e-7 * 1e4


def test_all_nonfinite_channel_counts_nothing():
    stored = np.full((1, 2, 9), np.nan, np.float32)
    stored[0, 1] = 2.5
    for strategy in STRATEGIES:
        acc = K.Accumulators.zeros(2, integer=False)
        K.get_strategy(strategy).reduce(stored, "CP", "float32", acc)
        host = host_of(strategy, acc)
        assert host["count"].tolist() == [0, 9] and host["nonfinite"].tolist() == [9, 0]
        assert host["vmin"][0] == np.inf and host["vmax"][0] == -np.inf
        assert host["mean_d"][0] == 0.0 and host["m2"][0] == 0.0 and host["vmin"][1] == host["vmax"][1] == 2.5


def test_uint16_sums_exact_at_the_top_of_the_range():
    stored = np.full((2, 1, 50), 65535, np.uint16)
    stored[1, 0, 7] = 65534
    for strategy in STRATEGIES:
        host = run(strategy, stored, "CP", "uint16", stored.astype(np.float64))
        assert int(host["isum"][0]) == 99 * 65535 + 65534
        assert int(host["isumsq"][0]) == 99 * 65535**2 + 65534**2


@pytest.mark.parametrize("strategy", ["tree", "welford"])
def test_deterministic_strategies_are_bitwise_reproducible(strategy):
    rng = np.random.default_rng(5)
    stored, values = make_data("float32", (2, 3, 45), rng, loc=1.0, scale=3.0)
    first = run(strategy, stored, "PC", "float32", values)
    second = run(strategy, stored, "PC", "float32", values)
    for key in ("mean_d", "m2", "vmin", "vmax", "count"):
        assert first[key].tobytes() == second[key].tobytes(), key


def test_welford_keeps_n_mean_m2_and_mirrors_it_in_the_accumulators():
    """The welford strategy's state is a (n, mean, M2) summary; the accumulators' count and sums
    (their documented contract, read by generic code such as the benchmarks) mirror it."""
    rng = np.random.default_rng(8)
    stored, values = make_data("float32", (3, 2, 23), rng, nonfinite=True, loc=2.0, scale=0.5)
    host = run("welford", stored, "CP", "float32", values, launch=(3, 4))
    ref = reference(values)
    np.testing.assert_array_equal(host["summary_count"], ref["count"])
    np.testing.assert_array_equal(host["count"], ref["count"])
    good = [row[np.isfinite(row)] for row in values.transpose(1, 0, 2).reshape(2, -1)]
    np.testing.assert_allclose(host["m2"], [((g - g.mean()) ** 2).sum() for g in good], rtol=1e-5)
    np.testing.assert_allclose(host["shift"] + host["mean_d"], ref["mean"], rtol=1e-6)
    n = host["count"].astype(np.float64)
    np.testing.assert_allclose(host["fsum"], n * host["mean_d"], rtol=1e-12)
    np.testing.assert_allclose(host["fsumsq"], host["m2"] + n * host["mean_d"] ** 2, rtol=1e-12)


def test_welford_needs_no_good_shift():
    """float64 at an offset of 1e4 with a spread of 1e-2 and no shift: Welford's M2 is never a
    difference of large sums, so it keeps ~1e-9 relative where the sums lose ~1e-5 (an
    independent numerical path, not the sum strategies in disguise)."""
    rng = np.random.default_rng(12)
    stored, values = make_data("float64", (2, 1, 300), rng, loc=1e4, scale=1e-2)
    ref_std = reference(values)["std"][0]
    errors = {}
    for strategy in ("welford", "tree"):
        acc = K.Accumulators.zeros(1, integer=False)  # shift stays 0
        K.get_strategy(strategy).reduce(stored, "CP", "float64", acc)
        host = host_of(strategy, acc)
        errors[strategy] = abs(np.sqrt(host["m2"][0] / host["count"][0]) / ref_std - 1)
    assert errors["welford"] < 1e-9
    assert errors["tree"] > 100 * errors["welford"]


def test_welford_summary_accumulates_over_launches_in_order():
    """Launches Chan-merge into the running device summary: equal to one launch over everything."""
    rng = np.random.default_rng(13)
    parts = [make_data("float32", (n, 3, 11), rng, loc=-1.0, scale=2.0) for n in (2, 1, 3)]
    values = np.concatenate([v for _, v in parts])
    acc = K.Accumulators.zeros(3, integer=False)
    acc.set_shift(shift_for(parts[0][1]))
    for stored, _ in parts:
        K.get_strategy("welford").reduce(stored, "CP", "float32", acc, launch=(2, 8))
    check(host_of("welford", acc), reference(values), "float32")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batches_accumulate_on_the_device(strategy):
    """Three reduce calls into one Accumulators equal the statistics of the concatenation."""
    rng = np.random.default_rng(3)
    batches = [make_data("float32", (n, 3, 13), rng, loc=0.5, scale=0.25) for n in (1, 3, 2)]
    values = np.concatenate([v for _, v in batches])
    acc = K.Accumulators.zeros(3, integer=False)
    acc.set_shift(shift_for(batches[0][1]))
    for stored, _ in batches:
        K.get_strategy(strategy).reduce(stored, "CP", "float32", acc)
    check(host_of(strategy, acc), reference(values), "float32")


def test_strided_device_views():
    from numba import cuda

    rng = np.random.default_rng(9)
    stored, values = make_data("float32", (2, 3, 40), rng)
    view = cuda.to_device(stored)[:, ::2, 1::3]  # channels 0 and 2, every third pixel
    ref = reference(values[:, ::2, 1::3])
    for strategy in STRATEGIES:
        acc = K.Accumulators.zeros(2, integer=False)
        K.get_strategy(strategy).reduce(view, "CP", "float32", acc)
        check(host_of(strategy, acc), ref, "float32")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("strategy", ["atomic", "tree", "welford", "vec"])
def test_production_float_run_length(strategy, dtype):
    """The float run length of real GPUs (256) under the simulator (whose default is 4).

    One thread per block and 600 pixels per thread: every thread flushes twice at 256 and once at
    the end, which the simulator's default never reaches. Large offset, small spread: a run that
    overflowed its float32 budget or skipped a flush would miss the reference.
    """
    from gpustats.kernels._common import _RUN_LENGTH_GPU

    rng = np.random.default_rng(31)
    stored, values = make_data(dtype, (2, 3, 600), rng, nonfinite=True, loc=50.0, scale=0.5)
    for layout in ("CP", "PC"):
        host = run(strategy, stored, layout, dtype, values, launch=(2, 1), run=_RUN_LENGTH_GPU)
        check(host, reference(values), dtype)


# ----------------------------------------------------------------------------- vec (16-byte loads)


def _vec_plan(stored, layout, dtype):
    from gpustats.kernels import vec

    return vec.plan(K._common.as_device_array(to_layout(stored, layout)), layout, dtype)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape, layout", [((2, 3, 64), "CP"), ((2, 3, 37), "PC"), ((1, 4, 33), "PC"),
                                           ((3, 1, 40), "PC"), ((1, 2, 48), "CP")])
def test_vec_vector_paths_match_the_reference(dtype, shape, layout):
    """Shapes the vec kernels read with 16-byte loads (NHWC with a scalar tail), all dtypes."""
    rng = np.random.default_rng(zlib.crc32(f"vec-{dtype}-{shape}-{layout}".encode()))
    stored, values = make_data(dtype, shape, rng, nonfinite=True, loc=3.0, scale=2.0)
    assert _vec_plan(stored, layout, dtype) is not None, "this case must take the vector path"
    check(run("vec", stored, layout, dtype, values), reference(values), dtype)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "bfloat16", "float32"])
def test_vec_nhwc_tail_holds_the_extremes(dtype):
    """The scalar tail of an NHWC input (thread 0 adds the last total % width elements) must update
    min and max: each channel's extreme lies in the tail here (issue 25: a mutation that dropped the
    tail's max update passed the whole suite, random data rarely put an extreme there)."""
    width = {"uint8": 16, "uint16": 8, "float16": 8, "bfloat16": 8, "float32": 4}[dtype]
    length = next(n for n in range(40, 90) if (3 * n) % width >= 3)  # the tail holds one pixel of 3 channels
    rng = np.random.default_rng(14)
    if K.is_integer(dtype):
        values = rng.integers(10, 200, size=(1, 3, length)).astype(np.float64)
        values[0, :, -1] = [255 if dtype == "uint8" else 65535, 0, 254 if dtype == "uint8" else 65000]
        stored = values.astype(dtype)
    else:
        values = rng.uniform(-1, 1, size=(1, 3, length)).astype(np.float32)
        values[0, :, -1] = [9.0, -9.0, 8.0]
        stored, values = (_bf16_bits(values), _bf16_decode(_bf16_bits(values)).astype(np.float64)) \
            if dtype == "bfloat16" else (values.astype(dtype), values.astype(dtype).astype(np.float64))
    plan = _vec_plan(stored, "PC", dtype)
    assert plan is not None and plan["tail_start"] < plan["total"] - 2, "the last pixel must lie in the scalar tail"
    ref = reference(values)
    assert ref["max"][0] == values[0, 0, -1] and ref["min"][1] == values[0, 1, -1] and ref["max"][2] == values[0, 2, -1]
    check(run("vec", stored, "PC", dtype, values), ref, dtype)


def test_vec_uint8_is_bitwise_equal_to_the_other_strategies():
    rng = np.random.default_rng(17)
    stored, values = make_data("uint8", (3, 3, 96), rng)
    for layout in ("CP", "PC"):
        results = {name: run(name, stored, layout, "uint8", values) for name in ("vec", "tree", "atomic")}
        for key in ("count", "isum", "isumsq", "vmin", "vmax"):
            assert results["vec"][key].tobytes() == results["tree"][key].tobytes() == results["atomic"][key].tobytes()


def test_vec_uint8_flushes_32_bit_sums_before_they_overflow():
    """One thread sums 4,200 vectors of 255s: its 32-bit sum of squares would wrap at 4,128."""
    from gpustats.kernels.vec import U8_FLUSH_VECTORS

    vectors = U8_FLUSH_VECTORS + 72
    stored = np.full((1, 1, 16 * vectors), 255, np.uint8)
    stored[0, 0, 5] = 3
    host = run("vec", stored, "CP", "uint8", stored.astype(np.float64), launch=(1, 1))
    n = 16 * vectors
    assert int(host["isumsq"][0]) == (n - 1) * 255 * 255 + 9 > 2**32
    assert int(host["isum"][0]) == (n - 1) * 255 + 3 and host["vmin"][0] == 3 and host["vmax"][0] == 255


def test_vec_falls_back_to_tree_where_16_byte_loads_do_not_fit():
    """Strided or misaligned views, odd NCHW rows, float64, uint8 NHWC with 5 channels: same numbers."""
    from numba import cuda

    rng = np.random.default_rng(19)
    stored, values = make_data("float32", (2, 3, 41), rng)
    assert _vec_plan(stored, "CP", "float32") is None  # 41 is not a multiple of 4
    check(run("vec", stored, "CP", "float32", values), reference(values), "float32")
    wide, wide_values = make_data("uint8", (1, 5, 32), rng)
    assert _vec_plan(wide, "PC", "uint8") is None
    check(run("vec", wide, "PC", "uint8", wide_values), reference(wide_values), "uint8")
    f64, f64_values = make_data("float64", (1, 2, 16), rng)
    assert _vec_plan(f64, "CP", "float64") is None
    check(run("vec", f64, "CP", "float64", f64_values), reference(f64_values), "float64")
    base, base_values = make_data("uint8", (1, 1, 80), rng)
    view = cuda.to_device(base)[:, :, 1:65]  # 1 byte past an aligned start
    from gpustats.kernels import vec

    assert vec.plan(view, "CP", "uint8") is None
    acc = K.Accumulators.zeros(1, integer=True)
    K.get_strategy("vec").reduce(view, "CP", "uint8", acc)
    check(acc.to_host(), reference(base_values[:, :, 1:65]), "uint8")


def test_vec_launch_shapes_give_the_same_exact_integers():
    rng = np.random.default_rng(23)
    stored, values = make_data("uint8", (3, 3, 64), rng)
    ref = reference(values)
    for layout in ("CP", "PC"):
        for launch in [(1, 1), (3, 2), (1, 32), (5, 4)]:
            check(run("vec", stored, layout, "uint8", values, launch=launch), ref, "uint8")


# ----------------------------------------------------------------------------- extras


@pytest.mark.parametrize("layout", ["CP", "PC"])
@pytest.mark.parametrize("strategy", ["hist8", "atomic"])
def test_uint8_histograms_equal_bincount(strategy, layout):
    rng = np.random.default_rng(2)
    stored, values = make_data("uint8", (2, 3, 50), rng)
    stored[0, 1, :] = 255
    values = stored.astype(np.float64)
    host = run(strategy, stored, layout, "uint8", values, histogram=True)
    expected = np.stack([np.bincount(stored[:, c].reshape(-1), minlength=256) for c in range(3)])
    np.testing.assert_array_equal(host["hist"], expected)
    check(host, reference(values), "uint8")


def test_hist8_accumulates_over_launches():
    rng = np.random.default_rng(4)
    acc = K.Accumulators.zeros(1, integer=True, histogram=True)
    seen = []
    for n in (10, 33, 1):
        stored = rng.integers(0, 256, (1, 1, n), dtype=np.uint8)
        seen.append(stored.reshape(-1))
        K.get_strategy("hist8").reduce(stored, "CP", "uint8", acc, histogram=True)
    host = acc.to_host()
    allv = np.concatenate(seen)
    np.testing.assert_array_equal(host["hist"][0], np.bincount(allv, minlength=256))
    assert int(host["isum"][0]) == int(allv.astype(np.int64).sum()) and host["count"][0] == allv.size


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("layout", ["CP", "PC"])
def test_cross_moments_against_numpy(dtype, layout):
    rng = np.random.default_rng(8)
    stored, values = make_data(dtype, (2, 3, 30), rng, loc=100.0, scale=4.0)
    host = run("atomic", stored, layout, dtype, values, cross=True)
    px = values.transpose(1, 0, 2).reshape(3, -1)
    if K.is_integer(dtype):
        ints = px.astype(object)
        expected = np.array([[sum(a * b for a, b in zip(ints[i], ints[j])) for j in range(3)] for i in range(3)])
        assert (host["cross"].astype(object) == expected).all()
        mean = host["isum"] / host["count"]
        cov = host["cross"] / host["count"][0] - np.outer(mean, mean)
    else:
        n = host["count"][0]
        d = host["fsum"] / n
        cov = host["cross"] / n - np.outer(d, d)
    np.testing.assert_allclose(cov, np.cov(px, bias=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["CP", "PC"])
def test_per_image_against_numpy(dtype, layout):
    rng = np.random.default_rng(12)
    stored, values = make_data(dtype, (5, 3, 21), rng, nonfinite=True, loc=2.0, scale=0.5)
    acc = K.Accumulators.zeros(3, integer=K.is_integer(dtype))
    shift = np.zeros(3) if acc.integer else shift_for(values)
    if not acc.integer:
        acc.set_shift(shift)
    images = acc.per_image(5)
    K.get_strategy("atomic").reduce(to_layout(stored, layout), layout, dtype, acc, per_image=images)
    got = images.to_host()
    check(host_of("atomic", acc), reference(values), dtype)
    for n in range(5):
        ref = reference(values[n : n + 1])
        np.testing.assert_array_equal(got["img_count"][n], ref["count"])
        mean = shift + got["img_sum"][n] / got["img_count"][n]
        var = got["img_sumsq"][n] / got["img_count"][n] - (got["img_sum"][n] / got["img_count"][n]) ** 2
        np.testing.assert_allclose(mean, ref["mean"], rtol=1e-6)
        np.testing.assert_allclose(np.sqrt(var), ref["std"], rtol=1e-4)
        if acc.integer:
            assert got["img_sum"][n].tolist() == [float(v) for v in ref["sum"]]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_per_image_integer_sums_are_exact_int64(dtype):
    """Issue 25, item 5: per-image sums of integer input were float64 (one image of 2,200,001 pixels at
    65535 gave a sum of squares ending ...224 instead of ...225). They are int64 totals now. The
    simulator cannot afford 2.2 M pixels, so the image's sums are added into rows that already hold
    2**53 (a launch adds into its rows): a float64 row would round the odd totals away."""
    top = 65535 if dtype == "uint16" else 255
    acc = K.Accumulators.zeros(1, integer=True)
    images = acc.per_image(1)
    assert images.img_sum.dtype == np.int64 and images.img_sumsq.dtype == np.int64
    start = np.full((1, 1), 2**53, np.int64)
    images.img_sum.copy_to_device(start)
    images.img_sumsq.copy_to_device(start)
    x = np.array([top, top, 1, 0, 2], dtype=dtype).reshape(1, 1, 5)
    K.get_strategy("atomic").reduce(x, "CP", dtype, acc, per_image=images, launch=(1, 32))
    got = images.to_host()
    assert int(got["img_count"][0, 0]) == 5
    assert int(got["img_sum"][0, 0]) == 2**53 + 2 * top + 3  # odd: a float64 would round it
    assert int(got["img_sumsq"][0, 0]) == 2**53 + 2 * top * top + 5


def test_per_image_single_image_many_blocks_requested():
    rng = np.random.default_rng(13)
    stored, values = make_data("uint8", (1, 1, 70), rng)
    acc = K.Accumulators.zeros(1, integer=True)
    images = acc.per_image(1)
    K.get_strategy("atomic").reduce(stored, "CP", "uint8", acc, per_image=images, launch=(4, 32))
    assert images.to_host()["img_sum"][0, 0] == values.sum()


# ----------------------------------------------------------------------------- contract


@cuda.jit
def _block_total(out):
    """out[block] = sum of 1..32 written by the block's 32 threads into one shared array."""
    buf = cuda.shared.array(32, int64)
    buf[cuda.threadIdx.x] = cuda.threadIdx.x + 1
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        total = 0
        for i in range(32):
            total += buf[i]
        out[cuda.blockIdx.x] = total


def test_block_shared_memory_is_one_array_per_block():
    """The kernels' tree combines need every thread of a block to see one shared array.

    Under the simulator that holds only with tests/_simulator.make_shared_arrays_thread_safe
    (installed by tests/conftest.py): without it, about one run in eight of the atomic uint8 PC
    case split the array between threads. The race is timing-dependent (this small kernel rarely
    hits it), so the decisive check here is that the guard is installed.
    """
    if SIM:
        from numba.cuda.simulator.kernelapi import FakeCUDAShared

        assert getattr(FakeCUDAShared.array, "_gpustats_locked", False), "conftest did not guard the simulator"

    for _ in range(10):
        out = np.zeros(2, np.int64)
        _block_total[2, 32](out)
        assert out.tolist() == [528, 528]  # 1 + 2 + ... + 32


@pytest.mark.parametrize("name", ["gpustats.kernels", "gpustats.kernels.accumulators", "gpustats.kernels._vector"])
def test_kernel_docstring_examples(name):
    """The kernels' docstring examples, which need a GPU or the simulator (tests/test_doctests.py skips them)."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, (name, result)


def test_registry_and_unsupported_requests_are_clear():
    assert set(K.STRATEGIES) == {"atomic", "tree", "warp", "welford", "hist8", "vec"}
    assert "warp" not in K.SIMULATOR_STRATEGIES
    with pytest.raises(ValueError, match="unknown kernel strategy"):
        K.get_strategy("fastest")
    x = np.zeros((1, 2, 4), np.uint8)
    for name in ("tree", "welford", "vec"):
        with pytest.raises(NotImplementedError, match="atomic"):
            K.get_strategy(name).reduce(x, "CP", "uint8", K.Accumulators.zeros(2, integer=True, cross=True), cross=True)
    with pytest.raises(ValueError, match="uint8"):
        K.get_strategy("hist8").reduce(x.astype(np.float32), "CP", "float32", K.Accumulators.zeros(2, integer=False))
    with pytest.raises(ValueError, match="channels"):
        K.get_strategy("atomic").reduce(x, "CP", "uint8", K.Accumulators.zeros(3, integer=True))
    with pytest.raises(ValueError, match="integer=True"):
        K.get_strategy("atomic").reduce(x, "CP", "uint8", K.Accumulators.zeros(2, integer=False))
    with pytest.raises(ValueError, match="layout"):
        K.get_strategy("atomic").reduce(x, "HWC", "uint8", K.Accumulators.zeros(2, integer=True))
    if SIM:
        with pytest.raises(RuntimeError, match="real GPU"):
            K.get_strategy("warp").reduce(x, "CP", "uint8", K.Accumulators.zeros(2, integer=True))


def test_empty_input_changes_nothing():
    acc = K.Accumulators.zeros(3, integer=False)
    for strategy in STRATEGIES:
        K.get_strategy(strategy).reduce(np.zeros((0, 3, 5), np.float32), "CP", "float32", acc)
        K.get_strategy(strategy).reduce(np.zeros((2, 3, 0), np.float32), "CP", "float32", acc)
    host = acc.to_host()
    assert host["count"].tolist() == [0, 0, 0] and np.all(host["vmin"] == np.inf)
    assert K.get_strategy("welford").moments_of(acc)["count"].tolist() == [0, 0, 0]


def test_flush_limits_and_reset():
    assert K.max_elements_before_flush("uint8") == (2**63 - 1) // 255**2
    assert K.max_elements_before_flush("uint16") == (2**63 - 1) // 65535**2
    assert 2.0e9 < K.max_elements_before_flush("uint16") < 2.2e9
    assert K.max_elements_before_flush("float32") >= 2**62
    acc = K.Accumulators.zeros(1, integer=True, histogram=True)
    K.get_strategy("hist8").reduce(np.ones((1, 1, 5), np.uint8), "CP", "uint8", acc, histogram=True)
    acc.reset()
    host = acc.to_host()
    assert host["count"][0] == 0 and host["hist"].sum() == 0 and host["vmin"][0] == np.inf


# ----------------------------------------------------------------------------- real GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", K.DTYPE_TAGS)
@pytest.mark.parametrize("strategy", sorted(K.STRATEGIES))
def test_gpu_every_strategy_medium_size(strategy, dtype):
    _gpu_only()
    if strategy == "hist8" and dtype != "uint8":
        pytest.skip("hist8 is uint8 only")
    rng = np.random.default_rng(21)
    stored, values = make_data(dtype, (7, 3, 100_003), rng, nonfinite=True, loc=1e3, scale=3.0)
    for layout in ("CP", "PC"):
        check(run(strategy, stored, layout, dtype, values), reference(values), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", sorted(K.STRATEGIES))
def test_gpu_2_pow_25_ones_have_mean_exactly_one(strategy):
    _gpu_only()
    from numba import cuda

    dtype = "uint8" if strategy == "hist8" else "float32"
    x = cuda.to_device(np.ones((1, 1, 2**25), dtype=dtype))
    acc = K.Accumulators.zeros(1, integer=K.is_integer(dtype), histogram=strategy == "hist8")
    K.get_strategy(strategy).reduce(x, "CP", dtype, acc)
    host = host_of(strategy, acc)
    assert host["count"][0] == 2**25
    if acc.integer:
        assert host["isum"][0] == 2**25
    else:
        assert host["mean_d"][0] == 1.0 and host["m2"][0] == 0.0
