"""Histograms/percentiles, covariance/PCA/whitening and per-image statistics against numpy float64."""

from __future__ import annotations

import numpy as np
import pytest

from gpustats import Accumulator, ChannelStats, InputError, StatsError, compute_stats

from reference import pixels

METHODS = ["linear", "lower", "higher", "nearest", "midpoint", "inverted_cdf"]


@pytest.fixture(scope="module")
def natural():
    """Image-like uint8 data: smooth, clipped (saturated pixels), many repeated values."""
    rng = np.random.default_rng(0)
    base = rng.normal(120, 60, size=(23, 3, 1, 1)) + rng.normal(0, 25, size=(23, 3, 9, 11))
    base[:, 2] = 0.6 * base[:, 0] + 0.4 * base[:, 2]  # correlated channels
    return np.clip(base, 0, 255).astype(np.uint8)


def test_uint8_histogram_is_exact_and_split_invariant(natural):
    r = compute_stats([natural[:5], natural[5:17], natural[17:]], device="cpu", histogram=True)
    px = pixels([natural], "NCHW").astype(np.int64)
    for c in range(3):
        np.testing.assert_array_equal(r.histogram[c], np.bincount(px[:, c], minlength=256))
    assert r.state == compute_stats([natural], device="cpu", histogram=True).state
    # moments are identical with and without the histogram
    plain = compute_stats([natural], device="cpu")
    assert r.mean.tobytes() == plain.mean.tobytes() and r.std.tobytes() == plain.std.tobytes()


@pytest.mark.parametrize("method", METHODS)
def test_uint8_percentiles_equal_numpy(natural, method):
    r = compute_stats([natural], device="cpu", histogram=True)
    px = pixels([natural], "NCHW") / 255.0
    qs = [0, 0.5, 1, 13.7, 25, 50, 75, 99, 99.9, 100]
    ours = r.percentile(qs, method=method)
    ref = np.percentile(px, qs, axis=0, method=method)
    np.testing.assert_allclose(ours, ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(r.median(), np.percentile(px, 50, axis=0))
    with pytest.raises(StatsError, match=r"\[0, 100\]"):
        r.percentile(101)


def test_saturation_fraction(natural):
    r = compute_stats([natural], device="cpu", histogram=True)
    px = pixels([natural], "NCHW")
    sat = r.saturation()
    np.testing.assert_allclose(sat["low"], (px == 0).mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(sat["high"], (px == 255).mean(axis=0), rtol=1e-15)
    assert sat["low"].max() > 0 and sat["high"].max() > 0  # the fixture really saturates


def test_float_histogram_needs_range_and_refuses_outliers_unless_clip():
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8))
    with pytest.raises(InputError, match="hist_bins=... and hist_range"):
        compute_stats([x], device="cpu", histogram=True)
    with pytest.raises(InputError, match="below and .* above hist_range.*clip=True"):
        compute_stats([x], device="cpu", histogram=True, hist_bins=10, hist_range=(-1, 1))
    r = compute_stats([x], device="cpu", histogram=True, hist_bins=16, hist_range=(-1, 1), clip=True)
    px = np.clip(pixels([x], "NCHW"), -1, 1)
    for c in range(3):
        np.testing.assert_array_equal(r.histogram[c], np.histogram(px[:, c], bins=16, range=(-1, 1))[0])
    wide = compute_stats([x], device="cpu", histogram=True, hist_bins=40, hist_range=(-10, 10))
    ref = np.percentile(pixels([x], "NCHW"), 50, axis=0)
    np.testing.assert_allclose(wide.median(), ref, atol=0.5 * 20 / 40)  # half a bin


def test_no_histogram_is_a_clear_error(natural):
    r = compute_stats([natural], device="cpu")
    with pytest.raises(StatsError, match="histogram=True"):
        r.percentile(50)
    with pytest.raises(StatsError, match="covariance=True"):
        _ = r.cov


