"""Decode throughput: images/s of gpustats.sources.iter_decoded with 0, 1, 2, ... CPU workers.

The corpus is make_jpeg_corpus (500x375, quality 90, ~90 KB per file, ImageNet-like), written
once into a temp dir and reused (``GPUSTATS_BENCH_CORPUS``: how many files, default 256). The
reference is Pillow's own single-process rate (open + convert("RGB") + numpy) measured in the same
session; ``extra_info["efficiency"]`` is images/s over that rate times max(1, workers), and
``steady_images_per_s`` leaves out worker start-up (time to the first batch; workers are not
persistent, so a short corpus pays it in full). ``pillow_processes_images_per_s`` is the same
Pillow loop run in that many plain forked processes at once over interleaved shares of the corpus
(pool start-up excluded), also measured in the same session: what the machine itself gives for N
decoding processes, since N cores rarely give N times one core's rate (shared caches, memory
bandwidth, vCPUs that are not whole cores). ``efficiency_vs_pillow_processes`` compares the steady
rate with it. GPU decode (nvJPEG via torchvision) runs where available.

    pytest bench/bench_decode.py --benchmark-enable
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchlib import TINY, HostTimer, jpeg_corpus, rounds, run_timed

N_FILES = int(os.environ.get("GPUSTATS_BENCH_CORPUS", 16 if TINY else 256))
SIZE = (64, 48) if TINY else (500, 375)
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = sorted({0, 1} if TINY else {0, 1, 2, CPUS})
BATCH = 16


@pytest.fixture(scope="session")
def corpus() -> list[Path]:
    return jpeg_corpus(N_FILES, SIZE)


def _pillow_decode_all(files):
    # Keep a batch of arrays alive, as any consumer does: freeing every 0.5 MB array at once makes
    # glibc malloc mmap/munmap (and page-fault) each one, which halves the rate on this machine.
    batch = []
    for path in files:
        with Image.open(path) as im:
            batch.append(np.asarray(im.convert("RGB")))
        if len(batch) == BATCH:
            batch = []


@pytest.fixture(scope="session")
def pillow_rate(corpus) -> float:
    """Pillow's single-process images/s on the corpus (best of 3 passes after a warm one)."""
    _pillow_decode_all(corpus)
    best = min(_timed(lambda: _pillow_decode_all(corpus)) for _ in range(3))
    return len(corpus) / best


@pytest.fixture(scope="session")
def pillow_processes_rate(corpus):
    """``rate(n)``: images/s of ``n`` plain Pillow processes decoding the corpus together (best of 3)."""
    cache: dict[int, float] = {}

    def rate(n: int) -> float:
        if n not in cache:
            shares = [corpus[i::n] for i in range(n)]
            with multiprocessing.get_context("fork").Pool(n) as pool:
                pool.map(_pillow_decode_all, [corpus[: 4 * BATCH]] * n)  # start-up and warm-up
                best = min(_timed(lambda: pool.map(_pillow_decode_all, shares, chunksize=1)) for _ in range(3))
            cache[n] = len(corpus) / best
        return cache[n]

    return rate


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.benchmark(group="decode")
def test_pillow_single_process(benchmark, corpus, pillow_rate):
    timing = run_timed(benchmark, HostTimer(lambda: _pillow_decode_all(corpus)), warmup=0, rounds_=rounds(3))
    benchmark.extra_info.update(images=len(corpus), images_per_s=len(corpus) / timing.median,
                                reference_images_per_s=pillow_rate, **timing.to_dict())


@pytest.mark.benchmark(group="decode")
@pytest.mark.parametrize("workers", WORKERS, ids=[f"iter_decoded-workers{w}" for w in WORKERS])
def test_iter_decoded(benchmark, corpus, pillow_rate, pillow_processes_rate, workers):
    from gpustats.sources import iter_decoded

    steady = []  # images/s after the first batch arrived: worker start-up excluded

    def decode_all():
        n = 0
        first_at = None
        for batch in iter_decoded(corpus, workers=workers, batch_size=BATCH):
            n += sum(r.array is not None for r in batch)
            if first_at is None:
                first_at, first_n = time.perf_counter(), n
        if n > first_n:
            steady.append((n - first_n) / (time.perf_counter() - first_at))
        assert n == len(corpus)

    timing = run_timed(benchmark, HostTimer(decode_all), warmup=0, rounds_=rounds(3))
    rate = len(corpus) / timing.median
    if steady:
        benchmark.extra_info["steady_images_per_s"] = float(np.median(steady))
    if workers > 0:
        machine = pillow_processes_rate(workers)
        benchmark.extra_info["pillow_processes_images_per_s"] = machine
        if steady:
            benchmark.extra_info["efficiency_vs_pillow_processes"] = float(np.median(steady)) / machine
    ideal = pillow_rate * max(1, workers)
    benchmark.extra_info.update(images=len(corpus), workers=workers, cpus=CPUS, images_per_s=rate,
                                images_per_s_per_worker=rate / max(1, workers), pillow_images_per_s=pillow_rate,
                                ideal_images_per_s=ideal, efficiency=rate / ideal,
                                mb_per_s=sum(p.stat().st_size for p in corpus) / timing.median / 1e6,
                                **timing.to_dict())
    assert rate > 0


@pytest.mark.gpu
@pytest.mark.benchmark(group="decode")
def test_gpu_decode(benchmark, corpus):
    import torch

    from gpustats.sources.gpu import decode_files_gpu, gpu_decode_available

    ok, why = gpu_decode_available("cuda")
    if not ok:
        pytest.skip(f"GPU decode unavailable: {why}")

    def decode_all():
        for first in range(0, len(corpus), 64):
            decode_files_gpu(corpus[first:first + 64], indices=range(first, min(len(corpus), first + 64)))

    timing = run_timed(benchmark, HostTimer(decode_all, sync=torch.cuda.synchronize), warmup=1, rounds_=rounds(3))
    benchmark.extra_info.update(images=len(corpus), images_per_s=len(corpus) / timing.median, **timing.to_dict())
