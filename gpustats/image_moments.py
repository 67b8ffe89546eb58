"""Per-image statistics (``per_image=True``): aggregates over images of each image's mean and std.

Each image contributes, per channel where it has at least one finite value, three values: its
mean, its std with ddof=0 and its std with ddof=1 (an image with one value there has no ddof-1
std and is left out of that row, ``counts_ddof1``; see :func:`gpustats.numerics.image_values_exact`). :class:`ImageMoments` keeps, per channel, the
image-weighted mean and sum of squared deviations (M2) of those values. An image counts in a
channel's figures only when it has finite values in that channel (``counts``), so under
``nan_policy="omit"`` an all-NaN channel of one image neither drops the image from the other
channels nor turns that channel's figures into NaN.

Two families, like :class:`~gpustats.stats.ChannelStats`:

* **Integer data**: every per-image value is computed from the image's exact integer totals and
  rounded once; the state keeps the *exact* sums of those values and of their squares (Python
  ints, :func:`~gpustats.numerics.exact_value_sums`), so the aggregates are rounded once and are
  bitwise identical for any split of the images into batches, any merge order and any backend.
* **Float data**: per-image values are merged with the compensated Chan formula
  (:func:`~gpustats.numerics.chan_merge_rows`), so an offset of 1e8 costs no precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from .numerics import (
    SUM_BITS,
    Moments,
    StatsError,
    chan_merge,
    chan_merge_rows,
    exact_moments,
    exact_value_sums,
    frozen as _frozen,
    image_values,
    image_values_exact,
)

__all__ = ["ImageMoments"]


def _hex(arr: np.ndarray) -> list[str]:
    return [float(v).hex() for v in np.asarray(arr, dtype=np.float64).reshape(-1)]


def _dyadic_out(value: int) -> str:
    """An exact sum as text: ``"<odd hex>p<shift>"`` (``m << shift``), short where the int has many trailing zeros."""
    if value == 0:
        return "0p0"
    shift = (value & -value).bit_length() - 1
    return f"{value >> shift:x}p{shift}"


def _dyadic_in(text: str) -> int:
    mantissa, shift = text.split("p")
    return int(mantissa, 16) << int(shift)


def _unhex(values: Sequence[str], channels: int) -> np.ndarray:
    return np.array([float.fromhex(v) for v in values], dtype=np.float64).reshape(3, channels)


@dataclass(frozen=True, eq=False)
class ImageMoments:
    """Aggregates of per-image values; rows (axis 0) are mean, std (ddof 0), std (ddof 1).

    Attributes:
        images: images reduced.
        counts: int64 [C], images with at least one finite value in each channel.
        counts_ddof1: int64 [C], images with at least two (those in the ddof-1 std's row); None in
            states saved before it was kept (there an image with one value counted with std 0).
        mean, m2: float64 [3, C], image-weighted mean and M2 of the per-image values (raw units).
        mean_lo: float64 [3, C], rounding error of ``mean`` (float data; zeros for integer data).
        sums, sumsqs: integer data only, exact sums of the values (units ``2**-SUM_BITS``) and of
            their squares (units ``2**-2*SUM_BITS``) as nested tuples [3][C] of Python ints.
    """

    images: int
    counts: np.ndarray
    _mean: np.ndarray | None  # None until read: integer data rounds its exact sums on first use
    _m2: np.ndarray | None
    mean_lo: np.ndarray
    sums: tuple[tuple[int, ...], ...] | None = None
    sumsqs: tuple[tuple[int, ...], ...] | None = None
    counts_ddof1: np.ndarray | None = None

    def row_counts(self) -> np.ndarray:
        """Images counted in each row (mean, std, std ddof 1) and channel: int64 [3, C]."""
        ddof1 = self.counts if self.counts_ddof1 is None else self.counts_ddof1
        return np.stack([self.counts, self.counts, ddof1]).astype(np.int64)

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            self._round()
        return self._mean  # type: ignore[return-value]

    @property
    def m2(self) -> np.ndarray:
        if self._m2 is None:
            self._round()
        return self._m2  # type: ignore[return-value]

    def _round(self) -> None:
        """Integer data: mean and M2 rounded once from the exact sums (on first read: a decode worker's
        states are only added and sent, and rounding ~4,000-bit integers costs ~0.2 ms a state)."""
        k = self.row_counts().astype(object)
        mean, m2 = exact_moments(k, self.sums, self.sumsqs, scale=Fraction(2**SUM_BITS))
        object.__setattr__(self, "_mean", _frozen(np.where(np.isnan(mean), 0.0, mean)))
        object.__setattr__(self, "_m2", _frozen(m2))

    @property
    def exact(self) -> bool:
        """True for integer data (exact sums of the per-image values)."""
        return self.sums is not None

    @property
    def channels(self) -> int:
        return int(self.counts.shape[0])

    # ------------------------------------------------------------------ construction
    @staticmethod
    def empty(channels: int, exact: bool) -> "ImageMoments":
        zeros = np.zeros((3, channels))
        ints = tuple((0,) * channels for _ in range(3)) if exact else None
        return ImageMoments(0, _frozen(np.zeros(channels), np.int64), _frozen(zeros), _frozen(zeros), _frozen(zeros),
                            ints, ints, _frozen(np.zeros(channels), np.int64))

    @staticmethod
    def from_exact_sums(images: int, counts: Any, sums: Any, sumsqs: Any,
                        counts_ddof1: Any = None) -> "ImageMoments":
        """Integer-data state from exact sums ([3][C] Python ints); mean and M2 rounded once (when read)."""
        sums = tuple(tuple(int(v) for v in row) for row in sums)
        sumsqs = tuple(tuple(int(v) for v in row) for row in sumsqs)
        return ImageMoments(int(images), _frozen(counts, np.int64), None, None,
                            _frozen(np.zeros((3, len(sums[0])))), sums, sumsqs,
                            None if counts_ddof1 is None else _frozen(counts_ddof1, np.int64))

    @staticmethod
    def from_integer_rows(count: Any, total: Any, total_sq: Any) -> "ImageMoments":
        """Integer-data state of K images from their exact totals (int arrays [K, C])."""
        count = np.asarray(count)
        values = image_values_exact(count, total, total_sq)  # [3, K, C], NaN where not counted
        counts, sums, sumsqs = exact_value_sums(values.transpose(1, 0, 2))  # over images
        return ImageMoments.from_exact_sums(count.shape[0], counts[0], sums, sumsqs, counts[2])

    @staticmethod
    def from_images(img_count: Any, img_mean: Any, img_m2: Any, img_mean_lo: Any = 0.0) -> "ImageMoments":
        """Float-data state of K images from their ``(count, mean, M2)`` rows [K, C] (raw units)."""
        count = np.asarray(img_count)
        rows = Moments(count, np.asarray(img_mean, np.float64), np.asarray(img_m2, np.float64),
                       np.broadcast_to(np.asarray(img_mean_lo, np.float64), count.shape))
        values, lo = image_values(rows)  # [3, K, C]
        valid = ~np.isnan(values)
        merged = chan_merge_rows(Moments(valid.astype(np.int64).transpose(1, 0, 2), np.nan_to_num(values).transpose(1, 0, 2),
                                         np.zeros(values.transpose(1, 0, 2).shape), lo.transpose(1, 0, 2)))
        return ImageMoments(int(count.shape[0]), _frozen((count > 0).sum(axis=0), np.int64), _frozen(merged.mean),
                            _frozen(merged.m2), _frozen(merged.mean_lo),
                            counts_ddof1=_frozen(valid[2].sum(axis=0), np.int64))

    # ------------------------------------------------------------------ merge
    def merge(self, other: "ImageMoments") -> "ImageMoments":
        """Both sets of images together (exact sums added, or the compensated Chan merge)."""
        if other.images == 0 and not other.counts.any():
            return self
        if self.images == 0 and not self.counts.any():
            return other
        if self.exact != other.exact:
            raise StatsError("cannot merge per-image statistics of integer data with ones saved by an older gpustats "
                             "(without exact per-image sums); recompute the older state with per_image=True")
        counts = self.counts + other.counts
        k_old, k_new = self.row_counts(), other.row_counts()
        ddof1 = None if self.counts_ddof1 is None and other.counts_ddof1 is None else k_old[2] + k_new[2]
        if self.exact:
            add = lambda a, b: [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]  # noqa: E731
            return ImageMoments.from_exact_sums(self.images + other.images, counts, add(self.sums, other.sums),
                                                add(self.sumsqs, other.sumsqs), ddof1)
        updated = chan_merge(Moments(k_old, self.mean, self.m2, self.mean_lo),
                             Moments(k_new, other.mean, other.m2, other.mean_lo))
        return ImageMoments(self.images + other.images, _frozen(counts, np.int64), _frozen(updated.mean),
                            _frozen(updated.m2), _frozen(updated.mean_lo),
                            counts_ddof1=None if ddof1 is None else _frozen(ddof1, np.int64))

    # ------------------------------------------------------------------ results
    def summary(self, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, spread)`` [3, C] on the reported scale: image-weighted mean of each per-image value and its
        population std across images; NaN for a channel no image has values in. Integer data: rounded once
        from the exact sums."""
        if self.exact:
            k = self.row_counts().astype(object)
            mean, var = exact_moments(k, self.sums, self.sumsqs, ddof=0, scale=Fraction(2**SUM_BITS) * Fraction(scale))
            return mean, np.sqrt(np.maximum(var, 0.0))
        k = self.row_counts().astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(k > 0, self.mean / scale, np.nan)
            spread = np.where(k > 0, np.sqrt(np.maximum(self.m2 / k, 0.0)) / scale, np.nan)
        return mean, spread

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        d: dict[str, Any] = {"images": self.images, "counts": [int(v) for v in self.counts]}
        if self.counts_ddof1 is not None:
            d["counts_ddof1"] = [int(v) for v in self.counts_ddof1]
        if self.exact:
            d["sums"] = [[_dyadic_out(v) for v in row] for row in self.sums]
            d["sumsqs"] = [[_dyadic_out(v) for v in row] for row in self.sumsqs]
        else:
            d.update(mean=_hex(self.mean), m2=_hex(self.m2), mean_lo=_hex(self.mean_lo))
        return d

    @staticmethod
    def from_dict(d: dict) -> "ImageMoments":
        if "sums" in d:
            return ImageMoments.from_exact_sums(int(d["images"]), d["counts"],
                                                [[_dyadic_in(v) for v in row] for row in d["sums"]],
                                                [[_dyadic_in(v) for v in row] for row in d["sumsqs"]],
                                                d.get("counts_ddof1"))
        channels = len(d["mean"]) // 3
        # states saved before per-channel counts: every image counted in every channel
        counts = d.get("counts", [int(d["images"])] * channels)
        mean_lo = _unhex(d["mean_lo"], channels) if "mean_lo" in d else np.zeros((3, channels))
        ddof1 = d.get("counts_ddof1")
        return ImageMoments(int(d["images"]), _frozen(counts, np.int64), _frozen(_unhex(d["mean"], channels)),
                            _frozen(_unhex(d["m2"], channels)), _frozen(mean_lo),
                            counts_ddof1=None if ddof1 is None else _frozen(ddof1, np.int64))
