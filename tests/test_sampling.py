"""Tests for gpustats.sampling: interval coverage on known populations, early stop, cap, seeds,
sources (datasets, files, iterables, DataLoaders) and the exact answer of an exhausted population.

Coverage is measured against the exact population statistics (numpy float64 over every pixel) of
heterogeneous synthetic populations: per-image means and stds vary, image sizes vary 8-fold.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpustats import InputError, compute_stats
from gpustats.sampling import SampledStats, SampleSpec, estimate_stats, ratio_intervals
from gpustats.sources import synthetic

TRIALS = 300  # binomial sd of a 95% coverage: 1.3 points
LOW, HIGH = 0.90, 0.99  # accepted coverage of nominal 95% intervals over TRIALS trials


# --------------------------------------------------------------------------- populations


def make_population(n: int, seed: int, spread: float = 0.6, within: tuple[float, float] = (20, 80)) -> list[np.ndarray]:
    """``n`` HWC uint8 images, 5..14 pixels a side (an 8-fold range of pixel counts).

    Per-image means are ``127.5 + spread * (Beta(2, 2) * 255 - 127.5)``: ``spread=0.6`` gives a
    between-image std of the means of about 0.13, as in real photo collections; per-image stds
    are uniform in ``within`` (default about 0.2 on average, also photo-like).
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(5, 15, size=2))
        mu = 127.5 + spread * (rng.beta(2, 2, size=3) * 255 - 127.5)
        sd = rng.uniform(*within, size=3)
        x = rng.normal(mu, sd, size=(h, w, 3))
        images.append(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    return images


def exact(images: list[np.ndarray], scale: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([im.reshape(-1, im.shape[-1]) for im in images]).astype(np.float64) / scale
    return pixels.mean(axis=0), pixels.std(axis=0)


def unit_table(images: list[np.ndarray], scale: float = 255.0):
    """Per-image (n, s, m2) computed directly with numpy: the 'direct path' of the coverage tests."""
    count = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
    flat = [im.reshape(-1, im.shape[-1]).astype(np.float64) / scale for im in images]
    total = np.stack([f.sum(axis=0) for f in flat])
    m2 = np.stack([((f - f.mean(axis=0)) ** 2).sum(axis=0) for f in flat])
    return count, total, m2


@pytest.fixture(scope="module")
def population():
    images = make_population(1500, seed=1)
    mean, std = exact(images)
    return {"images": images, "mean": mean, "std": std, "table": unit_table(images)}


def covered(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return (lo <= truth) & (truth <= hi)


def assert_coverage(hits_mean: np.ndarray, hits_std: np.ndarray, trials: int) -> None:
    cov_mean, cov_std = hits_mean / trials, hits_std / trials
    assert np.all((cov_mean >= LOW) & (cov_mean <= HIGH)), f"mean coverage {cov_mean} outside [{LOW}, {HIGH}]"
    assert np.all((cov_std >= LOW) & (cov_std <= HIGH)), f"std coverage {cov_std} outside [{LOW}, {HIGH}]"


def direct_sequential(table, population_size, seed, tolerance, batch_size=16, min_images=30, cap=None,
                      confidence=0.95):
    """The stopping rule of estimate_stats on precomputed per-image sums (same visiting order)."""
    count, total, m2 = table
    order = np.random.default_rng(seed).permutation(population_size)
    stop = population_size if cap is None else min(cap, population_size)
    k = 0
    while True:
        k = min(k + batch_size, stop)
        idx = order[:k]
        r = ratio_intervals(count[idx], total[idx], m2[idx], population_size=population_size, confidence=confidence)
        if k >= stop:
            return r, k
        if k >= min_images and np.all(r["half_mean"] <= tolerance) and np.all(r["half_std"] <= tolerance):
            return r, k


# --------------------------------------------------------------------------- coverage


def test_coverage_fixed_sample_end_to_end(population):
    """300 seeded runs of estimate_stats on a 60-image sample (4% of the population)."""
    hits_mean = np.zeros(3)
    hits_std = np.zeros(3)
    for seed in range(TRIALS):
        r = estimate_stats(population["images"], tolerance=0.0, max_images=60, seed=seed, batch_size=32, device="cpu")
        assert r.stopped_because == "max_images" and r.units_visited == 60
        hits_mean += covered(*r.mean_ci, population["mean"])
        hits_std += covered(*r.std_ci, population["std"])
    assert_coverage(hits_mean, hits_std, TRIALS)


def test_coverage_sequential_stop_direct(population):
    """Coverage when the run stops at the tolerance (Chow-Robbins rule), 400 trials on the direct path."""
    trials, hits_mean, hits_std, used = 400, np.zeros(3), np.zeros(3), []
    n = len(population["images"])
    for seed in range(trials):
        r, k = direct_sequential(population["table"], n, seed, tolerance=0.025)
        hits_mean += covered(r["mean"] - r["half_mean"], r["mean"] + r["half_mean"], population["mean"])
        hits_std += covered(r["std"] - r["half_std"], r["std"] + r["half_std"], population["std"])
        used.append(k)
    assert 30 < np.mean(used) < n / 2, f"stopping sample sizes {np.mean(used)} do not exercise the rule"
    assert_coverage(hits_mean, hits_std, trials)


def test_direct_path_is_what_estimate_stats_does(population):
    n = len(population["images"])
    for seed in (0, 7):
        r_direct, k = direct_sequential(population["table"], n, seed, tolerance=0.025)
        r = estimate_stats(population["images"], tolerance=0.025, seed=seed, batch_size=16, device="cpu")
        assert r.units_visited == k and r.stopped_because == "tolerance"
        np.testing.assert_allclose(r.mean, r_direct["mean"], rtol=0, atol=1e-13)
        np.testing.assert_allclose(r.std, r_direct["std"], rtol=0, atol=1e-13)
        np.testing.assert_allclose(r.half_widths["mean"], r_direct["half_mean"], rtol=1e-9)
        np.testing.assert_allclose(r.half_widths["std"], r_direct["half_std"], rtol=1e-9)


def test_coverage_with_finite_population_correction():
    """Visiting 2/3 of a 300-image population: without the FPC the intervals would cover ~99.9%."""
    images = make_population(300, seed=5)
    truth_mean, truth_std = exact(images)
    table = unit_table(images)
    trials, hits_mean, hits_std, wide = 400, np.zeros(3), np.zeros(3), np.zeros(3)
    for seed in range(trials):
        r, k = direct_sequential(table, 300, seed, tolerance=0.0, batch_size=200, cap=200)
        assert k == 200
        hits_mean += covered(r["mean"] - r["half_mean"], r["mean"] + r["half_mean"], truth_mean)
        hits_std += covered(r["std"] - r["half_std"], r["std"] + r["half_std"], truth_std)
        no_fpc = r["half_mean"] / np.sqrt(1 - 200 / 300)
        wide += covered(r["mean"] - no_fpc, r["mean"] + no_fpc, truth_mean)
    assert_coverage(hits_mean, hits_std, trials)
    assert np.all(wide / trials > 0.99)  # the correction matters here


def test_coverage_strongly_heterogeneous_std():
    """The hard case for the std: the pooled std is mostly between-image (sd of image means 0.22,
    within-image stds 0.02..0.24) -- its interval undercovers slightly (about 93%) at k=100."""
    images = make_population(1500, seed=11, spread=1.0, within=(5, 60))
    truth_mean, truth_std = exact(images)
    table = unit_table(images)
    trials, hits_mean, hits_std = 1000, np.zeros(3), np.zeros(3)
    for seed in range(trials):
        r, _ = direct_sequential(table, len(images), seed, tolerance=0.0, batch_size=100, cap=100)
        hits_mean += covered(r["mean"] - r["half_mean"], r["mean"] + r["half_mean"], truth_mean)
        hits_std += covered(r["std"] - r["half_std"], r["std"] + r["half_std"], truth_std)
    assert_coverage(hits_mean, hits_std, trials)


def test_std_is_not_biased_low():
    """Centring at the estimated mean would bias the std low by ~V(mean)/(2 std); it is corrected."""
    images = make_population(1500, seed=11, spread=1.0, within=(5, 60))
    _, truth_std = exact(images)
    table = unit_table(images)
    stds, ses = [], []
    for seed in range(1000):
        r, _ = direct_sequential(table, len(images), seed, tolerance=0.0, batch_size=30, cap=30)
        stds.append(r["std"])
        ses.append(r["se_std"])
    bias = np.mean(stds, axis=0) - truth_std
    assert np.all(np.abs(bias) < 0.1 * np.std(stds, axis=0)), bias  # uncorrected: about -0.22 sd


# --------------------------------------------------------------------------- the estimator itself


def test_equal_sizes_reduce_to_the_mean_of_image_means():
    """With equal image sizes the ratio estimator is the plain mean of image means, se = sd/sqrt(k)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8) for _ in range(50)]
    count, total, m2 = unit_table(images)
    r = ratio_intervals(count, total, m2, population_size=None)
    image_means = total / count[:, None]
    np.testing.assert_allclose(r["mean"], image_means.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(r["se_mean"], image_means.std(axis=0, ddof=1) / np.sqrt(50), rtol=1e-12)
    r_fpc = ratio_intervals(count, total, m2, population_size=200)
    np.testing.assert_allclose(r_fpc["se_mean"], r["se_mean"] * np.sqrt(1 - 50 / 200), rtol=1e-12)
    # the std is the pooled pixel std of the sample plus the variance of its estimated centre
    _, plain_std = exact(images)
    np.testing.assert_allclose(r["std"] ** 2, plain_std**2 + r["se_mean"] ** 2, rtol=1e-12)
    assert np.all(r["half_mean"] > 1.96 * r["se_mean"])  # Student t with 49 df: 2.0096
    np.testing.assert_allclose(r["half_mean"] / r["se_mean"], 2.009575, rtol=1e-5)


def test_constant_images_have_zero_width_and_no_nan():
    images = [np.full((6, 6, 3), 100, np.uint8)] * 40
    r = estimate_stats(images, tolerance=1e-6, batch_size=10, device="cpu")
    assert r.stopped_because == "tolerance" and r.units_visited == 30  # min_images, then a zero-width stop
    np.testing.assert_allclose(r.mean, 100 / 255)
    assert np.all(r.std < 1e-12) and np.all(r.half_widths["std"] < 1e-12) and np.all(r.half_widths["mean"] < 1e-12)
    assert np.all(np.isfinite(r.std_ci[0])) and np.all(np.isfinite(r.std_ci[1]))


def test_float_data_with_large_offset_is_cancellation_free():
    rng = np.random.default_rng(2)
    images = [(1e6 + rng.normal(0, 1, size=(3, 8, 8 + i % 3))).astype(np.float64) for i in range(40)]
    copies = [im.copy() for im in images]
    r = estimate_stats(images, tolerance=0.0, device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(images, copies))  # the input is never written to
    pixels = np.concatenate([im.reshape(3, -1) for im in images], axis=1)
    assert r.stopped_because == "exhausted" and r.scale == 1.0
    np.testing.assert_allclose(r.mean, pixels.mean(axis=1), rtol=1e-15)
    np.testing.assert_allclose(r.std, pixels.std(axis=1), rtol=1e-9)


# --------------------------------------------------------------------------- stopping rules


def test_loose_tolerance_stops_early(population):
    r = estimate_stats(population["images"], tolerance=0.02, device="cpu")
    assert r.stopped_because == "tolerance" and r.is_estimate
    assert 30 <= r.images_used < len(population["images"])
    assert np.all(r.half_widths["mean"] <= 0.02) and np.all(r.half_widths["std"] <= 0.02)
    tighter = estimate_stats(population["images"], tolerance=0.01, device="cpu")
    assert tighter.images_used > r.images_used
    assert r.population_size == 1500 and "ESTIMATE" in repr(r) and "1500" in repr(r)


def test_min_images_is_respected(population):
    r = estimate_stats(population["images"], tolerance=1.0, min_images=50, batch_size=8, device="cpu")
    assert r.stopped_because == "tolerance" and r.images_used == 56  # first check at or above 50


def test_cap_is_honoured_exactly(population):
    r = estimate_stats(population["images"], tolerance=1e-9, max_images=45, batch_size=16, device="cpu")
    assert r.stopped_because == "max_images" and r.units_visited == 45 and r.images_used == 45
    assert r.is_estimate and np.all(r.half_widths["mean"] > 1e-9)


def test_cap_on_an_assumed_shuffled_stream():
    rng = np.random.default_rng(4)
    batches = (rng.integers(0, 256, size=(10, 3, 6, 6), dtype=np.uint8) for _ in range(20))
    r = estimate_stats(batches, tolerance=0.0, max_images=37, assume_shuffled=True, device="cpu")
    assert r.units_visited == 37 and r.stopped_because == "max_images" and r.population_size is None


def test_same_seed_same_result_other_seed_other_result(population):
    a = estimate_stats(population["images"], tolerance=0.02, seed=3, device="cpu")
    b = estimate_stats(population["images"], tolerance=0.02, seed=3, device="cpu")
    c = estimate_stats(population["images"], tolerance=0.02, seed=4, device="cpu")
    assert a.to_dict() | {"elapsed_s": 0} == b.to_dict() | {"elapsed_s": 0}
    assert not np.array_equal(a.mean, c.mean)


def test_exhausted_population_is_exact():
    images = make_population(40, seed=9)
    truth_mean, truth_std = exact(images)
    r = estimate_stats(images, tolerance=0.0, device="cpu", batch_size=16)
    assert r.stopped_because == "exhausted" and not r.is_estimate
    assert r.units_visited == r.images_used == r.population_size == 40
    np.testing.assert_allclose(r.mean, truth_mean, rtol=1e-13)
    np.testing.assert_allclose(r.std, truth_std, rtol=1e-12)
    assert np.all(r.half_widths["mean"] == 0) and np.all(r.half_widths["std"] == 0)
    assert np.array_equal(r.mean_ci[0], r.mean) and np.array_equal(r.std_ci[1], r.std)
    assert "EXACT" in repr(r)
    full = compute_stats([images], device="cpu")  # one batch: a list of variable-size images
    np.testing.assert_allclose(r.mean, full.mean, rtol=1e-13)
    np.testing.assert_allclose(r.std, full.std, rtol=1e-12)
    # a cap equal to the population size is still exhaustion, hence exact
    assert estimate_stats(images, tolerance=0.0, max_images=40, device="cpu").stopped_because == "exhausted"


def test_exhausted_assumed_shuffled_stream_is_exact():
    rng = np.random.default_rng(6)
    batches = [rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8) for _ in range(4)]
    r = estimate_stats(iter(batches), tolerance=0.0, assume_shuffled=True, device="cpu")
    mean, std = exact([im for b in batches for im in b])
    assert r.stopped_because == "exhausted" and not r.is_estimate and r.units_visited == 20
    np.testing.assert_allclose(r.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(r.std, std, rtol=1e-12)


# --------------------------------------------------------------------------- sources


def test_plain_iterables_are_refused():
    gen = (np.zeros((2, 3, 8, 8), np.uint8) for _ in range(3))
    with pytest.raises(InputError, match="assume_shuffled=True"):
        estimate_stats(gen, tolerance=0.01)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield np.zeros((3, 8, 8), np.uint8)

    with pytest.raises(InputError, match="random order"):
        estimate_stats(Stream(), tolerance=0.01)
    with pytest.raises(InputError, match="IterableDataset"):
        estimate_stats(torch.utils.data.DataLoader(Stream(), batch_size=None), tolerance=0.01)


def test_map_style_dataset_of_pairs_and_dataloader():
    images = make_population(80, seed=2)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return torch.from_numpy(images[i]).permute(2, 0, 1), i % 3  # CHW tensor, label

    direct = estimate_stats(Pairs(), tolerance=0.0, max_images=50, seed=1, device="cpu")
    via_loader = estimate_stats(torch.utils.data.DataLoader(Pairs(), batch_size=None), tolerance=0.0,
                                max_images=50, seed=1, device="cpu")
    as_list = estimate_stats(images, tolerance=0.0, max_images=50, seed=1, device="cpu")
    np.testing.assert_array_equal(direct.mean, via_loader.mean)
    np.testing.assert_allclose(direct.mean, as_list.mean, rtol=1e-14)
    np.testing.assert_allclose(direct.std, as_list.std, rtol=1e-12)


def test_workers_give_the_same_answer():
    images = make_population(60, seed=12)
    a = estimate_stats(images, tolerance=0.0, max_images=40, seed=2, device="cpu")
    b = estimate_stats(images, tolerance=0.0, max_images=40, seed=2, device="cpu", workers=2)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.half_widths["std"], b.half_widths["std"])


def test_image_folder_with_a_bad_file(tmp_path):
    paths = synthetic.make_tiny_folder(tmp_path, 40, size=(8, 6))
    (tmp_path / "d0000" / "broken.png").write_bytes(b"not a png")
    truth_mean, truth_std = exact([synthetic.tiny_array(i, (8, 6)) for i in range(40)])
    r = estimate_stats(tmp_path, tolerance=0.0, device="cpu", batch_size=16)
    assert r.stopped_because == "exhausted" and r.population_size == 41
    assert r.units_visited == 41 and r.images_used == 40
    assert len(r.bad_files) == 1 and r.bad_files[0][0].endswith("broken.png")
    np.testing.assert_allclose(r.mean, truth_mean, rtol=1e-13)
    np.testing.assert_allclose(r.std, truth_std, rtol=1e-12)
    # a list of files, a cap and decode options
    small = estimate_stats([str(p) for p in paths], tolerance=0.0, max_images=10, device="cpu", center_crop=4)
    assert small.units_visited == 10 and small.pixels_used == 10 * 16 and small.is_estimate


def test_compute_stats_hook():
    images = make_population(100, seed=8)
    spec = SampleSpec(tolerance=0.0, max_images=64, seed=5)
    r = compute_stats(images, device="cpu", sample=spec)
    assert isinstance(r, SampledStats) and r.units_visited == 64
    same = estimate_stats(images, tolerance=0.0, max_images=64, seed=5, device="cpu")
    np.testing.assert_array_equal(r.mean, same.mean)
    with pytest.raises(InputError, match="histogram"):
        compute_stats(images, device="cpu", sample=spec, histogram=True)


def test_to_dict_is_json_and_repr_says_estimate(population):
    r = estimate_stats(population["images"], tolerance=0.03, device="cpu")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["is_estimate"] is True and d["stopped_because"] == "tolerance"
    assert len(d["mean_ci"][0]) == 3 and d["population_size"] == 1500
    assert d["images_used"] == r.images_used and "ESTIMATE" in d["note"]
    text = repr(r)
    assert "ESTIMATE" in text and "±" in text and "95%" in text


@pytest.mark.parametrize("kwargs, match", [
    ({"tolerance": -1}, "tolerance"),
    ({"tolerance": 0.01, "confidence": 1.0}, "confidence"),
    ({"tolerance": 0.01, "max_images": 0}, "max_images"),
    ({"tolerance": 0.01, "min_images": 1}, "min_images"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_stats([np.zeros((5, 5, 3), np.uint8)], **kwargs)


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), 0, -1.0, True])
def test_scale_follows_compute_stats_rule(scale):
    """Issue 25, item 7: scale=inf gave means of 0 here while compute_stats refuses it: one rule."""
    images = [np.full((5, 5, 3), 7, np.uint8)] * 3
    with pytest.raises(ValueError, match="finite positive number"):
        estimate_stats(images, tolerance=0.01, scale=scale)
    with pytest.raises(ValueError, match="finite positive number"):
        compute_stats(images, device="cpu", scale=scale)


def test_strict_stops_at_the_first_bad_file(tmp_path, monkeypatch):
    """Issue 25, item 7: --strict under --sample-tolerance was checked after the whole run; its help
    says the first bad file ends the run. It now stops there, having decoded no further batch."""
    from gpustats.sources import dataset
    from gpustats.sources.engine import StrictBadFile

    synthetic.make_tiny_folder(tmp_path, 300, size=(4, 4))
    (tmp_path / "d0000" / "broken.png").write_bytes(b"not a png")
    decoded = []
    real = dataset.ImageFileDataset.__getitem__

    def counted(self, i):
        decoded.append(real(self, i))
        return decoded[-1]

    monkeypatch.setattr(dataset.ImageFileDataset, "__getitem__", counted)
    for seed in range(3):
        decoded.clear()
        with pytest.raises(StrictBadFile, match="broken.png.*strict"):
            estimate_stats(tmp_path, tolerance=0.0, batch_size=8, device="cpu", strict=True, seed=seed)
        assert len(decoded) % 8 == 0 or len(decoded) == 301
        assert [r.array is None for r in decoded].count(True) == 1  # nothing decoded after the bad file's batch
        assert any(r.array is None for r in decoded[-8:])


def test_decode_options_only_for_files():
    with pytest.raises(TypeError, match="files"):
        estimate_stats([np.zeros((5, 5, 3), np.uint8)], tolerance=0.01, resize=4)


# --------------------------------------------------------------------------- CLI


def test_cli_sample_flags(tmp_path, capsys):
    from gpustats.cli import main

    synthetic.make_tiny_folder(tmp_path, 120, size=(10, 8))
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0.02", "--seed", "3", "--workers", "0", "-q"]) == 0
    table = capsys.readouterr().out
    assert "ESTIMATE" in table and "95% CI low" in table and "images used: 64 of 120" in table
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0", "--max-images", "40", "--confidence", "0.9",
                 "--format", "json", "--workers", "0", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "gpustats.sample/1" and doc["is_estimate"] is True and doc["channels"] == ["R", "G", "B"]
    assert doc["images_used"] == 40 and doc["stopped_because"] == "max_images" and doc["confidence"] == 0.9
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0", "--format", "python", "--workers", "0", "-q"]) == 0
    assert "# exact: all 120 images" in capsys.readouterr().out
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0.01", "--histogram", "-q"]) == 1
    assert "--histogram" in capsys.readouterr().err
