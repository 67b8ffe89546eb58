"""The mergeable state :class:`ChannelStats` (the result :class:`Stats` lives in ``results.py``).

One accumulator rule, stated once (docs/design.md, "The state and its numeric rules"; the formulas are in
:mod:`gpustats.numerics`):

* **Integer input** (uint8, int8, uint16, int16) is reduced exactly: the state keeps the
  per-channel totals of ``x`` and ``x*x`` (and of ``x_i*x_j`` for covariance) as Python
  integers, so merging is integer addition and the result is bitwise identical for any batch
  split, any merge order, any backend and any number of ranks. Means and variances are derived
  from those integers with exact rational arithmetic and rounded once to float64
  (:func:`~gpustats.numerics.exact_moments`).
* **Float input** is reduced by the backends to per-batch float64 ``(count, mean, M2)`` (float32
  is allowed only over short runs inside a kernel, always after subtracting a per-channel
  reference value), and batches are combined with Chan et al.'s parallel formula in float64
  (:func:`~gpustats.numerics.chan_merge`), compensated: the state keeps ``mean_lo``, the rounding
  error of ``mean``, so large offsets cost no precision when data is split into batches.

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
from typing import Any, Sequence

import numpy as np

from .image_moments import ImageMoments
from .numerics import FLOAT_DTYPES, INTEGER_DTYPES, Moments, StatsError, chan_merge, exact_moments
from .numerics import frozen as _frozen
from .results import Stats

__all__ = ["ChannelStats", "Stats", "StatsError", "ImageMoments", "INTEGER_DTYPES", "FLOAT_DTYPES", "dtype_family",
           "exact_row_moments"]

_FORMAT = "gpustats.ChannelStats/1"


def dtype_family(dtype: str | None) -> str:
    if dtype is None:
        return "empty"
    return "int" if dtype in INTEGER_DTYPES else "float"


def _f64(values: Any) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(-1)
    arr.setflags(write=False)
    return arr


def _i64(values: Any) -> np.ndarray:
    arr = np.array(values, dtype=np.int64).reshape(-1)
    arr.setflags(write=False)
    return arr


def _ints(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _range(hist_range: Sequence[float] | None) -> tuple[float, float] | None:
    return None if hist_range is None else (float(hist_range[0]), float(hist_range[1]))


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
        mean_lo: float64, the rounding error of ``mean`` (float input; the true mean is
            ``mean + mean_lo`` to about float64 precision of the spread, not of the offset).
        hist_ends: int64 [C, 2] exact counts of values at the lowest and highest value of the
            histogram range (``numerics.range_ends``), kept where the end bins hold more than one value.
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
    mean_lo: np.ndarray | None = None
    hist_ends: np.ndarray | None = None

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
        return dtype_family(self.dtype)

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
        hist_ends: np.ndarray | None = None,
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
            _i64([0] * channels), s, q, _frozen(hist, np.int64), _range(hist_range), comoment, icross, images,
            None, _frozen(hist_ends, np.int64),
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
        mean_lo: Sequence[float] | None = None,
        hist_ends: np.ndarray | None = None,
    ) -> "ChannelStats":
        """State of float data from float64 per-channel ``(count, mean, M2)`` (``mean_lo``: mean's rounding error)."""
        if dtype not in FLOAT_DTYPES:
            raise StatsError(f"from_moments needs a float dtype {FLOAT_DTYPES}, got {dtype!r}")
        channels = len(count)
        return ChannelStats(
            dtype, float(scale), _i64(count), _f64(mean), _f64(m2), _f64(vmin), _f64(vmax),
            _i64(nonfinite if nonfinite is not None else [0] * channels), None, None,
            _frozen(hist, np.int64), _range(hist_range), _frozen(comoment, np.float64), None, images,
            _f64(mean_lo if mean_lo is not None else [0.0] * channels), _frozen(hist_ends, np.int64),
        )

    def moments(self) -> Moments:
        """``(count, mean, M2, mean_lo, comoment)`` of this state, for :func:`~gpustats.numerics.chan_merge`."""
        lo = self.mean_lo if self.mean_lo is not None else np.zeros(self.channels)
        return Moments(self.count, self.mean, self.m2, lo, self.comoment)

    def end_counts(self) -> np.ndarray | None:
        """int64 [C, 2] values at the histogram range's ends (see ``hist_ends``), or None if not known."""
        if self.hist is None:
            return None
        if self.hist_ends is not None:
            return self.hist_ends
        if self.dtype == "uint8" and self.hist.shape[1] == 256 and self.hist_range == (0.0, 256.0):
            return np.stack([self.hist[:, 0], self.hist[:, -1]], axis=1)  # one value per bin
        return None

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
        if self.family == "int" and self.dtype != other.dtype:
            raise StatsError(
                f"cannot merge {self.dtype} data with {other.dtype} data: an integer state is one dtype's (its "
                "histogram, range and label); convert all batches to one dtype first"
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
        any order). Float states use the compensated Chan formula in float64 (module docstring).
        """
        if other.is_empty:
            return self
        if self.is_empty:
            return other
        self._check_compatible(other)
        hist = None if self.hist is None else self.hist + other.hist
        ends = None
        if self.hist_ends is not None and other.hist_ends is not None:  # unknown on either side: unknown
            ends = self.hist_ends + other.hist_ends
        images = None if self.images is None else self.images.merge(other.images)
        vmin = np.minimum(self.min, other.min)
        vmax = np.maximum(self.max, other.max)
        if self.family == "int":
            cross = None
            if self.icross is not None:
                cross = [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(self.icross, other.icross)]
            return ChannelStats.from_integer_sums(
                [a + b for a, b in zip(self.count.tolist(), other.count.tolist())],
                [a + b for a, b in zip(self.isum, other.isum)],
                [a + b for a, b in zip(self.isumsq, other.isumsq)],
                vmin, vmax, dtype=self.dtype, scale=self.scale, hist=hist, hist_range=self.hist_range,
                cross=cross, images=images, hist_ends=ends,
            )
        updated = chan_merge(self.moments(), other.moments())
        return ChannelStats.from_moments(
            updated.count, updated.mean, updated.m2, vmin, vmax,
            dtype=self.dtype if self.dtype == other.dtype else "float64", scale=self.scale,
            nonfinite=self.nonfinite + other.nonfinite, hist=hist, hist_range=self.hist_range,
            comoment=updated.comoment, images=images, mean_lo=updated.mean_lo, hist_ends=ends,
        )

    # ------------------------------------------------------------------ results
    def finalize(self, ddof: int = 0) -> Stats:
        """Turn the state into answers on the reported scale (values divided by ``scale``).

        ``ddof=0`` (default) gives the population std over all pixels, the number
        ``torchvision.transforms.Normalize`` wants. Integer data: mean and variance rounded once.
        """
        if self.is_empty:
            raise StatsError("no data was reduced: the loader yielded no batches (or every batch was empty)")
        if ddof not in (0, 1):
            raise StatsError(f"ddof must be 0 or 1, got {ddof!r}")
        count = self.count.copy()
        try:
            if self.family == "int":
                mean_a, var_a = exact_moments(count.tolist(), self.isum, self.isumsq, ddof=ddof, scale=self.scale)
            else:
                with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
                    mean_a = np.where(count > 0, self.mean, np.nan) / self.scale
                    var_a = np.where(count - ddof > 0, self.m2 / np.maximum(count - ddof, 1), np.nan) / self.scale**2
        except OverflowError:  # int / int beyond float64
            mean_a = var_a = np.full(count.shape, np.inf)
        var_a = np.maximum(var_a, 0.0)  # guards -0.0 from rounding; NaN stays NaN
        # a variance that the scale alone pushes out of float64 (0 for data with spread, or inf) is a
        # wrong number, not a result: refuse it (StatsOptions keeps scales where 8/16-bit and float32 fit)
        spread = np.isfinite(self.m2) & (self.m2 > 0) & (count - ddof > 0)
        lost = spread & ((var_a == 0) | ~np.isfinite(var_a))
        lost |= np.isfinite(self.mean) & ~np.isfinite(mean_a) & (count > 0)
        if lost.any():
            raise StatsError(f"scale={self.scale!r} puts the statistics of this data out of float64's range (a "
                             "variance or mean would read 0 or inf); pass a scale closer to the data's magnitude")
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
        if self.mean_lo is not None:
            d["mean_lo"] = _floats_out(self.mean_lo)
        if self.isum is not None:
            d["isum"] = [str(v) for v in self.isum]  # strings: exact beyond 2**53 in every JSON reader
            d["isumsq"] = [str(v) for v in self.isumsq]
        if self.hist is not None:
            d["hist"] = self.hist.tolist()
            d["hist_range"] = None if self.hist_range is None else [float(v).hex() for v in self.hist_range]
        if self.hist_ends is not None:
            d["hist_ends"] = self.hist_ends.tolist()
        if self.comoment is not None:
            d["comoment"] = [_floats_out(row) for row in self.comoment]
        if self.icross is not None:
            d["icross"] = [[str(v) for v in row] for row in self.icross]
        if self.images is not None:
            d["images"] = self.images.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict) -> "ChannelStats":
        """The state :meth:`to_dict` wrote; anything else raises :class:`StatsError` naming the entry.

        Every entry is checked as a checkpoint's state is (:func:`gpustats.checkpoint_checks.check_state`:
        types, lengths, and invariants such as non-negative counts, exact sums that fit the counts
        and the min/max, means and M2 that are those of the sums), so a damaged or edited state
        cannot give numbers its own fields contradict.
        """
        from .checkpoint_checks import CheckpointError, check_state

        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise StatsError(f"not a gpustats state (format {found!r}, expected {_FORMAT!r}); "
                             "pass the text ChannelStats.to_json() wrote")
        try:
            check_state(d)
        except CheckpointError as exc:
            raise StatsError(f"not a valid gpustats state ({exc}); pass the unmodified text ChannelStats.to_json() "
                             "wrote") from None
        try:
            return ChannelStats._from_dict(d)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            if isinstance(exc, StatsError):
                raise
            raise StatsError(f"a damaged gpustats state ({type(exc).__name__}: {exc}); "
                             "pass the unmodified text ChannelStats.to_json() wrote") from None

    @staticmethod
    def _from_dict(d: dict) -> "ChannelStats":
        dtype = d["dtype"]
        if dtype is None:
            return ChannelStats.empty()
        if dtype not in INTEGER_DTYPES + FLOAT_DTYPES:
            raise StatsError(f"unknown dtype {dtype!r} in a gpustats state")
        hist = None if "hist" not in d else np.array(d["hist"], dtype=np.int64)
        hist_range = None
        if d.get("hist_range") is not None:
            hist_range = (float.fromhex(d["hist_range"][0]), float.fromhex(d["hist_range"][1]))
        ends = None if "hist_ends" not in d else np.array(d["hist_ends"], dtype=np.int64)
        images = ImageMoments.from_dict(d["images"]) if "images" in d else None
        if dtype_family(dtype) == "int":
            state = ChannelStats.from_integer_sums(
                d["count"], [int(v) for v in d["isum"]], [int(v) for v in d["isumsq"]],
                _floats_in(d["min"]), _floats_in(d["max"]), dtype=dtype, scale=float.fromhex(d["scale"]),
                hist=hist, hist_range=hist_range,
                cross=None if "icross" not in d else [[int(v) for v in row] for row in d["icross"]],
                images=images, hist_ends=ends,
            )
            return replace(state, nonfinite=_i64(d["nonfinite"]))
        return ChannelStats.from_moments(
            d["count"], _floats_in(d["mean"]), _floats_in(d["m2"]), _floats_in(d["min"]), _floats_in(d["max"]),
            dtype=dtype, scale=float.fromhex(d["scale"]), nonfinite=d["nonfinite"], hist=hist,
            hist_range=hist_range,
            comoment=None if "comoment" not in d else np.array([_floats_in(r) for r in d["comoment"]]),
            images=images, mean_lo=_floats_in(d["mean_lo"]) if "mean_lo" in d else None, hist_ends=ends,
        )

    def to_json(self) -> str:
        """Exact JSON text: ``ChannelStats.from_json(s.to_json()) == s`` bit for bit."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> "ChannelStats":
        """The state :meth:`to_json` wrote, bit for bit (every check of :meth:`from_dict` applies: a
        damaged or hand-edited text raises :class:`StatsError` saying what is wrong, never a wrong state).

        >>> import numpy as np
        >>> from gpustats import Accumulator
        >>> acc = Accumulator(device="cpu", layout="CHW")
        >>> acc.update(np.arange(12, dtype=np.uint8).reshape(3, 2, 2))
        >>> state = acc.state()
        >>> ChannelStats.from_json(state.to_json()) == state
        True
        >>> ChannelStats.from_json("{")
        Traceback (most recent call last):
        ...
        gpustats.numerics.StatsError: not valid JSON (...); pass the text ChannelStats.to_json() wrote
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise StatsError(f"not valid JSON ({exc}); pass the text ChannelStats.to_json() wrote") from None
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
    """Mean and M2 of integer data from exact totals, each rounded once (the rule is
    :func:`gpustats.numerics.exact_moments`), with the state's mean 0 (not NaN) where ``n == 0``."""
    mean, m2 = exact_moments(count, total, total_sq)
    return np.where(np.isnan(mean), 0.0, mean), m2


def _comoment_from_ints(n: Sequence[int], s: Sequence[int], cross: Sequence[Sequence[int]]) -> np.ndarray:
    """Exact co-moments sum((x_i - m_i)(x_j - m_j)) = (n * cross_ij - s_i s_j) / n, rounded once."""
    channels = len(n)
    count = n[0] if channels else 0
    s_i = np.array([[v] for v in s], dtype=object)
    s_j = np.array([list(s)], dtype=object)
    out = exact_moments(count, s_i, np.array(cross, dtype=object).reshape(channels, channels), other_total=s_j)[1]
    out = np.array(out, dtype=np.float64).reshape(channels, channels)
    out.setflags(write=False)
    return out

