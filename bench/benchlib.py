"""Helpers shared by the bench suites (imported as ``benchlib``; pytest puts bench/ on sys.path).

Environment:

* ``GPUSTATS_BENCH_SIZES``: comma-separated sizes (``1MiB,256MiB,1GiB``; a bare number is MiB)
  that replace every suite's default sizes.
* ``GPUSTATS_BENCH_ROUNDS``: timed rounds per benchmark (default: 20 GPU, 5 CPU).
* ``GPUSTATS_BENCH_TINY=1``: tiny images and a tiny JPEG corpus (the smoke test in
  ``tests/test_bench_smoke.py`` uses it with ``--benchmark-disable``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import pytest
import torch

from gpustats.benchmark import DTYPES, IMAGE_HW, LAYOUTS, CudaEventTimer, Timing, cuda_roofline, image_batches, parse_sizes

TINY = os.environ.get("GPUSTATS_BENCH_TINY", "") not in ("", "0")
HW = 32 if TINY else IMAGE_HW
#: dtypes and layouts of the device suites; the smoke run (TINY) keeps one integer and one float
#: dtype and one layout, so that on a GPU machine it does not spend minutes compiling kernels
SUITE_DTYPES = ("uint8", "float32") if TINY else DTYPES
SUITE_LAYOUTS = ("NCHW",) if TINY else tuple(LAYOUTS)


def jpeg_corpus(n_files: int, size: tuple[int, int]) -> list:
    """A generated ImageNet-like JPEG corpus (q90), cached in the temp dir across runs."""
    import tempfile
    from pathlib import Path

    from gpustats.sources.synthetic import make_jpeg_corpus

    root = Path(tempfile.gettempdir()) / f"gpustats-bench-jpeg-{n_files}-{size[0]}x{size[1]}-q90"
    done = root / ".complete"
    if done.exists():
        return sorted(root.glob("*.jpg"))
    files = make_jpeg_corpus(root, n_files, size=size, quality=90)
    done.write_text("ok\n")
    return files


def sizes(default: tuple[int, ...]) -> list[int]:
    """The suite's sizes in bytes: ``GPUSTATS_BENCH_SIZES`` when set, else ``default``."""
    return parse_sizes(os.environ.get("GPUSTATS_BENCH_SIZES"), default)


def rounds(default: int) -> int:
    return int(os.environ.get("GPUSTATS_BENCH_ROUNDS", default))


def gpu_unavailable_reason() -> str | None:
    """None when the GPU suites can run (real GPU, CUDA backend usable, no simulator)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return "GPU benchmarks need a real GPU; NUMBA_ENABLE_CUDASIM=1 is set"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (GPU benchmarks run only on real hardware)"
    from gpustats.backends import cuda_unavailable_reason

    return cuda_unavailable_reason()


_GPU_REASON = gpu_unavailable_reason()
#: mark for GPU suites: skipped with the reason where there is no usable GPU
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(_GPU_REASON is not None, reason=str(_GPU_REASON))]


class HostTimer:
    """Wrap ``fn``: each call is timed with ``perf_counter`` (after ``sync()``, if given)."""

    def __init__(self, fn: Callable[[], Any], sync: Callable[[], Any] | None = None):
        self.fn, self.sync = fn, sync
        self.samples: list[float] = []

    def __call__(self) -> None:
        start = time.perf_counter()
        self.fn()
        if self.sync is not None:
            self.sync()
        self.samples.append(time.perf_counter() - start)

    def timing(self) -> Timing:
        return Timing(list(self.samples))


def run_timed(benchmark, timer, *, warmup: int, rounds_: int) -> Timing:
    """Warm up, then let pytest-benchmark drive ``timer`` (pedantic) and return the timer's samples.

    With ``--benchmark-disable`` pytest-benchmark calls the target once: the smoke mode.
    """
    for _ in range(warmup):
        timer.fn()
    if isinstance(timer, CudaEventTimer):
        torch.cuda.synchronize()
    elif timer.sync is not None:
        timer.sync()
    benchmark.pedantic(timer, rounds=rounds_, iterations=1, warmup_rounds=0)
    return timer.timing()


def timing_info(timing: Timing, nbytes: int) -> dict:
    """extra_info fields of one measurement (GB/s = bytes read / median seconds)."""
    return {"bytes": int(nbytes), "gbps": nbytes / timing.median / 1e9, **timing.to_dict()}


class DeviceData:
    """The current device tensor and its roofline; one tensor at a time (1 GiB inputs)."""

    def __init__(self) -> None:
        self.key = None
        self.tensor: torch.Tensor | None = None
        self.rooflines: dict = {}

    def get(self, dtype: str, layout: str, nbytes: int) -> tuple[torch.Tensor, dict]:
        key = (dtype, layout, nbytes)
        if key != self.key:
            self.tensor = None
            torch.cuda.empty_cache()
            per_image = 3 * HW * HW * torch.empty((), dtype=getattr(torch, dtype)).element_size()
            images = max(1, round(nbytes / per_image))
            (self.tensor,) = image_batches(dtype, layout, nbytes, batch_images=images, hw=HW, device="cuda")
            self.key = key
        if key not in self.rooflines:
            self.rooflines[key] = cuda_roofline(self.tensor, repeats=rounds(20))
        return self.tensor, self.rooflines[key]
