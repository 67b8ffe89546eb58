"""Cost of the options: histogram + covariance + per_image vs moments only (real GPU only).

Same device-resident uint8 NCHW batches (256 x 3 x 224 x 224) through ``Accumulator(device="cuda")``
with no options and with every option on; host wall-clock around the update loop and ``state()``.
Project target: all options on costs <= 1.5x moments only (``extra_info["ratio_vs_moments"]``,
measured, not asserted).

    pytest bench/bench_options.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch

from benchlib import HW, HostTimer, needs_gpu, rounds, run_timed, sizes, timing_info
from gpustats.benchmark import MIB, bench_id, image_batches, reduce_all

pytestmark = needs_gpu

OPTIONS = {"moments": {}, "all-options": {"histogram": True, "covariance": True, "per_image": True}}
SIZES = sizes((256 * MIB,))
PARAMS = [pytest.param(name, size, id=bench_id(name, "uint8", "NCHW", size)) for size in SIZES for name in OPTIONS]

_data: dict = {}


def _batches(size):
    if size not in _data:
        _data.clear()
        _data[size] = image_batches("uint8", "NCHW", size, batch_images=256, hw=HW, device="cuda")
    return _data[size]


@pytest.mark.benchmark(group="options")
@pytest.mark.parametrize("options, size", PARAMS)
def test_options(benchmark, measured, options, size):
    from gpustats import Accumulator

    batches = _batches(size)
    nbytes = sum(b.numel() for b in batches)
    acc = Accumulator(device="cuda", **OPTIONS[options])

    work = reduce_all(acc, batches)
    timing = run_timed(benchmark, HostTimer(work, sync=torch.cuda.synchronize), warmup=1, rounds_=rounds(10))
    info = timing_info(timing, nbytes)
    info.update(options=options, strategy=acc.strategy, batches=len(batches), **OPTIONS[options])
    measured[("options", size, options)] = timing.median
    base = measured.get(("options", size, "moments"))
    if options != "moments" and base:
        info["ratio_vs_moments"] = timing.median / base
    benchmark.extra_info.update(info)
    assert info["gbps"] > 0
