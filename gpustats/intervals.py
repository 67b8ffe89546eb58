"""Estimates from a random sample of images: the ratio estimator, its intervals, and the result.

Pure functions and a result type, used by :mod:`gpustats.sampling` (which visits the images).
Images (dataset items, files), not pixels, are the sampling units: for unit ``i`` we keep, per
channel and in float64, ``n_i`` pixels, ``s_i`` their sum and ``m2_i`` their within-image centred
sum of squares (see :mod:`gpustats.sampling`).

Estimators and their intervals (what the module computes, and why)
-------------------------------------------------------------------
The target is the *pixel-weighted* population statistic that :func:`gpustats.compute_stats`
returns (mean over all pixels, population std with ddof=0). With images of different sizes the
sample mean is a **ratio estimator** ``R = sum s_i / sum n_i`` of two totals, and its variance
is the linearization (first-order Taylor) variance of Cochran, *Sampling Techniques*, 3rd ed.
(Wiley, 1977), §6.3–6.4 (eq. 6.9 with x̄ estimated by the sample mean, eq. 6.13)::

    d_i = s_i - R n_i
    V(R) = (1 - k/N) / (k * nbar^2) * sum d_i^2 / (k - 1),        nbar = sum n_i / k

For the std we use the **delta method** on the two ratio estimators ``R_1 = sum s_i / sum n_i``
and ``R_2 = sum q_i / sum n_i`` with ``sigma = g(R_1, R_2) = sqrt(R_2 - R_1^2)`` (Taylor
linearization of a smooth function of estimated totals: Särndal, Swensson & Wretman, *Model
Assisted Survey Sampling*, Springer 1992, §5.5–5.7; Cochran §6.4 for the ratio pieces). Its
linearized variable simplifies to a ratio residual of the within-sample centred squares::

    u_i = m2_i + n_i (s_i/n_i - R_1)^2          (sum over image i of (x - R_1)^2)
    e_i = (u_i - sigma^2 n_i) / (2 sigma)
    V(sigma) = (1 - k/N) / (k * nbar^2) * sum e_i^2 / (k - 1)

The delta method was chosen over a bootstrap over per-image sufficient statistics because it is
closed-form, O(k) per check (the check runs after every batch) and deterministic; a bootstrap
would cost B recomputations per batch and add Monte-Carlo noise to the stopping decision. Both
are first-order equivalent for smooth statistics (Shao & Tu, *The Jackknife and Bootstrap*,
1995, §3). The coverage of both intervals is checked by ``tests/test_sampling.py`` on
heterogeneous populations with mixed image sizes.

Intervals are ``estimate ± z * sqrt(V)`` with ``z = NormalDist().inv_cdf((1 + confidence) / 2)``
(normal approximation; hence ``min_images``, default 30, before any stop is allowed). The
**finite-population correction** ``1 - k/N`` is applied whenever the population size ``N`` is
known (map-style datasets, file lists); an exhausted population gives half-widths exactly 0.

Stopping as soon as the half-width is below ``tolerance`` is the fixed-width sequential interval
of Chow & Robbins, "On the asymptotic theory of fixed-width sequential confidence intervals for
the mean", *Ann. Math. Statist.* 36 (1965) 457–462: its coverage tends to the nominal level as the
tolerance shrinks. With a loose tolerance (stops near ``min_images``) it can be a little below
nominal; the tests measure it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .batches import InputError

__all__ = ["SampledStats", "UnitSums", "ratio_intervals", "STOP_REASONS"]

#: Values of :attr:`SampledStats.stopped_because`.
STOP_REASONS = ("tolerance", "max_images", "exhausted")


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _t_quantile(confidence: float, df: float) -> float:
    """Two-sided Student-t quantile from the normal one (Cornish-Fisher expansion of Hill, 1970,
    Comm. ACM 13:617; Abramowitz & Stegun 26.7.5): within 1e-4 of the exact value for df >= 5."""
    z = _z(confidence)
    if not math.isfinite(df):
        return z
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def ratio_intervals(
    count: np.ndarray,
    total: np.ndarray,
    m2: np.ndarray,
    *,
    population_size: int | None = None,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """Point estimates and standard errors from per-unit sufficient statistics.

    ``count`` [k] pixels per unit (0 for a unit without pixels), ``total`` [k, C] sums, ``m2``
    [k, C] within-unit centred sums of squares, for a simple random sample (without
    replacement) of ``k`` units out of ``population_size`` (``None``: unknown, no finite-population
    correction). Returns ``mean``, ``std``, ``se_mean``, ``se_std`` and ``half_mean``,
    ``half_std`` (``z * se``), all [C] float64. See the module docstring for the formulas.

    >>> r = ratio_intervals(np.array([4.0, 4.0]), np.array([[2.0], [2.0]]), np.array([[1.0], [1.0]]))
    >>> float(r["mean"][0]), float(r["std"][0]), float(r["se_mean"][0])
    (0.5, 0.5, 0.0)
    """
    count = np.asarray(count, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    m2 = np.asarray(m2, dtype=np.float64)
    k = count.shape[0]
    pixels = count.sum()
    if k == 0 or pixels == 0:
        raise InputError("no pixels were sampled: every visited image was empty or bad")
    n_col = count[:, None]
    mean = total.sum(axis=0) / pixels
    d = total - mean * n_col  # = n_i (mean_i - R)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = np.where(n_col > 0, d * d / np.where(n_col > 0, n_col, 1.0), 0.0)
    u = m2 + between  # sum over unit i of (x - R)^2
    if population_size is not None and population_size > 0:
        fpc = max(0.0, 1.0 - k / float(population_size))
    else:
        fpc = 1.0
    nbar = pixels / k
    plain_var = np.maximum(u.sum(axis=0) / pixels, 0.0)
    if k > 1:
        scale = fpc / (k * (k - 1) * nbar * nbar)
        var_mean = scale * (d * d).sum(axis=0)
        # Centring at the estimated mean R instead of the true one loses sum n_i (R - mean)^2 ~
        # pixels * V(R): add V(R) back (the k/(k-1) of the plain variance; 0 once exhausted).
        var = plain_var + var_mean
        e = u - var * n_col
        se_var = np.sqrt(scale * (e * e).sum(axis=0))
        se_mean = np.sqrt(var_mean)
    else:
        var = plain_var
        se_mean = se_var = np.full(mean.shape, 0.0 if fpc == 0.0 else np.inf)
    std = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        se_std = np.where(std > 0, se_var / (2.0 * np.where(std > 0, std, 1.0)), 0.0 if fpc == 0.0 else se_var)
    # sigma == 0 means every sampled pixel equals the mean: e_i == 0, so se_var is 0 too.
    z = _t_quantile(confidence, k - 1) if k > 1 else _z(confidence)
    return {"mean": mean, "std": std, "se_mean": se_mean, "se_std": se_std,
            "half_mean": z * se_mean, "half_std": z * se_std}


def _frozen(arr: Any) -> np.ndarray:
    out = np.array(arr, dtype=np.float64, copy=True).reshape(-1)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False, repr=False)
class SampledStats:
    """Per-channel mean/std *estimated* from a random subset of images, with confidence intervals.

    ``mean``/``std`` [C] (pixel-weighted, ddof=0, on ``scale``); ``mean_ci``/``std_ci``: ``(lower,
    upper)`` arrays; ``half_widths``: ``{"mean": [C], "std": [C]}``; ``images_used``: images that
    contributed pixels; ``units_visited``: dataset items / files visited (bad files included);
    ``population_size``: ``N`` when known; ``stopped_because``: one of :data:`STOP_REASONS`;
    ``is_estimate``: False only when the whole population was visited (then the values are exact
    and the half-widths 0). ``bad_files``: ``(path, reason)`` of undecodable files visited.
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

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def images_per_second(self) -> float:
        return self.units_visited / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def normalize_args(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` as plain lists, ready for ``transforms.Normalize(mean, std)``."""
        return [float(v) for v in self.mean], [float(v) for v in self.std]

    def describe(self) -> str:
        """One line saying what kind of number this is."""
        if not self.is_estimate:
            return f"EXACT: all {self.units_visited} images of the population were visited"
        of = f" of {self.population_size}" if self.population_size is not None else ""
        why = {"tolerance": f"every half-width <= {self.tolerance:g}",
               "max_images": "max_images reached (the tolerance may not be met)"}.get(self.stopped_because, self.stopped_because)
        return (f"ESTIMATE from a random subset of {self.units_visited}{of} images (seed {self.seed}); "
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
            "images_used": self.images_used, "units_visited": self.units_visited,
            "pixels_used": self.pixels_used, "population_size": self.population_size,
            "stopped_because": self.stopped_because, "seed": self.seed, "scale": self.scale,
            "elapsed_s": self.elapsed_s,
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
    """The sampling units' sufficient statistics: growing per-unit arrays (count [k], total [k, C], m2 [k, C]); amortized O(1) appends."""

    def __init__(self) -> None:
        self.k = 0
        self._count = np.zeros(0)
        self._total: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def append(self, count: np.ndarray, total: np.ndarray, m2: np.ndarray) -> None:
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

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._count[:self.k], self._total[:self.k], self._m2[:self.k]

    @property
    def images(self) -> int:
        return int(np.count_nonzero(self._count[:self.k]))

    @property
    def channels(self) -> int:
        return 0 if self._total is None else int(self._total.shape[1])
