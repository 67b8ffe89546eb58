"""Sampling: images needed to reach a tolerance vs the textbook estimate, and images/s.

On an ImageNet-like JPEG corpus (make_jpeg_corpus, 500x375, quality 90; ``GPUSTATS_BENCH_SAMPLE``
files, default 400, cached in a temp dir), the exact per-image statistics are computed once; then
:func:`gpustats.sampling.estimate_stats` runs for several tolerances T and reports, in
``extra_info``:

* ``images_used`` against ``predicted_n``: the sample size at which the mean's half-width reaches
  T, ``n0 = (z * sigma_between / T)^2`` with ``sigma_between`` the std of per-image means (largest
  channel), corrected for the finite population ``n0 / (1 + n0 / N)``. The std interval can need
  more images than the mean's (``predicted_n`` is for the mean only); checks happen every batch,
  so the run overshoots by up to one batch;
* ``images_per_s`` of the whole run (decode with ``WORKERS`` processes + per-image sums);
* whether the intervals covered the exact values (one run: a sanity check, not a coverage
  measurement -- tests/test_sampling_coverage.py measures coverage).

The corpus's ``sigma_between`` is printed: real photo collections have about 0.13 (ImageNet's
per-image means spread that much), so they need (0.13 / sigma_between)^2 times as many images.

    pytest bench/bench_sampling.py --benchmark-enable -s
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from benchlib import TINY, jpeg_corpus

N_FILES = int(os.environ.get("GPUSTATS_BENCH_SAMPLE", 48 if TINY else 400))
SIZE = (64, 48) if TINY else (500, 375)
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = 0 if TINY else min(8, CPUS)
TOLERANCES = (0.02, 0.01, 0.005)
REAL_PHOTOS_SIGMA_BETWEEN = 0.13


@pytest.fixture(scope="session")
def sample_corpus() -> list[Path]:
    return jpeg_corpus(N_FILES, SIZE)


@pytest.fixture(scope="session")
def population(sample_corpus) -> dict:
    """Exact pixel mean/std and the std of per-image means (numpy float64 over every file)."""
    from gpustats.sources import decode_image

    sums, squares, counts, means = [], [], [], []
    for path in sample_corpus:
        x = decode_image(path).reshape(-1, 3).astype(np.float64) / 255.0
        sums.append(x.sum(axis=0))
        squares.append((x * x).sum(axis=0))
        counts.append(x.shape[0])
        means.append(x.mean(axis=0))
    n = float(np.sum(counts))
    mean = np.sum(sums, axis=0) / n
    std = np.sqrt(np.sum(squares, axis=0) / n - mean**2)
    sigma_between = np.std(means, axis=0, ddof=1)
    print(f"\ncorpus: {len(sample_corpus)} files {SIZE[0]}x{SIZE[1]}; sigma_between (std of per-image means) = "
          f"{np.round(sigma_between, 4).tolist()} (real photos: about {REAL_PHOTOS_SIGMA_BETWEEN})")
    return {"mean": mean, "std": std, "sigma_between": sigma_between, "N": len(sample_corpus)}


@pytest.mark.parametrize("tolerance", TOLERANCES, ids=[f"T{t:g}" for t in TOLERANCES])
def test_sampling_images_needed(benchmark, sample_corpus, population, tolerance):
    from gpustats.sampling import estimate_stats

    root = sample_corpus[0].parent
    results = []

    def run():
        results.append(estimate_stats(root, tolerance=tolerance, seed=len(results), workers=WORKERS, batch_size=16,
                                      device="cpu"))

    start = time.perf_counter()
    benchmark.pedantic(run, rounds=3 if benchmark.enabled else 1, iterations=1)
    elapsed = time.perf_counter() - start
    z = NormalDist().inv_cdf(0.975)
    n0 = float((z * population["sigma_between"].max() / tolerance) ** 2)
    predicted = n0 / (1 + n0 / population["N"])
    used = [r.units_visited for r in results]
    eps = 1e-9  # an exhausted run has zero-width intervals: allow for the summation order
    covered = [bool(np.all((r.mean_ci[0] - eps <= population["mean"]) & (population["mean"] <= r.mean_ci[1] + eps))
                    and np.all((r.std_ci[0] - eps <= population["std"]) & (population["std"] <= r.std_ci[1] + eps)))
               for r in results]
    info = {
        "tolerance": tolerance, "population": population["N"],
        "sigma_between": population["sigma_between"].tolist(),
        "predicted_n": round(predicted, 1), "images_used": used,
        "stopped_because": [r.stopped_because for r in results],
        "images_per_s": round(sum(used) / elapsed, 1), "workers": WORKERS, "covered": covered,
        "real_photos_predicted_n": round((z * REAL_PHOTOS_SIGMA_BETWEEN / tolerance) ** 2, 1),
    }
    benchmark.extra_info.update(info)
    print(f"\nT={tolerance:g}: used {used} (predicted {predicted:.0f} for the mean; real photos: "
          f"{info['real_photos_predicted_n']:.0f} of an infinite population), {info['images_per_s']} images/s, "
          f"covered {covered}")
    for r in results:
        assert r.stopped_because in ("tolerance", "exhausted")
        assert r.stopped_because == "exhausted" or np.all(r.half_widths["mean"] <= tolerance)
