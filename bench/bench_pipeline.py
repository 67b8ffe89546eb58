"""Host batches -> statistics on the GPU, against the host-to-device copy bandwidth (real GPU only).

uint8 NCHW batches of 256 x 3 x 224 x 224 (38.5 MB) in pinned and in pageable host memory, about
``size`` bytes in all (default 256 MiB and 1 GiB; ``GPUSTATS_BENCH_SIZES`` overrides):

* ``copy``: ``torch`` host-to-device copies of every batch (``non_blocking=True`` when pinned), then
  a synchronization: the PCIe roofline of this run for that kind of memory;
* ``accumulator``: ``Accumulator(device="cuda").update(batch)`` for every batch, then ``state()``
  (which synchronizes): what training code or ``gpustats stats`` pays end to end.

Host wall-clock (perf_counter around the loop and the final synchronization). extra_info: bytes,
GB/s, and for ``accumulator`` the fraction of the ``copy`` GB/s of the same memory kind measured
earlier in the session (the target is ~1.0: reducing costs no more than moving the bytes).

    pytest bench/bench_pipeline.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch

from benchlib import HW, HostTimer, needs_gpu, rounds, run_timed, sizes, timing_info
from gpustats.benchmark import GIB, MIB, bench_id, copy_all, image_batches, reduce_all

pytestmark = needs_gpu

SIZES = sizes((256 * MIB, GIB))
MODES = ("copy", "accumulator")  # copy first: the accumulator's ratio needs it
PARAMS = [pytest.param(memory, mode, size, id=bench_id(f"{mode}-{memory}", "uint8", "NCHW", size))
          for size in SIZES for memory in ("pinned", "pageable") for mode in MODES]

_host: dict = {}


def _batches(memory, size):
    key = (memory, size)
    if key not in _host:
        _host.clear()
        batches = image_batches("uint8", "NCHW", size, batch_images=256, hw=HW)
        _host[key] = [b.pin_memory() for b in batches] if memory == "pinned" else batches
    return _host[key]


@pytest.mark.benchmark(group="pipeline")
@pytest.mark.parametrize("memory, mode, size", PARAMS)
def test_pipeline(benchmark, measured, memory, mode, size):
    from gpustats import Accumulator

    batches = _batches(memory, size)
    nbytes = sum(b.numel() for b in batches)
    if mode == "copy":
        work = copy_all(batches, non_blocking=memory == "pinned")
    else:
        acc = Accumulator(device="cuda")
        work = reduce_all(acc, batches)

    timing = run_timed(benchmark, HostTimer(work, sync=torch.cuda.synchronize), warmup=1, rounds_=rounds(5))
    info = timing_info(timing, nbytes)
    info.update(memory=memory, mode=mode, batches=len(batches), batch_shape=list(batches[0].shape))
    measured[("pipeline", memory, size, mode)] = info["gbps"]
    copy = measured.get(("pipeline", memory, size, "copy"))
    if mode == "accumulator":
        info["strategy"] = acc.strategy
        if copy:
            info["fraction_of_copy"] = info["gbps"] / copy
    benchmark.extra_info.update(info)
    assert info["gbps"] > 0
