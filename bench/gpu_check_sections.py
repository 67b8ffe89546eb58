"""The measuring sections of ``bench/gpu_check.sh`` (each runs in its own process; see gpu_check.py).

Every section is a function ``section(ctx) -> dict`` that calls ``ctx.save(result)`` whenever it
has something worth keeping, so a section stopped at its deadline still leaves what it measured;
``ctx.left()`` is the seconds left before that deadline and ``ctx.skip(what, reason)`` lists what
it did not do. ``ctx.dry`` is the CPU-only dress rehearsal (numba simulator, tiny sizes): GPU-only
measurements are skipped with the reason and everything else runs the same code.

Here: ``machine``, ``pipeline``, ``sync``, ``calls`` and the registry ``SECTIONS``. The strategy sweep (its
timings and roofline) is in gpu_check_sweep.py; the JPEG sections ``decode`` and ``engine`` are in
gpu_check_decode.py (imported as top-level modules: bench/ is on the sections' PYTHONPATH).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from gpustats.benchmark import MIB, copy_all, image_batches, machine_info, reduce_all, time_host

from gpu_check_decode import decode, engine
from gpu_check_sweep import sweep


# ----------------------------------------------------------------------------- machine


def machine(ctx) -> dict:
    info = machine_info("cpu" if ctx.dry else "cuda")
    # the caller knows which tree it copied (a copied .git can point elsewhere): GPUSTATS_COMMIT wins
    info["commit"] = os.environ.get("GPUSTATS_COMMIT") or info.get("commit")
    info["simulator"] = ctx.dry
    info["torch_cuda_available"] = torch.cuda.is_available()
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as exc:  # optional extra
        info["torchvision"] = f"not importable: {type(exc).__name__}: {exc}"[:200]
    from numba import cuda

    from gpustats import kernels

    info["strategies"] = sorted(kernels.STRATEGIES)
    if not ctx.dry:
        try:
            info["cuda_driver_api"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
            info["numba_cuda_runtime"] = ".".join(map(str, cuda.runtime.get_version()))
        except Exception as exc:
            info["cuda_driver_api"] = f"unknown ({exc})"[:200]
        dev = cuda.get_current_device()
        info["compute_capability"] = ".".join(map(str, dev.compute_capability))
    # a trivial kernel: does numba compile and launch here, and how long does a compile take
    started = time.perf_counter()
    acc = kernels.Accumulators.zeros(1, integer=True)
    kernels.get_strategy("tree").reduce(np.arange(100, dtype=np.uint8).reshape(1, 1, 100), "CP", "uint8", acc)
    info["probe_sum_ok"] = int(acc.to_host()["isum"][0]) == 4950
    info["probe_compile_s"] = round(time.perf_counter() - started, 3)
    ctx.save(info)
    return info


# ----------------------------------------------------------------------------- pipeline


def pipeline(ctx) -> dict:
    """Host uint8 batches into Accumulator(device="cuda") vs host-to-device copies; extras vs moments."""
    from gpustats import Accumulator

    result = {"host": [], "extras": []}
    if ctx.dry:
        ctx.skip("pipeline: pinned/pageable host batches vs host-to-device copy", "needs a GPU (PCIe copies)")
        hw, nbytes, batch = 8, 3 * 8 * 8 * 8, 4
    else:
        hw, nbytes, batch = 224, 512 * MIB, 256
    sync = (lambda: None) if ctx.dry else torch.cuda.synchronize
    if not ctx.dry:
        batches = image_batches("uint8", "NCHW", nbytes, batch_images=batch, hw=hw)
        total = sum(b.numel() for b in batches)
        for memory in ("pinned", "pageable"):
            if ctx.left() < 10:
                ctx.skip(f"pipeline: {memory}", "the pipeline's time budget ran out")
                continue
            host = [b.pin_memory() for b in batches] if memory == "pinned" else batches
            copy = copy_all(host, non_blocking=memory == "pinned")
            acc = Accumulator(device="cuda")
            reduce = reduce_all(acc, host)

            copy_t = time_host(copy, warmup=1, repeats=5, sync=sync)
            acc_t = time_host(reduce, warmup=1, repeats=5, sync=sync)
            copy_gbps, acc_gbps = total / copy_t.median / 1e9, total / acc_t.median / 1e9
            result["host"].append({"memory": memory, "bytes": total, "batches": len(host),
                                   "batch_shape": list(host[0].shape), "copy_gbps": copy_gbps,
                                   "accumulator_gbps": acc_gbps, "fraction_of_copy": acc_gbps / copy_gbps,
                                   "strategy": acc.strategy, "copy": copy_t.to_dict(), "accumulator": acc_t.to_dict()})
            ctx.save(result)
            host = copy = reduce = acc = None  # free the pinned batches and the device buffer
    # extras (histogram + covariance + per_image) against moments only, same device uint8 batch
    (x,) = image_batches("uint8", "NCHW", nbytes // 2, batch_images=max(1, nbytes // 2 // (3 * hw * hw)), hw=hw,
                         device="cpu" if ctx.dry else "cuda")
    for name, options in (("moments", {}), ("histogram", {"histogram": True}), ("covariance", {"covariance": True}),
                          ("per_image", {"per_image": True}),
                          ("all", {"histogram": True, "covariance": True, "per_image": True})):
        if ctx.left() < 5:
            ctx.skip(f"pipeline: extras {name}", "the pipeline's time budget ran out")
            continue
        acc = Accumulator(device="cuda", **options)
        timing = time_host(reduce_all(acc, [x]), warmup=0 if ctx.dry else 1, repeats=1 if ctx.dry else 5, sync=sync)
        result["extras"].append({"options": name, "bytes": x.numel(), "strategy": acc.strategy,
                                 "gbps": x.numel() / timing.median / 1e9, **timing.to_dict()})
        ctx.save(result)
    base = next((r for r in result["extras"] if r["options"] == "moments"), None)
    for r in result["extras"]:
        if base:
            r["ratio_vs_moments"] = r["median_s"] / base["median_s"]
    ctx.save(result)
    return result


# ----------------------------------------------------------------------------- synchronizations


_SYNC_EVENTS = ("Synchronize", "cudaMemcpy", "cuMemcpyDtoH", "cuMemcpyHtoD", "cuMemAlloc", "cudaMalloc",
                "cuMemFree", "cudaFree", "cuCtxSynchronize")


def _count_host_syncs():
    """Patch numba's and torch's synchronizing entry points with counters; returns (counts, undo)."""
    from numba.cuda.cudadrv import devicearray, driver

    counts: dict = {}
    undo = []

    def wrap(owner, attr, label):
        original = getattr(owner, attr)

        def counted(*args, **kwargs):
            counts[label] = counts.get(label, 0) + 1
            return original(*args, **kwargs)

        setattr(owner, attr, counted)
        undo.append(lambda: setattr(owner, attr, original))

    wrap(driver.Stream, "synchronize", "numba Stream.synchronize")
    wrap(driver.Event, "synchronize", "numba Event.synchronize")
    wrap(driver.Context, "synchronize", "numba Context.synchronize")
    wrap(devicearray.DeviceNDArray, "copy_to_host", "numba copy_to_host")
    wrap(torch.cuda, "synchronize", "torch.cuda.synchronize")
    return counts, lambda: [u() for u in undo]


def _sync_window(acc, batches, updates) -> dict:
    """Synchronizations seen while ``acc`` takes ``updates`` batches, three ways (see :func:`sync`)."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    counts, undo = _count_host_syncs()
    events: dict = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for i in range(updates):
                        acc.update(batches[i % len(batches)])
                for evt in prof.events():
                    if any(key in evt.name for key in _SYNC_EVENTS):
                        events[evt.name] = events.get(evt.name, 0) + 1
            finally:
                torch.cuda.set_sync_debug_mode(0)
        torch_syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    finally:
        undo()
    profiled = sum(v for k, v in events.items() if "Synchronize" in k or k in ("cudaMemcpy", "cuMemcpyDtoH"))
    return {"profiler": profiled, "python_calls": sum(counts.values()), "torch_sync_debug": torch_syncs,
            "events": events, "counts": counts}


