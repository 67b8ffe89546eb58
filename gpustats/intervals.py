"""Estimates from a random sample of images: the ratio estimator, its intervals, and the result.

Pure functions and a result type, used by :mod:`gpustats.sampling` (which visits the images in
the order :mod:`gpustats.sample_design` draws). Images (dataset items, files), not pixels, are the
sampling units: for unit ``i`` we keep, per channel and in float64, ``n_i`` pixels, ``s_i`` their
sum and ``m2_i`` their within-image centred sum of squares (see :mod:`gpustats.sampling`).

Estimators and their intervals (what the module computes, and why)
-------------------------------------------------------------------
The target is the *pixel-weighted* population statistic that :func:`gpustats.compute_stats`
returns (mean over all pixels, population std with ddof=0). With images of different sizes the
sample mean is a **ratio estimator** of two totals. The units are drawn by **stratified random
sampling** (one stratum, i.e. simple random sampling, when image sizes are unknown): stratum ``h``
holds ``N_h`` units of which ``k_h`` were visited, each of weight ``w_i = N_h / k_h``. The
combined ratio estimator and its linearization (first-order Taylor) variance are those of
Cochran, *Sampling Techniques*, 3rd ed. (Wiley, 1977), §6.11 (§6.3-6.4 for one stratum)::

    X = sum w_i n_i,   R = sum w_i s_i / X,   d_i = s_i - R n_i
    V(R) = (1 / X^2) * sum_h N_h^2 (1 - k_h/N_h) / k_h * s_h^2(d)

where ``s_h^2(d)`` is the sample variance of the ``d_i`` of stratum ``h``. The pooled pixel
variance is Chan's merge of the units with counts ``w_i n_i`` (:func:`gpustats.numerics.chan_merge_rows`,
the one merge rule), ``sigma^2 = sum w_i u_i / X + V(R)`` with ``u_i = m2_i + d_i^2 / n_i``
(centring at the estimated mean instead of the true one loses ``V(R)``: it is added back). Its
standard error is the **delta method** on the ratio estimators (Särndal, Swensson & Wretman,
*Model Assisted Survey Sampling*, Springer 1992, §5.5-5.7)::

    e_i = u_i - sigma^2 n_i,   V(sigma^2) = (1 / X^2) * sum_h N_h^2 (1 - k_h/N_h) / k_h * s_h^2(e)
    se(sigma) = sqrt(V(sigma^2)) / (2 sigma)

The delta method was chosen over a bootstrap over per-image sufficient statistics because it is
closed-form, O(k) per check (the check runs after every batch) and deterministic; both are
first-order equivalent for smooth statistics (Shao & Tu, *The Jackknife and Bootstrap*, 1995, §3).

Intervals are ``estimate ± t * se`` with ``t`` the Student-t quantile at the **effective degrees
of freedom** of the variance estimate: Satterthwaite's combination of the strata (Cochran §5.4,
eq. 5.16), each stratum's ``k_h - 1`` reduced for heavy tails by the sample kurtosis ``b_h`` of its
``d_i`` (or ``e_i``), since ``Var(s^2) / sigma^4 = 2 / (k - 1) + (b - 3) / k``::

    nu_h = 1 / (1 / (k_h - 1) + max(b_h - 3, 0) / (2 k_h))
    nu   = (sum_h a_h s_h^2)^2 / sum_h (a_h s_h^2)^2 / nu_h,    a_h = N_h^2 (1 - k_h/N_h) / k_h

So ``nu`` is small when a few images dominate the variance estimate (a few large, unusual
images in the sample); :mod:`gpustats.sampling` stops on the tolerance only once ``nu`` reaches
``min_images / 2`` for every channel's mean and std, and reports the intervals with that ``t``.
The **finite-population correction** ``1 - k_h/N_h`` is applied whenever the population size is
known (map-style datasets, file lists); a stratum visited entirely adds no variance, and an
exhausted population gives half-widths exactly 0.

Why strata: with simple random sampling no small sample can promise coverage when a few images
hold many of the pixels (1% of the images 100 times larger hold half the pixels; a sample of 64
misses them all with probability 0.53 and then looks homogeneous, with a narrow interval around
the wrong value). Where each unit's size is known before it is read (files: their size in bytes;
a list of arrays: their pixel counts; or ``sizes=``), :mod:`gpustats.sample_design` puts the units
in strata by size (powers of two) and visits them in proportion to each stratum's total size, so
the few large images are read first and are then counted, not estimated. Where sizes are unknown
the result says that its intervals assume the images not yet seen are like those seen.

Stopping as soon as the half-width is below ``tolerance`` is the fixed-width sequential interval
of Chow & Robbins, "On the asymptotic theory of fixed-width sequential confidence intervals for
the mean", *Ann. Math. Statist.* 36 (1965) 457-462: its coverage tends to the nominal level as the
tolerance shrinks; ``bench/bench_coverage.py`` measures it on skewed and homogeneous populations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .batches import InputError
from .numerics import frozen

__all__ = ["SampledStats", "UnitSums", "ratio_intervals", "t_quantile", "exact_result", "sampled_stats", "may_stop",
           "next_check", "combine_rows", "STOP_REASONS"]

#: Values of :attr:`SampledStats.stopped_because`.
STOP_REASONS = ("tolerance", "max_images", "exhausted")


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz; Press et al.,
    *Numerical Recipes*, 3rd ed., §6.4), to about 1e-14."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 400):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def _t_two_sided(t: float, df: float) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (any real df > 0)."""
    return 1.0 - _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(confidence: float, df: Any) -> np.ndarray:
    """Two-sided Student-t quantile ``t`` with ``P(|T| <= t) = confidence``, element-wise over ``df``
    (real, > 0; ``inf``: the normal quantile). For df >= 5 the Cornish-Fisher expansion of Hill
    (1970, Comm. ACM 13:617; Abramowitz & Stegun 26.7.5), within 1e-4 of the exact value; below,
    the exact value by bisection on the distribution function.

    >>> round(float(t_quantile(0.95, 49)), 4), round(float(t_quantile(0.95, 1)), 3)
    (2.0096, 12.706)
    """
    z = _z(confidence)
    shape = np.shape(df)
    df = np.atleast_1d(np.asarray(df, dtype=np.float64))
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.isfinite(df), z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4, z)
    for idx in zip(*np.nonzero(df < 5)):
        lo, hi = z, 1e6
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _t_two_sided(mid, float(df[idx])) < confidence else (lo, mid)
        out[idx] = 0.5 * (lo + hi)
    return out.reshape(shape)


