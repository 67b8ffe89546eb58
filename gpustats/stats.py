"""The mergeable state (`ChannelStats`) and the user-facing result (`Stats`).

One accumulator rule, stated once (DESIGN.md, "The state and its numerics"):

* **Integer input** (uint8, int8, uint16, int16) is reduced exactly: the state keeps the
  per-channel totals of ``x`` and ``x*x`` (and of ``x_i*x_j`` for covariance) as Python
  integers, so merging is integer addition and the result is bitwise identical for any batch
  split, any merge order, any backend and any number of ranks. Means and variances are derived
  from those integers with exact rational arithmetic and rounded once to float64.
* **Float input** is reduced by the backends to per-batch float64 ``(count, mean, M2)`` (float32
  is allowed only over short runs inside a kernel, always after subtracting a per-channel
  reference value), and batches are combined with Chan et al.'s parallel formula in float64:

      n = n_a + n_b;  d = mean_b - mean_a
      mean = mean_a + d * n_b / n
      M2   = M2_a + M2_b + d**2 * n_a * n_b / n

  (Chan, Golub & LeVeque, "Algorithms for computing the sample variance", 1979). The multivariate
  form merges co-moment matrices: ``C = C_a + C_b + outer(d, d) * n_a * n_b / n``.

The empty state is a real value: it is the identity of :meth:`ChannelStats.merge`.

Example
-------
>>> import numpy as np
>>> a = ChannelStats.from_integer_sums(count=[4], total=[10], total_sq=[30], vmin=[1], vmax=[4],
...                                    dtype="uint8", scale=1.0)
>>> ChannelStats.empty().merge(a) == a
True
>>> r = a.finalize()
>>> float(r.mean[0]), float(r.var[0])
(2.5, 1.25)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

__all__ = ["ChannelStats", "Stats", "StatsError", "INTEGER_DTYPES", "FLOAT_DTYPES", "exact_row_moments"]

#: Integer dtypes reduced exactly (their squares' sums fit int64 per kernel call).
INTEGER_DTYPES = ("uint8", "int8", "uint16", "int16")
#: Float dtypes (bfloat16 and float16 are widened inside the kernels).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

_FORMAT = "gpustats.ChannelStats/1"


class StatsError(ValueError):
    """A state or result cannot be built or combined as asked; the message says why and what to do."""


def _family(dtype: str | None) -> str:
    if dtype is None:
        return "empty"
    return "int" if dtype in INTEGER_DTYPES else "float"


def _f64(values: Any, channels: int | None = None) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(-1)
    arr.setflags(write=False)
    return arr


def _i64(values: Any) -> np.ndarray:
    arr = np.array(values, dtype=np.int64).reshape(-1)
    arr.setflags(write=False)
    return arr


def _frozen(arr: np.ndarray | None) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    return arr


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True, eq=False)
class ImageMoments:
    """Aggregates over images of per-image statistics (``per_image=True``).

    Rows of ``mean``/``m2`` (shape [3, C]) are, per channel, the image-weighted Chan state
    (over ``images`` images) of: 0 the per-image mean, 1 the per-image std with ddof=0,
    2 the per-image std with ddof=1 (NaN-free: single-pixel images contribute 0 to row 2).
    """

    images: int
    mean: np.ndarray  # float64 [3, C]
    m2: np.ndarray  # float64 [3, C]

    @staticmethod
    def from_images(img_count: np.ndarray, img_mean: np.ndarray, img_m2: np.ndarray) -> "ImageMoments":
        """Fold per-image ``(count, mean, M2)`` arrays of shape [K, C] (raw units) into aggregates."""
        count = np.asarray(img_count, dtype=np.float64)
        if count.shape[0] == 0:
            channels = count.shape[1]
            return ImageMoments(0, _frozen(np.zeros((3, channels))), _frozen(np.zeros((3, channels))))
        with np.errstate(invalid="ignore", divide="ignore"):
            std0 = np.sqrt(np.asarray(img_m2) / count)
            std1 = np.where(count > 1, np.sqrt(np.asarray(img_m2) / np.maximum(count - 1, 1)), 0.0)
        values = np.stack([np.asarray(img_mean, dtype=np.float64), std0, std1])  # [3, K, C]
        mean = values.mean(axis=1)
        m2 = ((values - mean[:, None, :]) ** 2).sum(axis=1)
        return ImageMoments(int(count.shape[0]), _frozen(mean), _frozen(m2))

    def merge(self, other: "ImageMoments") -> "ImageMoments":
        if other.images == 0:
            return self
        if self.images == 0:
            return other
        n_a, n_b = float(self.images), float(other.images)
        n = n_a + n_b
        delta = other.mean - self.mean
        mean = self.mean + delta * (n_b / n)
        m2 = self.m2 + other.m2 + delta**2 * (n_a * n_b / n)
        return ImageMoments(self.images + other.images, _frozen(mean), _frozen(m2))

    def to_dict(self) -> dict:
        return {"images": self.images, "mean": _floats_out(self.mean), "m2": _floats_out(self.m2)}

    @staticmethod
    def from_dict(d: dict) -> "ImageMoments":
        mean = _floats_in(d["mean"]).reshape(3, -1)
        m2 = _floats_in(d["m2"]).reshape(3, -1)
        return ImageMoments(int(d["images"]), _frozen(mean), _frozen(m2))


@dataclass(frozen=True, eq=False)
class ChannelStats:
    """Immutable per-channel state of a reduction; merge with :meth:`merge`, answer with :meth:`finalize`.

    Attributes (all per channel, shape [C], raw units of the input, i.e. before ``scale``):
        dtype: the input dtype family member that produced it ("uint8", "float32", ...; ``None`` when empty).
        scale: divisor applied by :meth:`finalize` (255 for uint8 data by default).
        count: int64 number of values counted (non-finite values excluded under ``nan_policy="omit"``).
        mean, m2: float64 mean and sum of squared deviations (exactly rounded for integer input).
        min, max: float64 extremes.
        nonfinite: int64 number of non-finite values seen (omitted or propagated).
        isum, isumsq: exact integer totals of x and x*x (integer input only).
        hist: int64 [C, bins] histogram (when asked); ``hist_range`` its [lo, hi) range in raw units.
        comoment: float64 [C, C] co-moment matrix sum((x_i-mean_i)(x_j-mean_j)) (covariance);
            ``icross`` the exact integer sum(x_i*x_j) it is derived from, for integer input.
        images: per-image aggregates (``per_image=True``).
    """

    dtype: str | None
    scale: float
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    nonfinite: np.ndarray
    isum: tuple[int, ...] | None = None
    isumsq: tuple[int, ...] | None = None
    hist: np.ndarray | None = None
    hist_range: tuple[float, float] | None = None
    comoment: np.ndarray | None = None
    icross: tuple[tuple[int, ...], ...] | None = None
    images: ImageMoments | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def empty() -> "ChannelStats":
        """The identity of :meth:`merge`: no channels, no data."""
        z = np.zeros(0)
        return ChannelStats(None, 1.0, _i64([]), _f64(z), _f64(z), _f64(z), _f64(z), _i64([]))

    @property
    def is_empty(self) -> bool:
        return self.dtype is None

    @property
    def channels(self) -> int:
        return int(self.count.shape[0])

    @property
    def family(self) -> str:
        """"int" (exact integer state), "float", or "empty"."""
        return _family(self.dtype)

    @staticmethod
    def from_integer_sums(
        count: Sequence[int],
        total: Sequence[int],
        total_sq: Sequence[int],
        vmin: Sequence[float],
        vmax: Sequence[float],
        *,
        dtype: str = "uint8",
        scale: float = 255.0,
        hist: np.ndarray | None = None,
        hist_range: tuple[float, float] | None = None,
        cross: Sequence[Sequence[int]] | None = None,
        images: ImageMoments | None = None,
    ) -> "ChannelStats":
        """State of integer data from exact totals (Python ints or int64 arrays)."""
        if dtype not in INTEGER_DTYPES:
            raise StatsError(f"from_integer_sums needs an integer dtype {INTEGER_DTYPES}, got {dtype!r}")
        n = _ints(count)
        s = _ints(total)
        q = _ints(total_sq)
        mean, m2 = exact_row_moments(n, s, q)
        icross = None
        comoment = None
        if cross is not None:
            icross = tuple(_ints(row) for row in cross)
            comoment = _comoment_from_ints(n, s, icross)
        channels = len(n)
        return ChannelStats(
            dtype, float(scale), _i64(n), _f64(mean), _f64(m2),
            _f64(vmin if any(n) else [math.inf] * channels), _f64(vmax if any(n) else [-math.inf] * channels),
            _i64([0] * channels), s, q, _frozen(None if hist is None else np.asarray(hist, np.int64)),
            None if hist_range is None else (float(hist_range[0]), float(hist_range[1])),
            comoment, icross, images,
        )

    @staticmethod
    def from_moments(
        count: Sequence[int],
        mean: Sequence[float],
        m2: Sequence[float],
        vmin: Sequence[float],
        vmax: Sequence[float],
        *,
        dtype: str = "float32",
        scale: float = 1.0,
        nonfinite: Sequence[int] | None = None,
        hist: np.ndarray | None = None,
        hist_range: tuple[float, float] | None = None,
        comoment: np.ndarray | None = None,
        images: ImageMoments | None = None,
    ) -> "ChannelStats":
        """State of float data from float64 per-channel ``(count, mean, M2)``."""
        if dtype not in FLOAT_DTYPES:
            raise StatsError(f"from_moments needs a float dtype {FLOAT_DTYPES}, got {dtype!r}")
        channels = len(count)
        return ChannelStats(
            dtype, float(scale), _i64(count), _f64(mean), _f64(m2), _f64(vmin), _f64(vmax),
            _i64(nonfinite if nonfinite is not None else [0] * channels), None, None,
            _frozen(None if hist is None else np.asarray(hist, np.int64)),
            None if hist_range is None else (float(hist_range[0]), float(hist_range[1])),
            _frozen(None if comoment is None else np.asarray(comoment, np.float64)), None, images,
        )

    # ------------------------------------------------------------------ merge
    def _check_compatible(self, other: "ChannelStats") -> None:
        if self.channels != other.channels:
            raise StatsError(
                f"cannot merge states with {self.channels} and {other.channels} channels; "
                "every batch must have the same channel count (pass channels=... to select channels)"
            )
        if self.family != other.family:
            raise StatsError(
                f"cannot merge {self.dtype} data with {other.dtype} data: integer and float batches are "
                "reduced differently (integers exactly); convert all batches to one dtype first"
            )
        if self.scale != other.scale:
            raise StatsError(f"cannot merge states with scales {self.scale} and {other.scale}; pass the same scale=")
        for name in ("hist", "comoment", "images"):
            if (getattr(self, name) is None) != (getattr(other, name) is None):
                raise StatsError(f"cannot merge a state with {name} and one without; use the same options everywhere")
        if self.hist is not None and (self.hist.shape != other.hist.shape or self.hist_range != other.hist_range):
            raise StatsError(
                f"cannot merge histograms of {self.hist.shape[1]} bins over {self.hist_range} and "
                f"{other.hist.shape[1]} bins over {other.hist_range}; use the same hist_bins/hist_range"
            )

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        """Combine two states as if all of their data had been reduced together.

        Integer states add their exact totals (associative and commutative: bitwise identical in
        any order). Float states use Chan's formula in float64 (see the module docstring).
        """
        if other.is_empty:
            return self
        if self.is_empty:
            return other
        self._check_compatible(other)
        hist = None if self.hist is None else self.hist + other.hist
        images = None if self.images is None else self.images.merge(other.images)
        vmin = np.minimum(self.min, other.min)
        vmax = np.maximum(self.max, other.max)
        if self.family == "int":
            cross = None
            if self.icross is not None:
                cross = [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(self.icross, other.icross)]
            merged = ChannelStats.from_integer_sums(
                [a + b for a, b in zip(self.count.tolist(), other.count.tolist())],
                [a + b for a, b in zip(self.isum, other.isum)],
                [a + b for a, b in zip(self.isumsq, other.isumsq)],
                vmin, vmax, dtype=self.dtype, scale=self.scale, hist=hist, hist_range=self.hist_range,
                cross=cross, images=images,
            )
            return merged
        n_a = self.count.astype(np.float64)
        n_b = other.count.astype(np.float64)
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            w_b = np.where(n > 0, n_b / np.where(n > 0, n, 1.0), 0.0)
            delta = other.mean - self.mean
            # a channel that is empty on one side must not pull in the other side's placeholder mean
            delta = np.where((n_a > 0) & (n_b > 0), delta, 0.0)
            mean = np.where(n_a > 0, self.mean + delta * w_b, other.mean)
            m2 = self.m2 + other.m2 + delta**2 * np.where(n > 0, n_a * n_b / np.where(n > 0, n, 1.0), 0.0)
        comoment = None
        if self.comoment is not None:
            # multivariate Chan: every channel has the same count when covariance is on
            nn = n[0] if n.size else 0.0
            factor = (n_a[0] * n_b[0] / nn) if nn > 0 else 0.0
            comoment = self.comoment + other.comoment + np.outer(delta, delta) * factor
        dtype = self.dtype if self.dtype == other.dtype else "float64"
        return ChannelStats(
            dtype, self.scale, _i64(self.count + other.count), _f64(mean), _f64(m2), _f64(vmin), _f64(vmax),
            _i64(self.nonfinite + other.nonfinite), None, None, _frozen(hist), self.hist_range,
            _frozen(comoment), None, images,
        )

    # ------------------------------------------------------------------ results
    def finalize(self, ddof: int = 0) -> "Stats":
        """Turn the state into answers on the reported scale (values divided by ``scale``).

        ``ddof=0`` (default) gives the population std over all pixels, the number
        ``torchvision.transforms.Normalize`` wants.
        """
        if self.is_empty:
            raise StatsError("no data was reduced: the loader yielded no batches (or every batch was empty)")
        if ddof not in (0, 1):
            raise StatsError(f"ddof must be 0 or 1, got {ddof!r}")
        count = self.count.copy()
        if self.family == "int":
            mean, var = [], []
            scale = Fraction(self.scale)  # exact value of the float
            for s, q, n in zip(self.isum, self.isumsq, count.tolist()):
                mean.append(float(Fraction(s, n) / scale) if n else math.nan)
                var.append(float(Fraction(n * q - s * s, n * (n - ddof)) / (scale * scale)) if n > ddof else math.nan)
            mean_a = np.array(mean)
            var_a = np.array(var)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_a = np.where(count > 0, self.mean, np.nan) / self.scale
                var_a = np.where(count - ddof > 0, self.m2 / np.maximum(count - ddof, 1), np.nan) / self.scale**2
        var_a = np.maximum(var_a, 0.0)  # guards -0.0 from rounding; NaN stays NaN
        return Stats(
            mean=mean_a, std=np.sqrt(var_a), var=var_a, min=self.min / self.scale, max=self.max / self.scale,
            count=count, scale=self.scale, ddof=ddof, state=self,
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """A JSON-ready dict; floats are written as exact hex strings (``float.hex``)."""
        d: dict[str, Any] = {
            "format": _FORMAT,
            "dtype": self.dtype,
            "scale": self.scale.hex(),
            "count": [int(v) for v in self.count],
            "mean": _floats_out(self.mean),
            "m2": _floats_out(self.m2),
            "min": _floats_out(self.min),
            "max": _floats_out(self.max),
            "nonfinite": [int(v) for v in self.nonfinite],
        }
        if self.isum is not None:
            d["isum"] = [str(v) for v in self.isum]  # strings: exact beyond 2**53 in every JSON reader
            d["isumsq"] = [str(v) for v in self.isumsq]
        if self.hist is not None:
            d["hist"] = self.hist.tolist()
            d["hist_range"] = None if self.hist_range is None else [float(v).hex() for v in self.hist_range]
        if self.comoment is not None:
            d["comoment"] = [_floats_out(row) for row in self.comoment]
        if self.icross is not None:
            d["icross"] = [[str(v) for v in row] for row in self.icross]
        if self.images is not None:
            d["images"] = self.images.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict) -> "ChannelStats":
        if d.get("format") != _FORMAT:
            raise StatsError(f"not a gpustats state (format {d.get('format')!r}, expected {_FORMAT!r})")
        dtype = d["dtype"]
        if dtype is None:
            return ChannelStats.empty()
        hist = None if "hist" not in d else np.array(d["hist"], dtype=np.int64)
        hist_range = None
        if d.get("hist_range") is not None:
            hist_range = (float.fromhex(d["hist_range"][0]), float.fromhex(d["hist_range"][1]))
        images = ImageMoments.from_dict(d["images"]) if "images" in d else None
        if _family(dtype) == "int":
            state = ChannelStats.from_integer_sums(
                d["count"], [int(v) for v in d["isum"]], [int(v) for v in d["isumsq"]],
                _floats_in(d["min"]), _floats_in(d["max"]), dtype=dtype, scale=float.fromhex(d["scale"]),
                hist=hist, hist_range=hist_range,
                cross=None if "icross" not in d else [[int(v) for v in row] for row in d["icross"]],
                images=images,
            )
            return replace(state, nonfinite=_i64(d["nonfinite"]))
        return ChannelStats.from_moments(
            d["count"], _floats_in(d["mean"]), _floats_in(d["m2"]), _floats_in(d["min"]), _floats_in(d["max"]),
            dtype=dtype, scale=float.fromhex(d["scale"]), nonfinite=d["nonfinite"], hist=hist,
            hist_range=hist_range,
            comoment=None if "comoment" not in d else np.array([_floats_in(r) for r in d["comoment"]]),
            images=images,
        )

    def to_json(self) -> str:
        """Exact JSON text: ``ChannelStats.from_json(s.to_json()) == s`` bit for bit."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> "ChannelStats":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StatsError(f"not valid JSON: {exc}") from None
        return ChannelStats.from_dict(data)

    def __eq__(self, other: object) -> bool:  # bitwise equality of every field
        if not isinstance(other, ChannelStats):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())


