"""Coverage of the sampling intervals on skewed and homogeneous populations (issue 25, item 1).

Five populations of PNG files (written once to a temporary folder), their exact per-channel
mean/std computed with numpy float64 over every pixel:

* ``skew100``: 1% of the images 100x larger (80x80 against 8x8 pixels) and brighter (mean about
  0.83 against 0.23): they hold half the pixels;
* ``skew30``: 0.5% of the images about 30x larger (44x44) and brighter;
* ``skew10``: 1% of the images about 10x larger (25x25) and brighter;
* ``homog_equal``: every image 16x16, per-image means spread like photos (sd about 0.13);
* ``homog_mixed``: sides 8..22 pixels (an 8-fold range of pixel counts), the same spread.

For each population, route and tolerance, ``RUNS`` seeded runs of the stopping rule of
:func:`gpustats.sampling.estimate_stats` (same visiting order, strata, estimator and stopping rule,
on the images' per-image sums computed once; ``check_direct_path_equals_estimate_stats`` verifies
on real runs that this is what estimate_stats does) record whether each channel's 95% interval of
the mean and of the std holds the exact value. Routes:

* ``files``: what ``gpustats stats --sample-tolerance`` and ``estimate_stats(folder)`` do: strata
  by file size in bytes (:mod:`gpustats.sample_design`);
* ``no_sizes``: a dataset whose image sizes are unknown: simple random sampling (its result says
  that its intervals assume the unseen images are like the seen ones).

``fixed`` rows use no stopping rule (``max_images`` images, tolerance 0) and measure the interval
alone. Coverage is reported per run as "every channel covered" (the strictest) and per channel
(averaged over channels), each with its binomial standard error.

    python bench/bench_coverage.py [--runs 200] [--out bench/results/FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gpustats.intervals import may_stop, next_check, ratio_intervals
from gpustats.sample_design import size_strata, unit_sizes, visiting_order

N_IMAGES = 5000
MIN_IMAGES = 30
BATCH = 64
TOLERANCES = (0.02, 0.01)
FIXED = (100, 400)


def _image(rng: np.random.Generator, side: tuple[int, int], centre: float) -> np.ndarray:
    mu = 255 * np.clip(centre + 0.13 * rng.standard_normal(3), 0.02, 0.98)
    sd = rng.uniform(15, 60, size=3)
    return np.clip(np.rint(rng.normal(mu, sd, size=(*side, 3))), 0, 255).astype(np.uint8)


def make_population(kind: str, root: Path, seed: int = 0, n_images: int = N_IMAGES) -> list[str]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    big = {"skew100": (0.01, (80, 80)), "skew30": (0.005, (44, 44)), "skew10": (0.01, (25, 25))}.get(kind)
    n_big = 0 if big is None else max(1, int(round(big[0] * n_images)))
    paths = []
    for i in range(n_images):
        if big is not None:
            side, centre = (big[1], 0.83) if i % (n_images // n_big) == 0 and i // (n_images // n_big) < n_big \
                else ((8, 8), 0.23)
        elif kind == "homog_equal":
            side, centre = (16, 16), 0.5
        else:
            side, centre = tuple(int(v) for v in rng.integers(8, 23, size=2)), 0.5
        path = root / f"{i:05d}.png"
        Image.fromarray(_image(rng, side, centre)).save(path)
        paths.append(str(path))
    return paths


def unit_table(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image: pixels, sums and centred M2 on the 0-1 scale (numpy float64), and the exact mean/std."""
    count, total, m2, sq = [], [], [], []
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
        count.append(x.shape[0])
        total.append(x.sum(axis=0))
        m2.append(((x - x.mean(axis=0)) ** 2).sum(axis=0))
        sq.append(x)
    allpx = np.concatenate(sq)
    return np.array(count, float), np.array(total), np.array(m2), allpx.mean(axis=0), allpx.std(axis=0)


def direct_run(table, sizes, seed: int, tolerance: float, cap: int | None = None) -> tuple[dict, int]:
    """estimate_stats' visiting order, strata, estimator and stopping rule on the precomputed sums."""
    count, total, m2 = table[:3]
    n = count.shape[0]
    order = visiting_order(n, sizes, seed)
    strata = {}
    if sizes is not None:
        labels, stratum_sizes = size_strata(sizes)
        strata = {"stratum_sizes": stratum_sizes}
    stop = n if cap is None else min(cap, n)
    k = check_at = 0
    while True:
        k = min(k + BATCH, stop)
        if k < stop and (k < MIN_IMAGES or k < check_at):
            continue
        check_at = next_check(k)
        idx = order[:k]
        extra = {} if not strata else {**strata, "strata": labels[idx]}
        r = ratio_intervals(count[idx], total[idx], m2[idx], population_size=n, **extra)
        if k >= stop or may_stop(r, tolerance, MIN_IMAGES):
            return r, k


