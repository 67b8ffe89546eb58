"""What the sampling tests share (tests/test_sampling.py, tests/test_sampling_coverage.py): heterogeneous
synthetic populations, their exact statistics (numpy float64 over every pixel), per-image sums computed
directly with numpy, and the stopping rule of estimate_stats replayed on them.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpustats.intervals import may_stop, next_check
from gpustats.sample_design import size_strata, sizes_of_items, visiting_order
from gpustats.sampling import ratio_intervals

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
    return {"images": images, "mean": mean, "std": std, "table": unit_table(images), "sizes": sizes_of_items(images)}


def direct_sequential(table, population_size, seed, tolerance, batch_size=16, min_images=30, cap=None,
                      confidence=0.95, sizes=None):
    """The stopping rule of estimate_stats on precomputed per-image sums: the same visiting order and
    strata (``sizes``: what estimate_stats measures, e.g. sizes_of_items(images); None: unknown), the
    same checks (every batch, at most every 2% more images) and stopping rule."""
    count, total, m2 = table
    order = visiting_order(population_size, sizes, seed)
    design = {}
    if sizes is not None:
        labels, stratum_sizes = size_strata(sizes)
    stop = population_size if cap is None else min(cap, population_size)
    k = check_at = 0
    while True:
        k = min(k + batch_size, stop)
        if k < stop and (k < min_images or k < check_at):
            continue
        check_at = next_check(k)
        idx = order[:k]
        if sizes is not None:
            design = {"strata": labels[idx], "stratum_sizes": stratum_sizes}
        r = ratio_intervals(count[idx], total[idx], m2[idx], population_size=population_size, confidence=confidence,
                            **design)
        if k >= stop or may_stop(r, tolerance, min_images):
            return r, k