def _linearized_variance(z: np.ndarray, strata: np.ndarray, factor: np.ndarray, k_h: np.ndarray,
                         unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum_h a_h s_h^2(z)`` ([C]) and its effective degrees of freedom (module docstring).

    ``z`` [k, C] the linearized variable, ``strata`` [k] stratum of each unit, ``factor`` [H]
    ``a_h = N_h^2 (1 - f_h) / k_h``, ``k_h`` [H] units visited per stratum, ``unknown`` [H] strata
    whose variance cannot be estimated yet (not visited, or one unit of several): the variance is
    then infinite (a run cannot stop on it)."""
    channels = z.shape[1]
    H = k_h.shape[0]

    def per_stratum(v: np.ndarray) -> np.ndarray:  # [H, C] sums over each stratum's units
        if H == 1:
            return v.sum(axis=0)[None, :]
        return np.stack([np.bincount(strata, weights=v[:, c], minlength=H) for c in range(channels)], axis=1)

    centred = z - (per_stratum(z) / np.maximum(k_h, 1)[:, None])[strata]
    square = centred * centred
    s2, s4 = per_stratum(square), per_stratum(square * square)
    kh = k_h[:, None].astype(np.float64)
    live = (factor > 0)[:, None] & np.ones((1, channels), bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        part = np.where(live & (kh >= 2), factor[:, None] * s2 / np.maximum(kh - 1, 1), 0.0)
        part = np.where(unknown[:, None], np.inf, part)
        kurtosis = np.where(s2 > 0, kh * s4 / (s2 * s2), 3.0)
        nu = 1.0 / (1.0 / np.maximum(kh - 1, 1) + np.maximum(kurtosis - 3.0, 0.0) / (2.0 * kh))
        total = part.sum(axis=0)
        denom = np.where(part > 0, part * part / nu, 0.0).sum(axis=0)
        df = np.where(np.isinf(total), 1.0, np.where(denom > 0, total * total / denom, np.inf))
    return total, df


def ratio_intervals(
    count: np.ndarray,
    total: np.ndarray,
    m2: np.ndarray,
    *,
    population_size: int | None = None,
    confidence: float = 0.95,
    strata: np.ndarray | None = None,
    stratum_sizes: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Point estimates, standard errors and intervals from per-unit sufficient statistics.

    ``count`` [k] pixels per unit (0 for a unit without pixels), ``total`` [k, C] sums, ``m2``
    [k, C] within-unit centred sums of squares, for a stratified random sample (without
    replacement): ``strata`` [k] the stratum of each unit and ``stratum_sizes`` [H] the units of
    each stratum in the population. Without them: one stratum of ``population_size`` units
    (``None``: unknown, no finite-population correction). Returns ``mean``, ``std``, ``se_mean``,
    ``se_std``, ``df_mean``, ``df_std`` (effective degrees of freedom) and ``half_mean``,
    ``half_std`` (``t * se``), all [C] float64. See the module docstring for the formulas.

    >>> r = ratio_intervals(np.array([4.0, 4.0]), np.array([[2.0], [2.0]]), np.array([[1.0], [1.0]]))
    >>> float(r["mean"][0]), float(r["std"][0]), float(r["se_mean"][0])
    (0.5, 0.5, 0.0)
    """
    from .numerics import Moments, chan_merge_rows

    count = np.asarray(count, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    m2 = np.asarray(m2, dtype=np.float64)
    k = count.shape[0]
    if k == 0 or count.sum() == 0:
        raise InputError("no pixels were sampled: every visited image was empty or bad")
    if strata is None:
        strata = np.zeros(k, np.int64)
        stratum_sizes = None if population_size is None or population_size <= 0 else np.array([population_size])
    strata = np.asarray(strata, dtype=np.int64)
    k_h = np.bincount(strata, minlength=0 if stratum_sizes is None else len(stratum_sizes)).astype(np.float64)
    if stratum_sizes is None:  # unknown population: weights 1, no correction
        n_h, fpc = k_h, np.ones_like(k_h)
    else:
        n_h = np.maximum(np.asarray(stratum_sizes, dtype=np.float64), k_h)
        fpc = np.where(n_h > 0, 1.0 - k_h / np.where(n_h > 0, n_h, 1.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight_h = np.where(k_h > 0, n_h / np.where(k_h > 0, k_h, 1.0), 0.0)
        factor = np.where(k_h > 0, n_h * n_h * fpc / np.where(k_h > 0, k_h, 1.0), 0.0)
    unknown = ((k_h == 0) & (n_h > 0)) | ((k_h == 1) & (fpc > 0))
    w = weight_h[strata]
    n_col = count[:, None]
    x_total = float((w * count).sum())
    # the pooled estimates: Chan's merge of the units, each counted w_i n_i times
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_mean = np.where(n_col > 0, total / np.where(n_col > 0, n_col, 1.0), 0.0)
    pooled = chan_merge_rows(Moments(np.broadcast_to((w * count)[:, None], total.shape), unit_mean,
                                     w[:, None] * m2, np.zeros_like(unit_mean)))
    mean = pooled.mean
    plain_var = np.maximum(pooled.m2 / x_total, 0.0)
    d = total - mean * n_col  # = n_i (mean_i - R)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = m2 + np.where(n_col > 0, d * d / np.where(n_col > 0, n_col, 1.0), 0.0)  # sum over unit i of (x - R)^2
    var_sum, df_mean = _linearized_variance(d, strata, factor, k_h, unknown)
    var_mean = var_sum / (x_total * x_total)
    var = plain_var + np.where(np.isfinite(var_mean), var_mean, 0.0)
    e = u - var * n_col
    var_var = _linearized_variance(e, strata, factor, k_h, unknown)
    se_var, df_std = np.sqrt(var_var[0]) / x_total, var_var[1]
    std = np.sqrt(var)
    se_mean = np.sqrt(var_mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        # sigma == 0: every sampled pixel equals the mean, so e_i == 0 and se_var is 0 too
        se_std = np.where(std > 0, se_var / (2.0 * np.where(std > 0, std, 1.0)), se_var)
    return {"mean": mean, "std": std, "se_mean": se_mean, "se_std": se_std, "df_mean": df_mean, "df_std": df_std,
            "half_mean": t_quantile(confidence, df_mean) * se_mean, "half_std": t_quantile(confidence, df_std) * se_std}


def next_check(k: int) -> int:
    """Units a run must have visited before its next stopping check, having checked at ``k``: 2% more
    (a check costs O(k), so a run of ``K`` images spends O(K) on them in all, and stops at most 2%
    (or one batch) after the first point at which it could have)."""
    return k + k // 50


def may_stop(r: dict, tolerance: float, min_images: int) -> bool:
    """The stopping rule on one :func:`ratio_intervals` result: every channel's mean and std half-width
    is ``<= tolerance`` and their effective degrees of freedom reach ``min_images / 2`` (the variance
    estimates are not dominated by a few images: one image holding most of a sample's spread brings
    them near 2; normal data gives ``k - 1``, less its sampling noise; module docstring)."""
    settled = np.all(r["df_mean"] >= min_images / 2) and np.all(r["df_std"] >= min_images / 2)
    return bool(settled and np.all(r["half_mean"] <= tolerance) and np.all(r["half_std"] <= tolerance))


def _frozen(arr: Any) -> np.ndarray:
    return frozen(arr, np.float64).reshape(-1)  # a view of a read-only array is read-only


@dataclass(frozen=True, eq=False, repr=False)
class SampledStats:
    """Per-channel mean/std *estimated* from a random subset of images, with confidence intervals.

    ``mean``/``std`` [C] (pixel-weighted, ddof=0, on ``scale``); ``mean_ci``/``std_ci``: ``(lower,
    upper)`` arrays; ``half_widths``: ``{"mean": [C], "std": [C]}``; ``images_used``: units visited
    that contributed pixels; ``units_visited``: dataset items / files visited (bad files included);
    ``units``: what a unit is ("files", "items", "images"); ``population_size``: ``N`` when known;
    ``stopped_because``: one of :data:`STOP_REASONS`; ``is_estimate``: False only when the whole
    population was visited (then the values are exact and the half-widths 0). ``bad_files``:
    ``(path, reason)`` of undecodable files visited. ``sizes_known``: the units were stratified by
    size (``strata`` strata, :mod:`gpustats.sample_design`); when False the intervals assume that
    the images not seen are like those seen (no few unseen images holding many of the pixels).

    >>> import numpy as np
    >>> from gpustats.sampling import estimate_stats
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(200)]
    >>> est = estimate_stats(images, tolerance=0.01, device="cpu", layout="HWC")
    >>> est.stopped_because, est.is_estimate, est.units_visited < est.population_size
    ('tolerance', True, True)
    >>> bool(np.all(est.mean_ci[0] <= est.mean) and np.all(est.mean <= est.mean_ci[1]))
    True
    >>> exact = estimate_stats(images[:50], tolerance=0.0, device="cpu", layout="HWC")  # reads every image
    >>> exact.is_estimate, exact.stopped_because, exact.half_widths["mean"].tolist()
    (False, 'exhausted', [0.0, 0.0, 0.0])
    """

    mean: np.ndarray
    std: np.ndarray
    mean_ci: tuple[np.ndarray, np.ndarray]
    std_ci: tuple[np.ndarray, np.ndarray]
    half_widths: dict[str, np.ndarray]
    images_used: int
    units_visited: int
    pixels_used: int
    population_size: int | None
    stopped_because: str
    confidence: float
    tolerance: float
    is_estimate: bool
    scale: float
    seed: int
    elapsed_s: float = 0.0
    bad_files: tuple[tuple[str, str], ...] = ()
    units: str = "items"
    sizes_known: bool = False
    strata: int = 1

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def images_per_second(self) -> float:
        return self.units_visited / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def normalize_args(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` as plain lists, ready for ``transforms.Normalize(mean, std)``."""
        return [float(v) for v in self.mean], [float(v) for v in self.std]

    def counted(self) -> str:
        """What was read, e.g. ``"320 of 612 files visited (319 images, 1 bad file)"``: the one wording of
        every report (table, Normalize comment, JSON note)."""
        of = f" of {self.population_size}" if self.population_size is not None else ""
        bad = len(self.bad_files)
        other = self.units_visited - self.images_used - bad  # items of no image
        parts = [f"{self.images_used} image" + ("s" if self.images_used != 1 else "")]
        parts += [f"{bad} bad file" + ("s" if bad != 1 else "")] if bad else []
        parts += [f"{other} without pixels"] if other > 0 else []
        return f"{self.units_visited}{of} {self.units} visited ({', '.join(parts)})"

    def describe(self) -> str:
        """One line saying what kind of number this is."""
        if not self.is_estimate:
            return f"EXACT: every unit of the population was read: {self.counted()}"
        why = {"tolerance": f"every half-width <= {self.tolerance:g}",
               "max_images": "max_images reached (the tolerance may not be met)"}.get(self.stopped_because, self.stopped_because)
        design = (f"stratified by size ({self.strata} strata)" if self.sizes_known and self.strata > 1 else
                  "simple random sample" + ("" if self.sizes_known else
                                            " (sizes unknown: the intervals assume the unseen images are like the seen)"))
        return (f"ESTIMATE from a random subset: {self.counted()}; seed {self.seed}, {design}; "
                f"{self.confidence:.0%} confidence intervals; stopped: {why}")

    def to_dict(self) -> dict:
        """Plain-JSON summary (the CLI's JSON output)."""
        return {
            "is_estimate": self.is_estimate,
            "mean": self.mean.tolist(), "std": self.std.tolist(),
            "mean_ci": [self.mean_ci[0].tolist(), self.mean_ci[1].tolist()],
            "std_ci": [self.std_ci[0].tolist(), self.std_ci[1].tolist()],
            "half_widths": {k: v.tolist() for k, v in self.half_widths.items()},
            "confidence": self.confidence, "tolerance": self.tolerance,
            "images_used": self.images_used, "units_visited": self.units_visited, "units": self.units,
            "pixels_used": self.pixels_used, "population_size": self.population_size,
            "stopped_because": self.stopped_because, "seed": self.seed, "scale": self.scale,
            "sizes_known": self.sizes_known, "strata": self.strata, "elapsed_s": self.elapsed_s,
            "bad_files": [{"path": p, "reason": r} for p, r in self.bad_files],
            "note": self.describe(),
        }

    def __repr__(self) -> str:
        def fmt(values: np.ndarray, half: np.ndarray) -> str:
            return "[" + ", ".join(f"{v:.4f} ± {h:.4f}" for v, h in zip(values, half)) + "]"

        return (f"SampledStats({self.describe()}\n"
                f"  mean={fmt(self.mean, self.half_widths['mean'])},\n"
                f"  std={fmt(self.std, self.half_widths['std'])})")


class UnitSums:
    """The sampling units' sufficient statistics: growing per-unit arrays (count [k], total [k, C], m2 [k, C]);
    amortized O(1) appends. For integer data also the exact totals of every unit appended
    (``int_sums``: Python ints per channel, raw units), from which an exhausted population's answer is
    rounded once, like :func:`gpustats.compute_stats`'s."""

    def __init__(self) -> None:
        self.k = 0
        self._count = np.zeros(0)
        self._total: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self.int_sums: tuple[list[int], list[int]] | None = None
        self.all_integer = True  # every unit with pixels came with exact totals

    def append(self, count: np.ndarray, total: np.ndarray, m2: np.ndarray, ints: Any = None) -> None:
        rows = count.shape[0]
        if self._total is None:
            cap = max(64, rows)
            self._count = np.zeros(cap)
            self._total = np.zeros((cap, total.shape[1]))
            self._m2 = np.zeros((cap, total.shape[1]))
        need = self.k + rows
        if need > self._count.shape[0]:
            cap = max(need, 2 * self._count.shape[0])
            self._count = np.resize(self._count, cap)
            self._total = np.resize(self._total, (cap, self._total.shape[1]))
            self._m2 = np.resize(self._m2, (cap, self._m2.shape[1]))
        self._count[self.k:need] = count
        self._total[self.k:need] = total
        self._m2[self.k:need] = m2
        self.k = need
        if ints is not None:
            s, q = ([int(v) for v in np.asarray(a, dtype=object).sum(axis=0)] for a in ints)
            old = self.int_sums or ([0] * len(s), [0] * len(q))
            self.int_sums = ([a + b for a, b in zip(old[0], s)], [a + b for a, b in zip(old[1], q)])
        elif np.any(count > 0):
            self.all_integer = False

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._count[:self.k], self._total[:self.k], self._m2[:self.k]

    @property
    def images(self) -> int:
        return int(np.count_nonzero(self._count[:self.k]))

    @property
    def channels(self) -> int:
        return 0 if self._total is None else int(self._total.shape[1])


def exact_result(sums: UnitSums, scale: float) -> dict[str, np.ndarray]:
    """Mean and std of a population every unit of which was visited, by the rules of the exact pass:
    integer data from its exact totals, rounded once (:func:`gpustats.numerics.exact_moments`, as
    :meth:`gpustats.stats.ChannelStats.finalize`: the same bits as :func:`gpustats.compute_stats`);
    float data by Chan's merge of the units (:func:`gpustats.numerics.chan_merge_rows`). Half-widths 0."""
    from .numerics import Moments, chan_merge_rows, exact_moments

    count, total, m2 = sums.arrays()
    pixels = int(count.sum())
    if sums.all_integer and sums.int_sums is not None:
        s, q = sums.int_sums
        mean, var = exact_moments([pixels] * len(s), s, q, ddof=0, scale=scale)
    else:
        n = np.broadcast_to(count[:, None], total.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit_mean = np.where(n > 0, total / np.where(n > 0, n, 1.0), 0.0)
        merged = chan_merge_rows(Moments(n.astype(np.int64), unit_mean, m2, np.zeros_like(unit_mean)))
        mean, var = merged.mean, merged.m2 / pixels
    zeros = np.zeros_like(mean)
    return {"mean": mean, "std": np.sqrt(np.maximum(var, 0.0)), "half_mean": zeros, "half_std": zeros}


def sampled_stats(r: dict, sums: UnitSums, *, exact: bool, population: int | None, stopped: str, confidence: float,
                  tolerance: float, scale: float, seed: int, bad: list, sizes_known: bool, strata: int,
                  elapsed_s: float, units: str = "items") -> SampledStats:
    """The :class:`SampledStats` of a run from its last :func:`ratio_intervals` (or :func:`exact_result`)."""
    mean, std, half_mean, half_std = r["mean"], r["std"], r["half_mean"], r["half_std"]
    return SampledStats(
        mean=_frozen(mean), std=_frozen(std),
        mean_ci=(_frozen(mean - half_mean), _frozen(mean + half_mean)),
        std_ci=(_frozen(np.maximum(std - half_std, 0.0)), _frozen(std + half_std)),
        half_widths={"mean": _frozen(half_mean), "std": _frozen(half_std)},
        images_used=sums.images, units_visited=sums.k, pixels_used=int(sums.arrays()[0].sum()),
        population_size=population, stopped_because=stopped, confidence=float(confidence),
        tolerance=float(tolerance), is_estimate=not exact, scale=float(scale), seed=int(seed),
        elapsed_s=elapsed_s, bad_files=tuple(bad), units=units, sizes_known=sizes_known, strata=strata,
    )


def combine_rows(count: np.ndarray, total: np.ndarray, m2: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Merge several images' (count, sum, M2) into one unit (:func:`gpustats.numerics.chan_merge_rows`)."""
    from .numerics import Moments, chan_merge_rows

    n = np.broadcast_to(count[:, None], total.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.where(n > 0, n, 1.0), 0.0)
    merged = chan_merge_rows(Moments(n.astype(np.int64), mean, m2, np.zeros_like(mean)))
    return float(merged.count[0]), merged.mean * merged.count, merged.m2