def sync(ctx) -> dict:
    """Device synchronizations per Accumulator.update on uint8 CUDA batches (and float, for contrast)."""
    if ctx.dry:
        ctx.skip("sync", "needs a GPU: counts device synchronizations with the CUDA profiler")
        return {}
    from gpustats import Accumulator

    result = {"cases": []}
    for case, dtype, options in (("uint8", "uint8", {}), ("float32, nan_policy=omit", "float32", {"nan_policy": "omit"}),
                                 ("float32, nan_policy=raise", "float32", {})):
        if ctx.left() < 8:
            ctx.skip(f"sync: {case}", "the sync section's time budget ran out")
            continue
        batches = image_batches(dtype, "NCHW", 8 * 64 * 3 * 224 * 224, batch_images=64, device="cuda")
        acc = Accumulator(device="cuda", **options)
        for b in batches[:2]:  # compile, first-batch shift, allocations
            acc.update(b)
        torch.cuda.synchronize()
        updates = 20
        # the profiler itself synchronizes when it stops: count a window with no update and subtract
        empty = _sync_window(acc, [], 0)
        seen = _sync_window(acc, batches, updates)
        acc.state()
        # three views of the same thing (a sync seen by the profiler is usually also a counted call):
        # the profiler's synchronizing API calls, the counted Python entry points, torch's sync warnings
        views = {key: max(0, seen[key] - empty[key]) / updates for key in ("profiler", "python_calls", "torch_sync_debug")}
        result["cases"].append({"case": case, "updates": updates, "strategy": acc.strategy,
                                "profiler_events": seen["events"], "host_sync_calls": seen["counts"],
                                "without_updates": {k: empty[k] for k in ("profiler", "python_calls", "torch_sync_debug")},
                                "syncs_per_update_by": views, "syncs_per_update": max(views.values())})
        ctx.save(result)
    return result


# ----------------------------------------------------------------------------- calls (issue 24)


def calls(ctx) -> dict:
    """``Accumulator.update`` per call at training-batch sizes beside torch (bench/gpu_calls.py), and the
    first update's compile time with a cold and a warm cubin cache (two fresh processes)."""
    import gpu_calls

    result: dict = {"rows": [], "updates": 2 if ctx.dry else gpu_calls.UPDATES,
                    "shapes": "tiny (simulator)" if ctx.dry else "the issue's"}

    def save(rows):
        result["rows"] = rows
        ctx.save(result)

    gpu_calls.measure_calls(ctx.dry, left=lambda: ctx.left() - (20 if ctx.dry else 40), save=save, skip=ctx.skip)
    if ctx.left() < (15 if ctx.dry else 30):
        ctx.skip("calls: compile cold vs warm cache", "the calls section's time budget ran out")
    else:
        result["compile"] = gpu_calls.measure_compile(ctx.dry, timeout=max(10.0, ctx.left() / 2 - 2))
    ctx.save(result)
    return result


SECTIONS = {"machine": machine, "sweep": sweep, "pipeline": pipeline, "decode": decode, "sync": sync, "calls": calls,
            "engine": engine}
