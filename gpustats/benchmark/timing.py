"""Timing for the benchmarks: host and CUDA-event timers, medians and spread, sizes and ids.

>>> t = Timing([0.3, 0.1, 0.2])
>>> t.median, t.min, t.max
(0.2, 0.1, 0.3)
>>> size_label(256 << 20), size_label(1 << 30), size_label(9633792), size_label(384), size_label(3072)
('256MiB', '1GiB', '9.2MiB', '384B', '3KiB')
"""

from __future__ import annotations

import math

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

MIB = 1 << 20
GIB = 1 << 30


@dataclass
class Timing:
    """Seconds per call of repeated measurements: median and spread."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def min(self) -> float:
        return float(min(self.samples))

    @property
    def max(self) -> float:
        return float(max(self.samples))

    @property
    def iqr(self) -> float:
        if len(self.samples) < 4:
            return self.max - self.min
        q = statistics.quantiles(self.samples, n=4)
        return float(q[2] - q[0])

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "iqr_s": self.iqr,
                "rounds": len(self.samples)}


def time_host(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5,
              sync: Callable[[], Any] | None = None) -> Timing:
    """Wall-clock seconds per ``fn()`` call after ``warmup`` calls (``sync()`` after each, if given)."""
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - start)
    return Timing(samples)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5,
                     repeats_for: dict[str, int] | None = None) -> dict[str, Timing]:
    """Wall-clock :class:`Timing` per named function, measured round-robin (one call of each per round).

    Interleaving keeps the ratios honest on a shared machine whose load drifts during the run:
    every method sees the same mix of quiet and busy moments. ``repeats_for`` caps the rounds of
    slow methods (they skip the later rounds).
    """
    repeats_for = repeats_for or {}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats):
        for name, fn in fns.items():
            if round_index >= repeats_for.get(name, repeats):
                continue
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in samples.items()}


class CudaEventTimer:
    """Call ``fn`` between two CUDA events on torch's current stream; keep each call's seconds.

    Used both directly (:func:`time_cuda`) and as the target of pytest-benchmark's pedantic mode,
    so that the host clock pytest-benchmark reads and the device clock agree on what ran.
    """

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.samples: list[float] = []

    def __call__(self) -> None:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        self.fn()
        end.record()
        end.synchronize()
        self.samples.append(start.elapsed_time(end) / 1e3)

    def timing(self) -> Timing:
        return Timing(list(self.samples))


def time_cuda(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10) -> Timing:
    """Device seconds per ``fn()`` call, from CUDA events, after ``warmup`` synchronized calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    timer = CudaEventTimer(fn)
    for _ in range(repeats):
        timer()
    return timer.timing()


def size_label(nbytes: int) -> str:
    """``256MiB``, ``1GiB``, ``9.2MiB``: the size part of a bench id."""
    if nbytes >= GIB and nbytes % GIB == 0:
        return f"{nbytes // GIB}GiB"
    if nbytes < MIB:
        return f"{nbytes}B" if nbytes < 1024 else f"{nbytes / 1024:.1f}KiB".replace(".0KiB", "KiB")
    mib = nbytes / MIB
    return f"{int(mib)}MiB" if mib == int(mib) else f"{mib:.1f}MiB"


def bench_id(strategy: str, dtype: str, layout: str, nbytes: int) -> str:
    """Readable id, e.g. ``hist8-uint8-NCHW-256MiB``."""
    return f"{strategy}-{dtype}-{layout}-{size_label(nbytes)}"


def parse_sizes(text: str | None, default: Sequence[int]) -> list[int]:
    """Sizes in bytes from ``"1MiB,256MiB,1GiB"`` (a bare number means MiB); ``default`` when empty."""
    if not text:
        return list(default)
    sizes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        low = item.lower()
        number, mult = low, MIB
        for suffix, factor in (("gib", GIB), ("gb", GIB), ("g", GIB), ("mib", MIB), ("mb", MIB), ("m", MIB),
                               ("kib", 1 << 10), ("kb", 1 << 10), ("k", 1 << 10)):
            if low.endswith(suffix):
                number, mult = low[: -len(suffix)], factor
                break
        try:
            value = float(number) * mult
        except ValueError:
            value = math.nan
        if not math.isfinite(value):  # "abc", "inf", "nan"
            raise ValueError(f"cannot read size {item!r}: use e.g. 1MiB, 256MiB, 1GiB (a bare number is MiB)")
        sizes.append(int(value))
    return sizes