@pytest.mark.parametrize("kind", ["uint8", "float32", "offset"])
def test_covariance_matches_np_cov(natural, kind):
    x = {"uint8": natural, "float32": natural.astype(np.float32) / 255,
         "offset": natural.astype(np.float64) / 255 * 1e-3 + 1e6}[kind]
    r = compute_stats([x[:7], x[7:]], device="cpu", covariance=True, ddof=1)
    px = pixels([x], "NCHW") / r.scale
    ref = np.cov(px, rowvar=False, ddof=1)
    rtol = {"uint8": 1e-12, "float32": 1e-9, "offset": 1e-6}[kind]
    np.testing.assert_allclose(r.cov, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    np.testing.assert_allclose(r.corr, np.corrcoef(px, rowvar=False), rtol=100 * rtol)
    values, vectors = r.pca()
    assert np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(ref @ vectors, vectors * values, rtol=1e-5, atol=1e-5 * values.max())
    for how in ("zca", "pca"):
        w = r.whitening(how, eps=0.0)
        white = (px - px.mean(0)) @ w.T
        np.testing.assert_allclose(np.cov(white, rowvar=False, ddof=1), np.eye(3), atol=1e-5)
    if kind == "uint8":
        assert r.state == compute_stats([x], device="cpu", covariance=True).state  # exact: split-invariant


def test_covariance_with_omit_is_refused():
    with pytest.raises(InputError, match="covariance"):
        Accumulator(device="cpu", covariance=True, nan_policy="omit")


def test_per_image_conventions_against_numpy():
    # images with very different brightness: per-image std << pixel std
    rng = np.random.default_rng(2)
    ims = [np.clip(rng.normal(m, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)
           for m, (h, w) in zip([30, 220, 128, 90, 180], [(4, 6), (8, 8), (2, 3), (5, 5), (7, 1)])]
    r = compute_stats([ims[:2], ims[2:]], device="cpu", per_image=True, layout="HWC")
    f = [im.reshape(-1, 3).astype(np.float64) / 255 for im in ims]
    means = np.array([a.mean(0) for a in f])
    std0 = np.array([a.std(0) for a in f])
    std1 = np.array([a.std(0, ddof=1) for a in f])
    pi = r.per_image
    assert pi["images"] == 5
    np.testing.assert_allclose(pi["mean_of_means"], means.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pi["mean_of_means_spread"], means.std(0), rtol=1e-10)
    np.testing.assert_allclose(pi["mean_of_stds"], std0.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pi["mean_of_stds_ddof1"], std1.mean(0), rtol=1e-12)
    allpx = np.concatenate(f)
    np.testing.assert_allclose(r.mean, allpx.mean(0), rtol=1e-13)  # pixel-weighted
    assert not np.allclose(pi["mean_of_means"], r.mean, rtol=1e-3)  # image-weighted differs (sizes differ)
    assert np.all(pi["mean_of_stds"] < 0.5 * r.std)  # the two std conventions differ a lot here


def test_per_image_float_and_split_invariance():
    x = np.random.default_rng(3).normal(size=(6, 2, 4, 4))
    a = compute_stats([x], device="cpu", per_image=True, layout="NCHW").per_image
    b = compute_stats([x[:1], x[1:4], x[4:]], device="cpu", per_image=True, layout="NCHW").per_image
    ref = x.reshape(6, 2, -1).std(axis=2, ddof=1).mean(0)
    np.testing.assert_allclose(a["mean_of_stds_ddof1"], ref, rtol=1e-12)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12)


def test_to_dict_has_every_section(natural):
    import json

    r = compute_stats([natural], device="cpu", histogram=True, covariance=True, per_image=True)
    d = json.loads(json.dumps(r.to_dict()))
    assert {"histogram", "covariance", "per_image"} <= set(d)
    assert d["histogram"]["percentiles"]["50"] == r.median().tolist()


@pytest.mark.parametrize("channels, layout", [(1, "NCHW"), (2, "NCHW"), (3, "NHWC"), (3, "NCHW"), (4, "NHWC"),
                                              (4, "NCHW")])
def test_integer_covariance_every_channel_count_and_layout(channels, layout):
    rng = np.random.default_rng(channels)
    shape = (5, channels, 6, 7) if layout == "NCHW" else (5, 6, 7, channels)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    r = compute_stats([x[:2], x[2:]], device="cpu", covariance=True, per_image=True, histogram=True, layout=layout)
    px = pixels([x], layout).astype(np.float64) / 255
    np.testing.assert_allclose(r.cov, np.atleast_2d(np.cov(px, rowvar=False, ddof=0)), rtol=1e-12)
    for c in range(channels):
        np.testing.assert_array_equal(r.histogram[c], np.bincount((px[:, c] * 255).round().astype(int), minlength=256))


@pytest.mark.parametrize("dtype, high", [(np.int8, 127), (np.int16, 3000), (np.uint16, 60000)])
@pytest.mark.parametrize("channels, layout", [(2, "NCHW"), (2, "NHWC"), (4, "NCHW"), (4, "NHWC")])
def test_wider_integer_covariance_against_exact_products(dtype, high, channels, layout):
    rng = np.random.default_rng(channels)
    shape = (3, channels, 5, 7) if layout == "NCHW" else (3, 5, 7, channels)
    x = rng.integers(-high if np.issubdtype(dtype, np.signedinteger) else 0, high, size=shape).astype(dtype)
    r = compute_stats([x[:1], x[1:]], device="cpu", covariance=True, layout=layout, scale=1.0)
    px = pixels([x], layout).astype(np.int64)
    n, total = px.shape[0], px.sum(0)
    np.testing.assert_allclose(r.cov, (px.T @ px - np.outer(total, total) / n) / n, rtol=1e-12)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("extras", [{}, {"per_image": True}, {"covariance": True, "per_image": True, "histogram": True}])
def test_uint8_rows_across_the_kernels_pixel_blocks(layout, extras):
    # 300x300 = 90,000 pixels: more than one 65,536-pixel block of the uint8 loops (uint32 partial sums
    # and bins flushed per block); photo-like runs of equal values, and a saturated corner
    rng = np.random.default_rng(7)
    base = np.cumsum(rng.integers(-2, 3, size=(2, 300, 300, 3)), axis=2) + 128
    x = np.clip(base, 0, 255).astype(np.uint8)
    x[0, :40, :40] = 255
    x = x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    r = compute_stats([x, x[:1, ..., :7] if layout == "NCHW" else x[:1, :, :7]], device="cpu", layout=layout,
                      **extras)  # the second batch: not contiguous, 2,100 pixels (not a multiple of 16)
    second = x[:1, ..., :7] if layout == "NCHW" else x[:1, :, :7]
    px = np.concatenate([pixels([x], layout), pixels([second], layout)]).astype(np.int64)
    np.testing.assert_array_equal(r.count, [px.shape[0]] * 3)
    np.testing.assert_allclose(r.mean, px.mean(0) / 255, rtol=1e-15)
    n, total, total_sq = px.shape[0], px.sum(0), (px * px).sum(0)  # exact integers
    exact_var = [(int(q) * n - int(t) ** 2) / n**2 / 255**2 for t, q in zip(total, total_sq)]  # one rounding
    np.testing.assert_allclose(r.std, np.sqrt(exact_var), rtol=1e-15)
    np.testing.assert_array_equal(r.min, px.min(0) / 255)
    np.testing.assert_array_equal(r.max, px.max(0) / 255)
    if not extras:
        return
    if "covariance" in extras:
        cov = (px.T @ px - np.outer(total, total) / n) / n / 255**2  # exact integer cross products
        np.testing.assert_allclose(r.cov, cov, rtol=1e-12)
        for c in range(3):
            np.testing.assert_array_equal(r.histogram[c], np.bincount(px[:, c], minlength=256))
    images = [px[:90000].T, px[90000:180000].T, px[180000:].T]  # channel rows: numpy's pairwise sums
    np.testing.assert_allclose(r.per_image["mean_of_means"], np.mean([i.mean(1) for i in images], 0) / 255,
                               rtol=1e-15)
    np.testing.assert_allclose(r.per_image["mean_of_stds"], np.mean([i.std(1) for i in images], 0) / 255,
                               rtol=1e-13)


# ---------------------------------------------------------------------- issue 17: numeric defects
def _numpy_percentiles(x: np.ndarray, qs) -> np.ndarray:
    return np.percentile(x.astype(np.float64), qs)


@pytest.mark.parametrize("dtype, bins, lo, hi", [("int16", 20, -1000, 1000), ("uint16", 256, 0, 65536),
                                                 ("int8", 10, -128, 128)])
def test_percentiles_interpolate_within_bins_wider_than_one_value(dtype, bins, lo, hi):
    """Bins of many values were read at their lower edge (int16 median -100 vs numpy -13.5); now
    within one bin width always, exact at 0 and 100, and close for smooth data."""
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    x = np.clip(rng.integers(max(lo, info.min), min(hi, info.max) + 1, size=(6, 1, 40, 50)), info.min, info.max).astype(dtype)
    r = compute_stats([x], device="cpu", histogram=True, hist_bins=bins, hist_range=(lo, hi), layout="NCHW", scale=1.0)
    qs = [0, 1, 13.7, 50, 75, 99, 100]
    ours = r.percentile(qs)[:, 0]
    ref = _numpy_percentiles(x.reshape(-1), qs)
    width = (hi - lo) / bins
    assert ours[0] == x.min() and ours[-1] == x.max()
    # uniform data: values are spread evenly within bins, so the estimate is far inside the bound
    np.testing.assert_allclose(ours, ref, atol=0.1 * width)
    assert r.percentile_error_bound() <= width
    assert np.all(np.abs(ours - ref) <= r.percentile_error_bound())
    # half-value-wide bins: each holds at most one integer (the last bin is closed, so with one bin
    # per integer it would hold two, hi and hi + 1, and the bound would honestly be 1)
    one_value_bins = compute_stats([x], device="cpu", histogram=True, hist_bins=2 * (hi - lo), hist_range=(lo, hi),
                                   layout="NCHW", scale=1.0)
    assert one_value_bins.percentile_error_bound() == 0.0
    np.testing.assert_array_equal(one_value_bins.percentile(qs)[:, 0], ref)  # exact where bins are one value


def test_saturation_counts_only_values_at_the_range_ends():
    """It counted the first/last bins (e.g. every int16 value in [-1000, -900)), not the ends."""
    rng = np.random.default_rng(6)
    x = rng.integers(-1000, 1001, size=(3, 2, 30, 30)).astype(np.int16)
    x[0, 0, 0, :7] = -1000
    x[1, 1, 0, :5] = 1000
    r = compute_stats([x[:1], x[1:]], device="cpu", histogram=True, hist_bins=20, hist_range=(-1000, 1000),
                      layout="NCHW", scale=1.0)
    px = pixels([x], "NCHW")
    sat = r.saturation()
    np.testing.assert_array_equal(sat["low"], (px == -1000).mean(axis=0))
    np.testing.assert_array_equal(sat["high"], (px == 1000).mean(axis=0))
    assert r.range_ends() == (-1000.0, 1000.0)
    # clip=True: values beyond the range are clipped to its ends and count there
    f = rng.normal(size=(2, 1, 20, 20))
    rc = compute_stats([f], device="cpu", histogram=True, hist_bins=8, hist_range=(-1, 1), clip=True)
    fx = np.clip(pixels([f], "NCHW"), -1, 1)
    np.testing.assert_array_equal(rc.saturation()["low"], (fx == -1).mean(axis=0))
    np.testing.assert_array_equal(rc.saturation()["high"], (fx == 1).mean(axis=0))
    d = r.to_dict()["histogram"]
    assert d["saturated_low"] == sat["low"].tolist() and d["percentile_error_bound"] == 100.0


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_one_pixel_image_has_no_ddof1_std(dtype):
    """Issue 25, item 7: a 1-pixel image's per-image ddof=1 std counted as 0 and pulled the mean of
    per-image stds down. One value has no sample std: it is left out of that row (and counted)."""
    rng = np.random.default_rng(12)
    images = [rng.integers(0, 256, size=(3, h, w)).astype(dtype) for h, w in ((4, 5), (1, 1), (3, 3), (1, 1))]
    if dtype == "float32":
        images = [im / 255 for im in images]
    r = compute_stats([images], device="cpu", per_image=True, layout="CHW")
    pi = r.per_image
    scale = 255.0 if dtype == "uint8" else 1.0
    flat = [im.reshape(3, -1).astype(np.float64) / scale for im in images]
    with_spread = [f for f in flat if f.shape[1] > 1]
    assert pi["images"] == 4 and pi["images_per_channel"].tolist() == [4] * 3
    assert pi["images_per_channel_ddof1"].tolist() == [2] * 3
    np.testing.assert_allclose(pi["mean_of_stds_ddof1"], np.mean([f.std(axis=1, ddof=1) for f in with_spread], 0),
                               rtol=1e-12)
    np.testing.assert_allclose(pi["mean_of_stds"], np.mean([f.std(axis=1) for f in flat], 0), rtol=1e-12)
    back = ChannelStats.from_json(r.state.to_json()).finalize().per_image  # kept through JSON and merges
    assert back["images_per_channel_ddof1"].tolist() == [2] * 3
    split = compute_stats([images[:2], images[2:]], device="cpu", per_image=True, layout="CHW").per_image
    np.testing.assert_allclose(split["mean_of_stds_ddof1"], pi["mean_of_stds_ddof1"], rtol=1e-15)


def test_per_image_omit_counts_each_image_in_the_channels_it_has():
    """An all-NaN channel of one image made that channel's mean_of_stds NaN, or dropped the image
    from every channel; now each channel counts the images with finite values there."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.5, 0.2, size=(4, 3, 5, 6))
    x[1, 0] = np.nan  # image 1 has no channel-0 values
    x[2, 2] = np.nan  # image 2 has no channel-2 values
    x[3, 1, 0, :3] = np.nan  # image 3 has some channel-1 NaNs
    pi = compute_stats([x[:2], x[2:]], device="cpu", per_image=True, nan_policy="omit", layout="NCHW").per_image
    assert pi["images"] == 4 and pi["images_per_channel"].tolist() == [3, 4, 3]
    for c in range(3):
        rows = [im[c][np.isfinite(im[c])] for im in x if np.isfinite(im[c]).any()]
        means = np.array([r.mean() for r in rows])
        np.testing.assert_allclose(pi["mean_of_means"][c], means.mean(), rtol=1e-13)
        np.testing.assert_allclose(pi["mean_of_means_spread"][c], means.std(), rtol=1e-10)
        np.testing.assert_allclose(pi["mean_of_stds"][c], np.mean([r.std() for r in rows]), rtol=1e-13)
        np.testing.assert_allclose(pi["mean_of_stds_ddof1"][c], np.mean([r.std(ddof=1) for r in rows]), rtol=1e-13)


def test_per_image_integer_aggregates_are_exact_for_any_batch_split():
    """They differed by 1-2 ulp between batch splits; now rounded once from exact sums."""
    from fractions import Fraction

    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, size=(37, 3, 5, 7), dtype=np.uint8)
    splits = [[x], [x[:5], x[5:20], x[20:]], [x[i:i + 1] for i in range(37)], [x[:36], x[36:]]]
    results = [compute_stats(b, device="cpu", per_image=True) for b in splits]
    dicts = [r.to_dict()["per_image"] for r in results]
    assert all(d == dicts[0] for d in dicts[1:])
    assert all(r.state == results[0].state for r in results[1:])
    # reference: each image's mean as the exactly rounded s/n, averaged in exact rational arithmetic
    img = x.reshape(37, 3, -1).astype(object)
    for c in range(3):
        means = [float(Fraction(int(im[c].sum()), im[c].size)) for im in img]
        want = float(sum(Fraction(m) for m in means) / (37 * Fraction(255)))
        assert results[0].per_image["mean_of_means"][c] == want


def test_float64_offset_split_into_images_or_batches_costs_no_precision():
    """1e8 +- 0.01 over 16 images: std relative error was 7e-10 (one batch) and 1.3e-9 (16 batches)
    against 1e-15 for one image; the spread of image means was off by ~1e-5."""
    from fractions import Fraction

    rng = np.random.default_rng(9)
    x = 1e8 + 0.01 * rng.standard_normal((16, 1, 1, 1000))
    exact = [Fraction(v) for v in x.reshape(-1)]
    mean = sum(exact) / len(exact)
    ref_std = float(sum((v - mean) ** 2 for v in exact) / len(exact)) ** 0.5
    img_means = [sum(exact[i * 1000:(i + 1) * 1000]) / 1000 for i in range(16)]
    grand = sum(img_means) / 16
    ref_spread = float(sum((m - grand) ** 2 for m in img_means) / 16) ** 0.5
    for batches in ([x], [x[i:i + 1] for i in range(16)], [x[:3], x[3:]]):
        r = compute_stats(batches, device="cpu", layout="NCHW", per_image=True)
        assert abs(r.std[0] / ref_std - 1) < 1e-12
        assert abs(r.mean[0] - float(mean)) <= 1.5e-8  # half an ulp of 1e8
        assert abs(r.per_image["mean_of_means_spread"][0] / ref_spread - 1) < 1e-9


def test_undefined_covariance_is_nan_and_whitening_says_why():
    """A single pixel with ddof=1 raised numpy's LinAlgError in pca/whitening/corr."""
    x = np.array([[[[10]], [[20]], [[30]]]], dtype=np.uint8)
    r = compute_stats([x], device="cpu", covariance=True, ddof=1, layout="NCHW")
    assert np.isnan(r.cov).all() and np.isnan(r.corr).all()
    values, vectors = r.pca()
    assert np.isnan(values).all() and np.isnan(vectors).all()
    with pytest.raises(StatsError, match="covariance is undefined.*1 pixels with ddof=1"):
        r.whitening()
    assert np.isnan(r.to_dict()["covariance"]["eigenvalues"]).all()
    ok = compute_stats([x], device="cpu", covariance=True, ddof=0, layout="NCHW")
    assert ok.cov.tolist() == [[0.0] * 3] * 3 and np.isfinite(ok.pca()[0]).all()


def test_saturation_without_exact_end_counts_says_so():
    """A state saved before end counts were kept (bins wider than one value) cannot answer exactly."""
    from gpustats import ChannelStats

    x = np.random.default_rng(11).integers(-1000, 1001, size=(2, 1, 10, 10)).astype(np.int16)
    r = compute_stats([x], device="cpu", histogram=True, hist_bins=20, hist_range=(-1000, 1000), layout="NCHW")
    d = r.state.to_dict()
    del d["hist_ends"]
    old = ChannelStats.from_dict(d).finalize()
    assert r.saturation_available and not old.saturation_available
    with pytest.raises(StatsError, match="exact counts at the histogram range's ends"):
        old.saturation()
    assert "saturated_low" not in old.to_dict()["histogram"]
    assert old.state.merge(r.state).hist_ends is None  # unknown on one side: unknown
