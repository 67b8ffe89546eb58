"""Kernel cases, run by tests/test_kernels_sim.py: under the numba CUDA simulator (in a subprocess
with NUMBA_ENABLE_CUDASIM=1) where there is no GPU, or in-process on a real GPU. Every strategy
against the float64 reference, numerics, the launch contract; the vec strategy and the extras
(histograms, co-moments, per-image sums) are in tests/sim_vec_extras_cases.py.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from numba import cuda, int64

from gpustats import kernels as K

from _sim_kernel_data import BLOCKS, SIM, STRATEGIES, THREADS, _gpu_only, check, host_of, make_data, reference, run, shift_for

pytestmark = pytest.mark.cudasim

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
