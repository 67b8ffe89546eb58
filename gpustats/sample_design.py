"""How a sampled run chooses its images: size strata and the visiting order (see :mod:`gpustats.intervals`).

When each unit's size is known before it is read, the units are put in strata by size, a power of
two apart (:func:`size_strata`), and visited in an order that keeps every stratum's share of the
visited units equal to its share of the population's total size (:func:`visiting_order`): the
largest images, which hold many of the pixels, come early and a stratum of few large images is
soon read entirely (then counted exactly, not estimated). Every stratum first gets two units
(its variance can then be estimated). Within a stratum the order is a seeded random permutation,
so the units visited of each stratum are a simple random sample of it at every point of the run:
the design is stratified random sampling (Cochran, *Sampling Techniques*, 1977, ch. 5), with an
allocation proportional to the strata's total sizes (Neyman's allocation when a unit's spread is
proportional to its size, as a ratio estimator's residuals are).

Sizes (:func:`unit_sizes`): image files and archive members are measured by their size in bytes
(a cheap ``stat``, or the archive's index), which grows with the pixel count for one format and
quality; a list of arrays or tensors by its elements; anything else by the ``sizes=`` a caller
passes. Unknown sizes give one stratum: simple random sampling, in the order of a seeded
permutation.

>>> import numpy as np
>>> sizes = np.array([100] * 6 + [10_000] * 2)      # two images a hundred times larger
>>> labels, counts = size_strata(sizes)
>>> labels.tolist(), counts.tolist()
([0, 0, 0, 0, 0, 0, 1, 1], [6, 2])
>>> order = visiting_order(8, sizes, seed=0)
>>> sorted(order[:4].tolist())[-2:]                  # the two large ones are read among the first four
[6, 7]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["size_strata", "visiting_order", "unit_sizes", "sizes_of_items", "checked_sizes"]

#: units each stratum gets before the proportional allocation starts (a variance needs two)
FIRST_PER_STRATUM = 2


def size_strata(sizes: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, counts)``: each unit's stratum (0 = the smallest sizes) and the units per stratum.

    A stratum holds the sizes of one power of two (``floor(log2(size))``; a size below 1 counts as 1).
    """
    classes = np.floor(np.log2(np.maximum(np.asarray(sizes, dtype=np.float64), 1.0))).astype(np.int64)
    present, labels = np.unique(classes, return_inverse=True)
    return labels.reshape(-1), np.bincount(labels.reshape(-1), minlength=present.shape[0])


def visiting_order(population: int, sizes: Any, seed: int) -> np.ndarray:
    """A seeded permutation of the ``population`` units: strata by size, each visited in proportion to
    its total size.

    ``sizes`` [N] or None (unknown). One stratum (unknown or equal sizes) gives
    ``np.random.default_rng(seed).permutation(N)``, the order of simple random sampling. Within a
    stratum the units come in a seeded random order; stratum ``h``'s ``j``-th unit is due at
    ``(j + 1/2) / share_h`` (its share of the total size), after the first
    :data:`FIRST_PER_STRATUM` units of every stratum, which come first.
    """
    rng = np.random.default_rng(seed)
    if sizes is None:
        return rng.permutation(population)
    sizes = np.asarray(sizes, dtype=np.float64)
    labels, counts = size_strata(sizes)
    if counts.shape[0] == 1:
        return rng.permutation(sizes.shape[0])
    mass = np.bincount(labels, weights=np.maximum(sizes, 1.0), minlength=counts.shape[0])
    share = mass / mass.sum()
    members = [rng.permutation(np.flatnonzero(labels == h)) for h in range(counts.shape[0])]
    unit = np.concatenate(members)
    rank = np.concatenate([np.arange(m.shape[0]) for m in members])
    stratum = np.concatenate([np.full(m.shape[0], h) for h, m in enumerate(members)])
    early = rank < FIRST_PER_STRATUM
    due = (rank + 0.5) / share[stratum]
    first = np.lexsort((stratum[early], rank[early]))  # round by round, smallest strata first
    rest = np.argsort(due[~early], kind="stable")
    return np.concatenate([unit[early][first], unit[~early][rest]])


def checked_sizes(sizes: Any, population: int) -> np.ndarray:
    """``sizes=`` as given by a caller: one finite number >= 0 per item, else a ValueError saying so."""
    out = np.asarray(sizes, dtype=np.float64).reshape(-1)
    if out.shape[0] != population or not np.all(np.isfinite(out) & (out >= 0)):
        raise ValueError(f"sizes must give one size >= 0 per item ({population} items), e.g. each image's pixel "
                         f"count or file size; got {out.shape[0]} values")
    return out


def unit_sizes(files: Any) -> np.ndarray | None:
    """Sizes in bytes of image files (a list of paths) or of archive items (a ``Segment``); None
    where some item's size is not known before it is read (Parquet rows)."""
    if isinstance(files, list):
        out = np.empty(len(files))
        for i, path in enumerate(files):
            try:
                out[i] = os.stat(path).st_size
            except OSError:
                out[i] = 0  # read later as a bad file
        return out
    from .sources.units import MemberUnit

    out = np.empty(len(files))
    for pos in range(len(files)):
        k, i = files.locate(pos)
        unit = files.units[k]
        if hasattr(unit, "url"):  # a remote image file: its size as listed (sources.storelist.RemotePath)
            out[pos] = unit.size
        elif isinstance(unit, (str, os.PathLike)):
            try:
                out[pos] = os.stat(unit).st_size
            except OSError:
                out[pos] = 0
        elif isinstance(unit, MemberUnit):
            out[pos] = unit.sizes[i]
        else:
            return None
    return out


def sizes_of_items(dataset: Any) -> np.ndarray | None:
    """Element counts of a list or tuple of arrays/tensors (known without reading them); else None."""
    if not isinstance(dataset, (list, tuple)) or not dataset:
        return None
    out = np.empty(len(dataset))
    for i, item in enumerate(dataset):
        size = getattr(item, "size", None)
        size = item.numel() if callable(getattr(item, "numel", None)) else size
        if not isinstance(size, (int, np.integer)):
            return None
        out[i] = size
    return out
