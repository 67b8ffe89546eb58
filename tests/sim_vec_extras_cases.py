"""Kernel cases of the vec strategy (16-byte loads) and of the extras (uint8 histograms, co-moments,
per-image sums), run by tests/test_kernels_sim.py like tests/sim_kernels_cases.py.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from numba import cuda, int64

from gpustats import kernels as K

from _sim_kernel_data import _bf16_bits, _bf16_decode, check, host_of, make_data, reference, run, shift_for, to_layout

pytestmark = pytest.mark.cudasim

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


@pytest.mark.parametrize("layout", ["CP", "PC"])
def test_vec_check_leaves_a_nonfinite_batch_out_and_records_it(layout):
    """``check`` = batch index + 1: a batch with NaN/inf adds nothing and is recorded in the status row
    (first: sticky; last: the latest; batches: how many); a clean batch adds everything; without
    ``check`` (nan_policy="omit") the non-finite values are only counted."""
    from gpustats.kernels import vec

    rng = np.random.default_rng(29)
    good, good_values = make_data("float32", (2, 3, 16), rng)
    bad, bad_values = make_data("float32", (2, 3, 16), rng, nonfinite=True)  # NaN, inf, -inf in channel 0
    acc = K.Accumulators.zeros(3, integer=False)
    acc.set_shift(shift_for(good_values))
    status = cuda.to_device(np.zeros(vec.STATUS_WORDS, np.int64))
    for index, stored in ((0, good), (1, bad), (2, good), (3, bad)):
        assert vec.reduce(to_layout(stored, layout), layout, "float32", acc, status=status, check=index + 1)
    row = dict(zip(vec.STATUS_FIELDS, status.copy_to_host().tolist()))
    assert row == {"first": 2, "first_count": 3, "first_channels": 1, "last": 4, "last_count": 3, "last_channels": 1,
                   "batches": 2, "spare": 0}
    check(host_of("vec", acc), reference(np.concatenate([good_values, good_values])), "float32")
    omit = K.Accumulators.zeros(3, integer=False)
    omit.set_shift(shift_for(good_values))
    vec.reduce(to_layout(bad, layout), layout, "float32", omit, status=status)  # check=0: everything counts
    check(host_of("vec", omit), reference(bad_values), "float32")
    strided = cuda.to_device(np.zeros((2, 3, 18), np.float32))[:, :, :17]  # rows of 17: no 16-byte loads: nothing runs
    assert vec.reduce(strided, "CP", "float32", acc, status=status, check=9) is False
    assert status.copy_to_host()[6] == 2 and host_of("vec", acc)["count"].tolist() == [64, 64, 64]


def test_block_combine_with_one_shared_slot_per_thread():
    """The vec kernels' block combine on a GPU (``make_block_ops(threads, slots=threads)``: one value per
    pass, 2C passes) gives the same sums and mins as the default one (several values per pass)."""
    from gpustats.kernels._blocks import SHARED_SLOTS, make_block_ops

    threads, k = 32, 6
    results = []
    for slots in (threads, SHARED_SLOTS):
        block_totals = make_block_ops(threads, slots)[2]

        @cuda.jit
        def combine(tally_in, bank_in, mins_in, out):
            tid = cuda.threadIdx.x
            sh_count = cuda.shared.array(slots, int64)
            sh_sum = cuda.shared.array(slots, int64)
            sh_ext = cuda.shared.array(slots, np.float64)
            tally = cuda.local.array(k, int64)
            bank = cuda.local.array(k, int64)
            mins = cuda.local.array(k, np.float64)
            for i in range(k):
                tally[i] = tally_in[tid, i]
                bank[i] = bank_in[tid, i]
                mins[i] = mins_in[tid, i]
            block_totals(sh_count, sh_sum, sh_ext, tid, tally, bank, mins, k)
            if tid == 0:
                for i in range(k):
                    out[0, i] = tally[i]
                    out[1, i] = bank[i]
                    out[2, i] = int64(mins[i])

        rng = np.random.default_rng(41)
        tally_in = rng.integers(0, 1000, (threads, k))
        bank_in = rng.integers(-10**12, 10**12, (threads, k))
        mins_in = rng.integers(-500, 500, (threads, k)).astype(np.float64)
        out = np.zeros((3, k), np.int64)
        combine[1, threads](tally_in, bank_in, mins_in, out)
        assert out[0].tolist() == tally_in.sum(axis=0).tolist() and out[1].tolist() == bank_in.sum(axis=0).tolist()
        assert out[2].tolist() == mins_in.min(axis=0).astype(np.int64).tolist()
        results.append(out)
    assert (results[0] == results[1]).all()


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
