"""Histograms/percentiles, covariance/PCA/whitening and per-image statistics against numpy float64."""

from __future__ import annotations

import numpy as np
import pytest

from gpustats import Accumulator, InputError, StatsError, compute_stats

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


@pytest.mark.parametrize("channels, layout", [(1, "NCHW"), (2, "NCHW"), (3, "NHWC"), (4, "NHWC"), (4, "NCHW")])
def test_integer_covariance_every_channel_count_and_layout(channels, layout):
    rng = np.random.default_rng(channels)
    shape = (5, channels, 6, 7) if layout == "NCHW" else (5, 6, 7, channels)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    r = compute_stats([x[:2], x[2:]], device="cpu", covariance=True, per_image=True, histogram=True, layout=layout)
    px = pixels([x], layout).astype(np.float64) / 255
    np.testing.assert_allclose(r.cov, np.atleast_2d(np.cov(px, rowvar=False, ddof=0)), rtol=1e-12)
    for c in range(channels):
        np.testing.assert_array_equal(r.histogram[c], np.bincount((px[:, c] * 255).round().astype(int), minlength=256))
