"""The user-facing result :class:`Stats` (made by :meth:`gpustats.stats.ChannelStats.finalize`).

Percentiles, saturation, covariance/PCA/whitening and per-image figures are read from the state
here; the numeric rules they use live in :mod:`gpustats.numerics`. The step from state to result
belongs to :mod:`gpustats.stats` (``finalize``), which imports this module; this module imports
nothing of it (not even for annotations): what a result reads of its state is :class:`StateView`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from .numerics import StatsError, bin_value_spans, hist_percentile, range_ends

__all__ = ["StateView", "Stats"]


class StateView(Protocol):
    """What a :class:`Stats` reads of the state it was made from (a :class:`gpustats.stats.ChannelStats`)."""

    dtype: str | None
    nonfinite: np.ndarray
    min: np.ndarray
    max: np.ndarray
    hist: np.ndarray | None
    hist_range: tuple[float, float] | None
    comoment: np.ndarray | None
    images: Any

    @property
    def family(self) -> str: ...

    def end_counts(self) -> np.ndarray | None: ...


@dataclass(frozen=True, eq=False)
class Stats:
    """Per-channel statistics on the reported scale (numpy arrays of shape [C]).

    ``mean``/``std``/``var`` use ``ddof``; ``min``/``max`` are the extremes; ``count`` the number of
    values per channel; ``scale`` the divisor applied to raw values (255 for uint8 by default).
    The full state is kept in ``state``, the :class:`~gpustats.stats.ChannelStats` it was made from
    (merge it, save it with ``state.to_json()``; annotated by what this class reads of it, :class:`StateView`).

    >>> import numpy as np
    >>> from gpustats import Accumulator
    >>> acc = Accumulator(device="cpu", layout="HWC", histogram=True)
    >>> acc.update(np.array([[[0, 0, 0], [255, 255, 255]], [[51, 102, 153], [51, 102, 153]]], np.uint8))
    >>> stats = acc.result()                 # one 2x2 RGB uint8 image, reported on ToTensor's 0-1 scale
    >>> stats.mean.tolist(), stats.count.tolist(), stats.max.tolist()
    ([0.35, 0.45, 0.55], [4, 4, 4], [1.0, 1.0, 1.0])
    >>> stats.median().tolist()              # from the exact 256-bin histogram
    [0.2, 0.4, 0.6]
    >>> mean, std = stats.normalize_args()   # for transforms.Normalize(mean, std)
    >>> [round(v, 4) for v in std]
    [0.3841, 0.3571, 0.3571]
    """

    mean: np.ndarray
    std: np.ndarray
    var: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    scale: float
    ddof: int
    state: StateView
    device: str = "cpu"
    strategy: str = ""

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    # -------------------------------------------------------------- Normalize
    def normalize_args(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` as plain lists, ready for ``transforms.Normalize(mean, std)``."""
        return [float(v) for v in self.mean], [float(v) for v in self.std]

    def normalize(self):
        """A transform equal to ``torchvision.transforms.Normalize(mean, std)``.

        torchvision's own when it is installed, else :class:`gpustats.transforms.Normalize`.
        """
        mean, std = self.normalize_args()
        try:
            from torchvision.transforms import Normalize  # type: ignore
        except Exception:  # torchvision is an optional extra
            from .transforms import Normalize
        return Normalize(mean=mean, std=std)

    # -------------------------------------------------------------- histograms
    def _need_hist(self) -> np.ndarray:
        if self.state.hist is None:
            raise StatsError("no histogram was accumulated; pass histogram=True (CLI: --histogram)")
        return self.state.hist

    @property
    def histogram(self) -> np.ndarray | None:
        """int64 [C, bins] counts (None unless ``histogram=True``)."""
        return self.state.hist

    def bin_edges(self) -> np.ndarray:
        """Bin edges on the reported scale (256 integer-valued bins for 8-bit data: edges k/255)."""
        hist = self._need_hist()
        lo, hi = self.state.hist_range
        return np.linspace(lo, hi, hist.shape[1] + 1) / self.scale

    def _spans(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.state.hist_range
        return bin_value_spans(self._need_hist().shape[1], lo, hi, self.state.dtype)

    def percentile_error_bound(self) -> float:
        """The most :meth:`percentile` can be off, on the reported scale: 0.0 where it is exact.

        Exact where every bin holds at most one value the data can take (uint8's 256 bins, or
        int8/int16/uint16 with at least one bin per integer of ``hist_range``); otherwise one bin
        width (float data: always one bin width).
        """
        first, last = self._spans()
        if self.state.family == "int":
            return float(np.max(np.maximum(last - first, 0.0))) / self.scale
        return float(np.max(last - first)) / self.scale

    def percentile(self, q: float | Sequence[float], method: str = "linear") -> np.ndarray:
        """Per-channel percentiles from the histogram, shape [C] (or [len(q), C]).

        numpy's rules (``np.percentile(pixels, q, method=method)``, ``method`` one of "linear"
        (numpy's default), "lower", "higher", "nearest", "midpoint", "inverted_cdf") applied to the
        sample the histogram describes. Where every bin holds one value (uint8's 256 bins; other
        integer data with a bin per integer) the result is exact. Where bins are wider, a bin's
        values are taken as spread evenly between the smallest and largest value the bin can hold
        (its edges for float data; the outermost non-empty bins end at the exact min and max), so
        the result is within one bin width of numpy's (:meth:`percentile_error_bound`). With
        ``clip=True`` values outside ``hist_range`` count as the range's ends.
        """
        hist = self._need_hist()
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if not np.all(np.isfinite(qs)) or np.any((qs < 0) | (qs > 100)):
            raise StatsError(f"percentiles must be numbers in [0, 100], got {q!r}")
        first, last = self._spans()
        out = np.empty((qs.size, hist.shape[0]))
        for c in range(hist.shape[0]):
            vmin, vmax = float(self.state.min[c]), float(self.state.max[c])
            for k, qq in enumerate(qs):
                out[k, c] = hist_percentile(hist[c], first, last, vmin, vmax, float(qq), method)
        out /= self.scale
        return out[0] if np.ndim(q) == 0 else out

    def median(self) -> np.ndarray:
        """Per-channel median, shape [C]: :meth:`percentile` at 50 (numpy's "linear" rule; exact for
        8-bit data). Needs the histogram (``histogram=True``); raises :class:`StatsError` without it."""
        return self.percentile(50.0)

    def range_ends(self) -> tuple[float, float]:
        """The lowest and highest value of the histogram range, on the reported scale (0 and 1 for uint8)."""
        self._need_hist()
        lo, hi = range_ends(*self.state.hist_range, self.state.dtype)
        return lo / self.scale, hi / self.scale

    @property
    def saturation_available(self) -> bool:
        """Whether :meth:`saturation` can answer (a histogram with exact end counts)."""
        return self.state.hist is not None and self.state.end_counts() is not None

    def saturation(self) -> dict[str, np.ndarray]:
        """Fraction of values exactly at the lowest and highest value of the histogram range.

        The ends are those of :meth:`range_ends`: 0 and 255 for uint8; for other integer data the
        smallest and largest integers of ``hist_range``; for float data ``lo`` and ``hi``. Values
        clipped into the range (``clip=True``) count as at its ends. Counted exactly, not read
        from the first and last bins (which may hold more values than the ends). A state without
        exact end counts (saved by an older gpustats from data with bins wider than one value)
        raises :class:`StatsError`.
        """
        self._need_hist()
        ends = self.state.end_counts()
        if ends is None:
            raise StatsError("saturation needs the exact counts at the histogram range's ends, which this state "
                             "(saved by an older gpustats) lacks; recompute it with histogram=True")
        with np.errstate(invalid="ignore", divide="ignore"):
            total = self.state.hist.sum(axis=1).astype(np.float64)
            return {"low": ends[:, 0] / total, "high": ends[:, 1] / total}

    # -------------------------------------------------------------- covariance
    @property
    def cov(self) -> np.ndarray:
        """Covariance matrix [C, C] on the reported scale, with this result's ddof.

        All NaN where it is undefined: fewer than ``ddof + 1`` pixels, or non-finite values
        propagated (``nan_policy="propagate"``).
        """
        com = self.state.comoment
        if com is None:
            raise StatsError("no covariance was accumulated; pass covariance=True (CLI: --covariance)")
        n = int(self.count[0]) if self.count.size else 0
        if n <= self.ddof:
            return np.full(com.shape, np.nan)
        return com / (n - self.ddof) / self.scale**2

    @property
    def corr(self) -> np.ndarray:
        """Correlation matrix [C, C]; NaN where the covariance is undefined or a channel is constant."""
        cov = self.cov
        d = np.sqrt(np.diag(cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            return cov / np.outer(d, d)

    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (descending) and eigenvectors (columns) of the covariance matrix.

        These are the eigenpairs AlexNet-style "lighting" (PCA colour) augmentation uses, computed
        there from ImageNet's RGB covariance. All NaN where the covariance is undefined (see
        :attr:`cov`).
        """
        cov = self.cov
        if not np.all(np.isfinite(cov)):
            return np.full(cov.shape[0], np.nan), np.full(cov.shape, np.nan)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1]
        return values[order], vectors[:, order]

    def whitening(self, kind: str = "zca", eps: float = 1e-5) -> np.ndarray:
        """A [C, C] matrix W such that ``W @ (x - mean)`` has (nearly) identity covariance.

        ``kind="pca"``: ``diag(1/sqrt(l+eps)) @ V.T``; ``kind="zca"``: ``V @ diag(1/sqrt(l+eps)) @ V.T``.
        Raises :class:`StatsError` where the covariance is undefined (see :attr:`cov`).
        """
        if kind not in ("zca", "pca"):
            raise StatsError(f"whitening kind must be 'zca' or 'pca', got {kind!r}")
        values, vectors = self.pca()
        if not np.all(np.isfinite(values)):
            raise StatsError(f"no whitening matrix: the covariance is undefined ({int(self.count[0])} pixels with "
                             f"ddof={self.ddof}, or non-finite values); reduce more pixels or use ddof=0")
        inv = np.diag(1.0 / np.sqrt(values + eps))
        return inv @ vectors.T if kind == "pca" else vectors @ inv @ vectors.T

    # -------------------------------------------------------------- per image
    @property
    def per_image(self) -> dict[str, Any] | None:
        """Image-weighted statistics (``per_image=True``): averages and spread of per-image values.

        ``mean_of_means`` (each image counts once, whatever its size), ``mean_of_stds`` (ddof=0)
        and ``mean_of_stds_ddof1`` (how the often-copied CIFAR-10 std (0.2023, 0.1994, 0.2010)
        was made; an image with a single value has no ddof-1 std and is left out of it:
        ``images_per_channel_ddof1``), each with its spread across images (``*_spread``,
        population std). Per channel: an image counts in a channel when it has finite values there
        (``images_per_channel``); NaN where no image does. Exact (rounded once, any batch split)
        for integer data.
        """
        img = self.state.images
        if img is None:
            return None
        mean, spread = img.summary(self.scale)
        return {
            "images": img.images, "images_per_channel": img.counts.copy(),
            "images_per_channel_ddof1": img.row_counts()[2],
            "mean_of_means": mean[0], "mean_of_means_spread": spread[0],
            "mean_of_stds": mean[1], "mean_of_stds_spread": spread[1],
            "mean_of_stds_ddof1": mean[2], "mean_of_stds_ddof1_spread": spread[2],
        }

    # -------------------------------------------------------------- export
    def to_dict(self) -> dict:
        """Plain-JSON summary (floats as numbers), used by the CLI's ``--format json``."""
        d: dict[str, Any] = {
            "channels": self.channels,
            "mean": self.mean.tolist(), "std": self.std.tolist(), "var": self.var.tolist(),
            "min": self.min.tolist(), "max": self.max.tolist(), "count": [int(v) for v in self.count],
            "scale": self.scale, "ddof": self.ddof, "dtype": self.state.dtype,
            "nonfinite": [int(v) for v in self.state.nonfinite],
        }
        if self.state.hist is not None:
            d["histogram"] = {
                "bins": int(self.state.hist.shape[1]), "range": list(self.state.hist_range),
                "counts": self.state.hist.tolist(),
                "percentiles": {str(q): self.percentile(q).tolist() for q in (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)},
                "percentile_error_bound": self.percentile_error_bound(),
            }
            if self.state.family == "int" and self.saturation_available:
                sat = self.saturation()
                d["histogram"]["saturated_low"] = sat["low"].tolist()
                d["histogram"]["saturated_high"] = sat["high"].tolist()
        if self.state.comoment is not None:
            values, vectors = self.pca()
            d["covariance"] = {"cov": self.cov.tolist(), "corr": self.corr.tolist(),
                               "eigenvalues": values.tolist(), "eigenvectors": vectors.tolist()}
        if self.state.images is not None:
            d["per_image"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.per_image.items()}
        return d

    def __repr__(self) -> str:
        def fmt(a: np.ndarray) -> str:
            return "[" + ", ".join(f"{v:.4f}" if math.isfinite(v) else "nan" for v in a) + "]"

        return (f"Stats(mean={fmt(self.mean)}, std={fmt(self.std)}, min={fmt(self.min)}, max={fmt(self.max)}, "
                f"count={self.count.tolist()})")