def _floats_out(arr: np.ndarray) -> list[str]:
    return [float(v).hex() for v in np.asarray(arr, dtype=np.float64).reshape(-1)]


def _floats_in(values: Sequence[str]) -> np.ndarray:
    return np.array([float.fromhex(v) for v in values], dtype=np.float64)


def exact_row_moments(count: Any, total: Any, total_sq: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and M2 of integer data from exact totals (any matching shapes), each rounded once.

    ``mean = s / n`` and ``M2 = (n*q - s*s) / n`` in exact rational arithmetic, then float64;
    0 where ``n == 0``. The single rule behind every integer state and per-image moment.
    """
    n_a = np.asarray(count, dtype=object)
    s_a = np.asarray(total, dtype=object)
    q_a = np.asarray(total_sq, dtype=object)
    mean = np.zeros(n_a.shape)
    m2 = np.zeros(n_a.shape)
    for idx in np.ndindex(*n_a.shape):
        n, s, q = int(n_a[idx]), int(s_a[idx]), int(q_a[idx])
        if n:
            mean[idx] = float(Fraction(s, n))
            m2[idx] = float(Fraction(n * q - s * s, n))
    return mean, m2


def _comoment_from_ints(n: Sequence[int], s: Sequence[int], cross: Sequence[Sequence[int]]) -> np.ndarray:
    """Exact co-moments sum((x_i - m_i)(x_j - m_j)) = cross_ij - s_i s_j / n, rounded once."""
    channels = len(n)
    out = np.zeros((channels, channels))
    count = n[0] if channels else 0
    if count:
        for i in range(channels):
            for j in range(channels):
                out[i, j] = float(Fraction(count * cross[i][j] - s[i] * s[j], count))
    out.setflags(write=False)
    return out


# ====================================================================== results
@dataclass(frozen=True, eq=False)
class Stats:
    """Per-channel statistics on the reported scale (numpy arrays of shape [C]).

    ``mean``/``std``/``var`` use ``ddof``; ``min``/``max`` are the extremes; ``count`` the number of
    values per channel; ``scale`` the divisor applied to raw values (255 for uint8 by default).
    The full state is kept in ``state`` (merge it, save it with ``state.to_json()``).
    """

    mean: np.ndarray
    std: np.ndarray
    var: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    scale: float
    ddof: int
    state: ChannelStats
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

    def percentile(self, q: float | Sequence[float], method: str = "linear") -> np.ndarray:
        """Per-channel percentiles from the histogram, shape [C] (or [len(q), C]).

        For integer data each bin holds one value, so the result is exact and equals
        ``np.percentile(pixels, q, method=method)`` for ``method`` in "linear" (numpy's default),
        "lower", "higher", "nearest", "midpoint" and "inverted_cdf". For float data it is
        the same rule applied to bin centres (accurate to half a bin width).
        """
        hist = self._need_hist()
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if np.any((qs < 0) | (qs > 100)):
            raise StatsError(f"percentiles must lie in [0, 100], got {q!r}")
        lo, hi = self.state.hist_range
        width = (hi - lo) / hist.shape[1]
        values = lo + width * np.arange(hist.shape[1]) if self.state.family == "int" else lo + width * (np.arange(hist.shape[1]) + 0.5)
        out = np.empty((qs.size, hist.shape[0]))
        for c in range(hist.shape[0]):
            cum = np.cumsum(hist[c])
            n = int(cum[-1])
            if n == 0:
                out[:, c] = np.nan
                continue
            for k, qq in enumerate(qs):
                out[k, c] = _hist_percentile(values, cum, n, qq, method)
        out /= self.scale
        return out[0] if np.ndim(q) == 0 else out

    def median(self) -> np.ndarray:
        return self.percentile(50.0)

    def saturation(self) -> dict[str, np.ndarray]:
        """Fraction of pixels at the lowest and highest value of an 8-bit range (0 and 255)."""
        hist = self._need_hist()
        total = hist.sum(axis=1).astype(np.float64)
        return {"low": hist[:, 0] / total, "high": hist[:, -1] / total}

    # -------------------------------------------------------------- covariance
    @property
    def cov(self) -> np.ndarray:
        """Covariance matrix [C, C] on the reported scale, with this result's ddof."""
        com = self.state.comoment
        if com is None:
            raise StatsError("no covariance was accumulated; pass covariance=True (CLI: --covariance)")
        n = int(self.count[0])
        return com / (n - self.ddof) / self.scale**2

    @property
    def corr(self) -> np.ndarray:
        cov = self.cov
        d = np.sqrt(np.diag(cov))
        return cov / np.outer(d, d)

    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (descending) and eigenvectors (columns) of the covariance matrix.

        These are the eigenpairs AlexNet-style "lighting" (PCA colour) augmentation uses, computed
        there from ImageNet's RGB covariance.
        """
        values, vectors = np.linalg.eigh(self.cov)
        order = np.argsort(values)[::-1]
        return values[order], vectors[:, order]

    def whitening(self, kind: str = "zca", eps: float = 1e-5) -> np.ndarray:
        """A [C, C] matrix W such that ``W @ (x - mean)`` has (nearly) identity covariance.

        ``kind="pca"``: ``diag(1/sqrt(l+eps)) @ V.T``; ``kind="zca"``: ``V @ diag(1/sqrt(l+eps)) @ V.T``.
        """
        values, vectors = self.pca()
        inv = np.diag(1.0 / np.sqrt(values + eps))
        if kind == "pca":
            return inv @ vectors.T
        if kind == "zca":
            return vectors @ inv @ vectors.T
        raise StatsError(f"whitening kind must be 'zca' or 'pca', got {kind!r}")

    # -------------------------------------------------------------- per image
    @property
    def per_image(self) -> dict[str, Any] | None:
        """Image-weighted statistics (``per_image=True``): averages and spread of per-image values.

        ``mean_of_means`` (each image counts once, whatever its size), ``mean_of_stds`` (ddof=0)
        and ``mean_of_stds_ddof1`` (how the often-copied CIFAR-10 std (0.2023, 0.1994, 0.2010)
        was made), each with its spread across images (``*_spread``, population std).
        """
        img = self.state.images
        if img is None:
            return None
        k = max(img.images, 1)
        spread = np.sqrt(np.maximum(img.m2 / k, 0.0)) / self.scale
        mean = img.mean / self.scale
        return {
            "images": img.images,
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
            }
            if self.state.family == "int":
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
        fmt = lambda a: "[" + ", ".join(f"{v:.4f}" for v in a) + "]"  # noqa: E731
        return f"Stats(mean={fmt(self.mean)}, std={fmt(self.std)}, min={fmt(self.min)}, max={fmt(self.max)}, count={self.count.tolist()})"


def _hist_percentile(values: np.ndarray, cum: np.ndarray, n: int, q: float, method: str) -> float:
    """numpy's percentile rules on the sorted sample described by (values, cumulative counts)."""

    def kth(k: int) -> float:  # 0-based k-th smallest value
        return float(values[int(np.searchsorted(cum, k + 1))])

    if method == "inverted_cdf":
        k = max(int(math.ceil(n * q / 100.0)) - 1, 0)
        return kth(k)
    h = (n - 1) * q / 100.0
    lo_i = int(math.floor(h))
    hi_i = min(lo_i + 1, n - 1)
    if method == "lower":
        return kth(lo_i)
    if method == "higher":
        return kth(int(math.ceil(h)))
    if method == "nearest":
        return kth(int(np.around(h)))
    if method == "midpoint":
        return (kth(lo_i) + kth(int(math.ceil(h)))) / 2.0
    if method == "linear":
        a, b = kth(lo_i), kth(hi_i)
        return a + (h - lo_i) * (b - a)
    raise StatsError(f"unknown percentile method {method!r}; use linear, lower, higher, nearest, midpoint or inverted_cdf")