def check_direct_path_equals_estimate_stats(paths, table, sizes) -> None:
    from gpustats.sampling import estimate_stats

    for seed in (0, 1):
        r, k = direct_run(table, sizes, seed, 0.02)
        est = estimate_stats(paths, tolerance=0.02, seed=seed, batch_size=BATCH, device="cpu")
        assert est.units_visited == k, (est.units_visited, k)
        np.testing.assert_allclose(est.mean, r["mean"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(est.half_widths["std"], r["half_std"], rtol=1e-9)


def coverage(table, sizes, runs: int, tolerance: float, cap: int | None) -> dict:
    truth_mean, truth_std = table[3], table[4]
    every_mean = every_std = 0
    chan_mean = np.zeros(3)
    chan_std = np.zeros(3)
    used = []
    worst = None
    for seed in range(runs):
        r, k = direct_run(table, sizes, seed, tolerance, cap)
        cm = np.abs(r["mean"] - truth_mean) <= r["half_mean"]
        cs = np.abs(r["std"] - truth_std) <= r["half_std"]
        every_mean += bool(cm.all())
        every_std += bool(cs.all())
        chan_mean += cm
        chan_std += cs
        used.append(k)
        miss = float(np.max(np.abs(r["mean"] - truth_mean) / np.maximum(r["half_mean"], 1e-300)))
        if worst is None or miss > worst["ratio"]:
            worst = {"seed": seed, "images": k, "ratio": miss, "mean": r["mean"].tolist(),
                     "half_mean": r["half_mean"].tolist()}

    def rate(hits: float) -> dict:
        p = hits / runs
        return {"coverage": p, "se": float(np.sqrt(p * (1 - p) / runs))}

    return {"runs": runs, "tolerance": tolerance, "max_images": cap,
            "mean_every_channel": rate(every_mean), "std_every_channel": rate(every_std),
            "mean_per_channel": rate(float(chan_mean.mean())), "std_per_channel": rate(float(chan_std.mean())),
            "images_used": {"median": float(np.median(used)), "min": int(np.min(used)), "max": int(np.max(used))},
            "worst_mean_miss": worst}


def measure(kinds: list[str], runs: int, n_images: int = N_IMAGES, quiet: bool = False) -> dict:
    """The results document: every population of ``kinds``, ``runs`` seeded runs per setting."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    doc = {"what": "coverage of nominal 95% sampling intervals (bench/bench_coverage.py)", "commit": commit,
           "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
           "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d"), "runs": runs,
           "n_images": n_images, "min_images": MIN_IMAGES, "batch": BATCH, "populations": {}}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="gpustats-coverage-") as tmp:
        for kind in kinds:
            paths = make_population(kind, Path(tmp) / kind, n_images=n_images)
            table = unit_table(paths)
            byte_sizes = unit_sizes(paths)
            check_direct_path_equals_estimate_stats(paths, table, byte_sizes)
            labels, per_stratum = size_strata(byte_sizes)
            big = table[0] > np.median(table[0]) * 2
            entry = {"pixels_share_of_large_images": float(table[0][big].sum() / table[0].sum()),
                     "exact_mean": table[3].tolist(), "exact_std": table[4].tolist(),
                     "strata_by_file_size": per_stratum.tolist(), "results": []}
            for route, sizes in (("files", byte_sizes), ("no_sizes", None)):
                for tol in TOLERANCES:
                    entry["results"].append({"route": route, "rule": "stop at tolerance",
                                             **coverage(table, sizes, runs, tol, None)})
                for cap in FIXED:
                    entry["results"].append({"route": route, "rule": "fixed sample",
                                             **coverage(table, sizes, runs, 0.0, cap)})
            doc["populations"][kind] = entry
            for res in entry["results"] if not quiet else ():
                print(f"{kind:12s} {res['route']:9s} {res['rule']:17s} tol={res['tolerance']:<5g} "
                      f"cap={str(res['max_images']):5s} mean {res['mean_every_channel']['coverage']:.3f} "
                      f"({res['mean_per_channel']['coverage']:.3f}/ch) std {res['std_every_channel']['coverage']:.3f} "
                      f"({res['std_per_channel']['coverage']:.3f}/ch) images {res['images_used']['median']:.0f}",
                      flush=True)
    doc["elapsed_s"] = time.time() - started
    return doc


def test_coverage_bench_runs_tiny():
    """``pytest bench/`` smoke run (tests/test_bench_smoke.py): one small population, a few runs."""
    doc = measure(["skew100"], runs=2, n_images=100, quiet=True)
    results = doc["populations"]["skew100"]["results"]
    assert len(results) == 2 * (len(TOLERANCES) + len(FIXED)) and all(r["runs"] == 2 for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("--populations", default="skew100,skew30,skew10,homog_equal,homog_mixed")
    args = parser.parse_args()
    doc = measure(args.populations.split(","), args.runs)
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
