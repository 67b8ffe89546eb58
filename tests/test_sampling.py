"""Tests for gpustats.sampling: the estimator, early stop, cap, seeds, sources (datasets, files,
iterables, DataLoaders), the exact answer of an exhausted population and the command's sample flags.

Populations and their exact statistics: tests/_sampling_populations.py; interval coverage:
tests/test_sampling_coverage.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpustats import InputError, compute_stats
from gpustats.sample_design import sizes_of_items
from gpustats.sampling import SampledStats, SampleSpec, estimate_stats, ratio_intervals
from gpustats.sources import synthetic

import _sampling_populations
from _sampling_populations import direct_sequential, exact, make_population, unit_table

population = _sampling_populations.population  # a shared fixture (assigned: pyflakes reads an imported one as unused)


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
    _, k = direct_sequential(population["table"], 1500, 0, 1.0, batch_size=8, min_images=50, sizes=population["sizes"])
    # a check at or above 50 images, once the variance estimates are worth 25 images (degrees of freedom)
    assert r.stopped_because == "tolerance" and r.images_used == k >= 56
    rng = np.random.default_rng(1)
    equal = [rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8) for _ in range(150)]
    r = estimate_stats(equal, tolerance=1.0, min_images=50, batch_size=8, device="cpu")  # one stratum, light tails
    assert r.stopped_because == "tolerance" and r.images_used == 56  # the first check at or above 50


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

    direct = estimate_stats(Pairs(), tolerance=0.0, max_images=50, seed=1, device="cpu", sizes=sizes_of_items(images))
    via_loader = estimate_stats(torch.utils.data.DataLoader(Pairs(), batch_size=None), tolerance=0.0,
                                max_images=50, seed=1, device="cpu", sizes=sizes_of_items(images))
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


def test_a_run_that_reads_every_image_is_exactly_compute_stats(tmp_path, capsys):
    """Issue 25, item 6: a sampled run that reads every image said EXACT but differed from compute_stats
    in the last bits (intervals.py pooled variances itself); and its header said "subset of 320 of 612
    images", its report "images used: 319", its Normalize comment "from 320 images". Now the exact pass's
    rule gives the exact pass's bits, and every report counts the same way."""
    from gpustats.cli import main

    synthetic.make_tiny_folder(tmp_path, 70, size=(9, 7))
    (tmp_path / "d0000" / "broken.png").write_bytes(b"not a png")
    r = estimate_stats(tmp_path, tolerance=0.0, device="cpu", batch_size=16)
    full = compute_stats(str(tmp_path), device="cpu", workers=0)
    assert not r.is_estimate and r.units_visited == 71 and r.images_used == 70
    assert r.mean.tobytes() == full.mean.tobytes() and r.std.tobytes() == full.std.tobytes()
    rng = np.random.default_rng(8)
    floats = [rng.normal(1e3, 1.0, size=(5, 4 + i % 3, 3)) for i in range(50)]
    rf = estimate_stats(floats, tolerance=0.0, device="cpu")
    ref = np.concatenate([f.reshape(-1, 3) for f in floats])
    np.testing.assert_allclose(rf.mean, ref.mean(axis=0), rtol=1e-14)  # float data: float64 rounding of a merge
    np.testing.assert_allclose(rf.std, ref.std(axis=0), rtol=1e-12)
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0", "--workers", "0", "-q"]) == 0
    table = capsys.readouterr().out
    said = "71 of 71 files visited (70 images, 1 bad file)"
    assert table.count(said) == 3, table  # the header, the count line and the Normalize comment
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0.05", "--workers", "0", "-q"]) == 0
    table = capsys.readouterr().out
    header, normalize = table.splitlines()[0], table.splitlines()[-1]
    counted = header.split("random subset: ")[1].split(";")[0]
    assert counted in normalize and f"read: {counted}" in table


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
    with pytest.raises(ValueError, match="scale must be .auto. or a number from"):
        estimate_stats(images, tolerance=0.01, scale=scale)
    with pytest.raises(ValueError, match="scale must be .auto. or a number from"):
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
    assert "ESTIMATE" in table and "95% CI low" in table and "of 120 files visited" in table
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0", "--max-images", "40", "--confidence", "0.9",
                 "--format", "json", "--workers", "0", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "gpustats.sample/1" and doc["is_estimate"] is True and doc["channels"] == ["R", "G", "B"]
    assert doc["images_used"] == 40 and doc["stopped_because"] == "max_images" and doc["confidence"] == 0.9
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0", "--format", "python", "--workers", "0", "-q"]) == 0
    assert "# exact: 120 of 120 files visited (120 images)" in capsys.readouterr().out
    assert main(["stats", str(tmp_path), "--sample-tolerance", "0.01", "--histogram", "-q"]) == 1
    assert "--histogram" in capsys.readouterr().err
