"""The measuring sections of ``bench/gpu_check.sh`` (each runs in its own process; see gpu_check.py).

Every section is a function ``section(ctx) -> dict`` that calls ``ctx.save(result)`` whenever it
has something worth keeping, so a section stopped at its deadline still leaves what it measured;
``ctx.left()`` is the seconds left before that deadline and ``ctx.skip(what, reason)`` lists what
it did not do. ``ctx.dry`` is the CPU-only dress rehearsal (numba simulator, tiny sizes): GPU-only
measurements are skipped with the reason and everything else runs the same code.

GPU timings are CUDA events on torch's current stream (``gpustats.benchmark.time_cuda``: warm-up,
then the median of the timed calls); under the simulator the same calls are timed with the host
clock. GB/s is input bytes read / median seconds, and every kernel row carries the fraction of the
roofline measured in the same process over the same tensor (device-to-device copy counted as read
+ write, and ``torch.sum``; the larger).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpustats.benchmark import (
    DTYPES,
    GIB,
    LAYOUTS,
    MIB,
    Timing,
    bench_id,
    copy_all,
    forum_recipe,
    image_batches,
    machine_info,
    reduce_all,
    size_label,
    time_host,
    torch_moments,
)

#: sweep sizes in the order they are measured (the targets are at >= 256 MiB)
SWEEP_SIZES = (256 * MIB, GIB, 8 * MIB)
DRY_SWEEP_BYTES = 3 * 8 * 8 * 2  # two 8x8 RGB images of uint8 under the simulator
REPEATS = 10


def _dims(layout):
    return (0, 2, 3) if layout == "NCHW" else (0, 1, 2)


def _timer(ctx, fn, repeats=REPEATS, warmup=3) -> Timing:
    if ctx.dry:  # simulator timings mean nothing: run the code once, keep CI quick
        return time_host(fn, warmup=0, repeats=1)
    from gpustats.benchmark import time_cuda

    return time_cuda(fn, warmup=warmup, repeats=repeats)


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


# ----------------------------------------------------------------------------- strategy sweep


def _device_tensor(ctx, dtype, layout, nbytes):
    if ctx.dry:
        (x,) = image_batches(dtype, layout, nbytes, batch_images=64, hw=8, pool=2)
        return x
    per_image = 3 * 224 * 224 * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    (x,) = image_batches(dtype, layout, nbytes, batch_images=max(1, round(nbytes / per_image)), hw=224,
                         device="cuda")
    return x


def _strategy_call(ctx, name, x, dtype, layout):
    """A no-argument call reducing ``x`` with strategy ``name`` (compiled now); ``call.acc`` its totals."""
    from gpustats import kernels
    from gpustats.benchmark import kernel_call, kernel_view

    histogram = name == "hist8"
    module = kernels.get_strategy(name)
    if not ctx.dry:
        return kernel_call(module.reduce, x, dtype, layout, histogram=histogram)
    view = np.ascontiguousarray(kernel_view(x, layout).numpy())
    acc = kernels.Accumulators.zeros(3, integer=dtype == "uint8", histogram=histogram and dtype == "uint8")

    def call():
        module.reduce(view, LAYOUTS[layout], dtype, acc, histogram=histogram)

    call()
    acc.reset()
    call.acc = acc
    call.x = x
    return call


def _check(call, x, layout, dtype) -> dict:
    """One call on a fresh total, compared with torch in float64 (uint8: the exact integer sum)."""
    call.acc.reset()
    call()
    host = call.acc.to_host()
    dims = _dims(layout)
    if dtype == "uint8":
        want = x.sum(dim=dims, dtype=torch.int64).cpu().tolist()
        got = [int(v) for v in host["isum"]]
        count_ok = [int(v) for v in host["count"]] == [x.numel() // 3] * 3
        return {"exact_sum": got == want and count_ok}
    ref = (x.sum(dim=dims, dtype=torch.float64) / (x.numel() // 3)).cpu().numpy()
    n = host["count"].astype(np.float64)
    mean = host["shift"] + host["fsum"] / np.maximum(n, 1)
    err = float(np.max(np.abs(mean - ref) / np.maximum(np.abs(ref), 1e-30)))
    return {"mean_rel_err": err, "mean_ok": err < 1e-6 and bool(np.all(n == x.numel() // 3))}


BASELINES = {
    "torch-var_mean+aminmax": lambda x, layout: torch_moments(x, layout),
    "torch-std_mean": lambda x, layout: torch.std_mean(x.float() if x.dtype == torch.uint8 else x,
                                                       dim=_dims(layout), correction=0),
    "torch-bincount": lambda x, layout: torch_moments(x, layout, histogram=True)[-1],
    "forum-recipe": lambda x, layout: forum_recipe([x], layout),
}


def _device_seconds(calls: dict, repeats: int = 3) -> dict:
    """Kernel time per call of each named callable, from the CUDA profiler (CUPTI), launch overhead excluded.

    Each callable runs ``repeats`` times inside a ``record_function`` range; every kernel is assigned
    to the range holding the host call that launched it (matched by correlation id), so the sums are
    device time only. Returns name -> seconds per call (missing when no kernel was seen).
    """
    import json as _json

    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for name, call in calls.items():
            with record_function(f"gpustats-sweep:{name}"):
                for _ in range(repeats):
                    call()
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = _json.loads(path.read_text()).get("traceEvents", [])
    ranges = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"].split(":", 1)[1]) for e in events
              if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("gpustats-sweep:")]
    launched = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    totals: dict = {}
    for e in events:
        if e.get("cat") != "kernel":
            continue
        ts = launched.get(e.get("args", {}).get("correlation"))
        for start, end, name in ranges:
            if ts is not None and start <= ts <= end:
                totals[name] = totals.get(name, 0.0) + e.get("dur", 0.0) * 1e-6
                break
    return {name: total / repeats for name, total in totals.items()}


def _roofline(ctx, x) -> dict:
    nbytes = x.numel() * x.element_size()
    dst = torch.empty_like(x)
    copy = _timer(ctx, lambda: dst.copy_(x))
    total = _timer(ctx, lambda: x.sum())
    copy_gbps = 2 * nbytes / copy.median / 1e9
    sum_gbps = nbytes / total.median / 1e9
    return {"copy_gbps": copy_gbps, "sum_gbps": sum_gbps, "roofline_gbps": max(copy_gbps, sum_gbps)}


def _sweep_plan(names, dry: bool) -> dict:
    """(dtype, layout) -> the strategies measured there: all of them on a GPU; in the dry run one each,
    rotating, so that every strategy, dtype and layout runs at least once (the simulator is slow)."""
    combos = [(dtype, layout) for dtype in DTYPES for layout in LAYOUTS]
    if not dry:
        return {combo: list(names) for combo in combos}
    plan, pending = {}, list(names)
    for dtype, layout in combos:
        fits = [n for n in names if n != "hist8" or dtype == "uint8"]
        waiting = [n for n in pending if n in fits]
        if dtype == "uint8" and "hist8" in waiting:
            waiting.insert(0, waiting.pop(waiting.index("hist8")))
        pick = waiting[0] if waiting else fits[len(plan) % len(fits)]
        if pick in pending:
            pending.remove(pick)
        plan[(dtype, layout)] = [pick]
    return plan


def sweep(ctx) -> dict:
    """Every strategy x dtype x layout x size, the torch baselines and the roofline (same tensors)."""
    from gpustats import kernels

    names = [n for n in kernels.STRATEGIES if not (ctx.dry and not kernels.STRATEGIES[n].SUPPORTS_SIMULATOR)]
    if ctx.dry:
        ctx.skip("sweep: strategy warp", "the numba simulator has no warp shuffles (real GPU only)")
    sizes = [DRY_SWEEP_BYTES] if ctx.dry else list(SWEEP_SIZES)
    result = {"rows": [], "baselines": [], "roofline": [], "compile_s": {}, "checks": [], "unsupported": [],
              "repeats": 1 if ctx.dry else REPEATS, "timer": "host perf_counter (simulator)" if ctx.dry else
              "CUDA events, median"}
    plan = _sweep_plan(names, ctx.dry)
    # 1. compile every kernel on small tensors of the same dtype/layout (while the tests run)
    calls_small = {}
    for dtype in DTYPES:
        for layout in LAYOUTS:
            small = _device_tensor(ctx, dtype, layout, DRY_SWEEP_BYTES if ctx.dry else 2 * 3 * 224 * 224)
            for name in plan[(dtype, layout)]:
                started = time.perf_counter()
                try:
                    calls_small[(name, dtype, layout)] = _strategy_call(ctx, name, small, dtype, layout)
                except (ValueError, NotImplementedError, RuntimeError, TypeError) as exc:
                    result["unsupported"].append({"strategy": name, "dtype": dtype, "layout": layout,
                                                  "reason": str(exc)[:200]})
                    continue
                result["compile_s"][f"{name}-{dtype}-{layout}"] = round(time.perf_counter() - started, 2)
    ctx.save(result)
    ctx.wait_for_go()
    # 2. measure, 256 MiB first
    for size in sizes:
        for dtype in DTYPES:
            for layout in LAYOUTS:
                label = bench_id("*", dtype, layout, size)
                if ctx.left() < (3 if ctx.dry else 8):
                    ctx.skip(f"sweep: {label}", "the sweep's time budget ran out")
                    continue
                x = _device_tensor(ctx, dtype, layout, size)
                nbytes = x.numel() * x.element_size()
                roof = _roofline(ctx, x)
                result["roofline"].append({"dtype": dtype, "layout": layout, "bytes": nbytes, **roof})
                base_time = None
                profiled: dict = {}
                first_baseline = len(result["baselines"])
                for base, fn in BASELINES.items():
                    if base == "torch-bincount" and dtype != "uint8":
                        continue
                    timing = _timer(ctx, lambda fn=fn: fn(x, layout))
                    gbps = nbytes / timing.median / 1e9
                    if base == "torch-var_mean+aminmax":
                        base_time = timing.median
                    profiled[f"baseline:{base}"] = lambda fn=fn: fn(x, layout)
                    result["baselines"].append({"baseline": base, "dtype": dtype, "layout": layout, "bytes": nbytes,
                                                "gbps": gbps, "roofline_frac": gbps / roof["roofline_gbps"],
                                                **timing.to_dict()})
                first_row = len(result["rows"])
                for name in plan[(dtype, layout)]:
                    if (name, dtype, layout) not in calls_small:
                        continue
                    # the dry run measures on the tensor it compiled with (the same tiny size): one run less
                    call = calls_small[(name, dtype, layout)] if ctx.dry else _strategy_call(ctx, name, x, dtype, layout)
                    if ctx.dry:
                        x = call.x
                    timing = _timer(ctx, call)
                    gbps = nbytes / timing.median / 1e9
                    # back to back, as a training loop calls it: host work overlaps the previous kernels
                    loops = 10
                    loop = timing if ctx.dry else _timer(ctx, lambda call=call: [call() for _ in range(loops)],
                                                         repeats=3, warmup=1)
                    if ctx.dry:
                        loops = 1  # the simulator is slow and its timings mean nothing: the single call stands in
                    result["rows"].append({"strategy": name, "dtype": dtype, "layout": layout, "bytes": nbytes,
                                           "size": size_label(nbytes), "gbps": gbps,
                                           "roofline_frac": gbps / roof["roofline_gbps"],
                                           "vs_torch_var_mean_aminmax": base_time / timing.median,
                                           "gbps_loop": loops * nbytes / loop.median / 1e9,
                                           "histogram": name == "hist8", **timing.to_dict()})
                    result["checks"].append({"id": bench_id(name, dtype, layout, nbytes), **_check(call, x, layout, dtype)})
                    profiled[name] = call
                    call = None
                if not ctx.dry:  # kernel (device) time, launch overhead excluded
                    try:
                        device = _device_seconds(profiled)
                    except Exception as exc:
                        device = {}
                        ctx.skip(f"sweep: kernel times {label}", f"profiler failed: {type(exc).__name__}: {exc}"[:300])
                    for row in result["rows"][first_row:]:
                        seconds = device.get(row["strategy"])
                        if seconds:
                            row["kernel_s"] = seconds
                            row["kernel_gbps"] = nbytes / seconds / 1e9
                            row["kernel_roofline_frac"] = row["kernel_gbps"] / roof["roofline_gbps"]
                    for row in result["baselines"][first_baseline:]:
                        seconds = device.get(f"baseline:{row['baseline']}")
                        if seconds:
                            row["kernel_s"] = seconds
                            row["kernel_gbps"] = nbytes / seconds / 1e9
                    torch_kernel = next((r.get("kernel_s") for r in result["baselines"][first_baseline:]
                                         if r["baseline"] == "torch-var_mean+aminmax"), None)
                    for row in result["rows"][first_row:]:
                        if torch_kernel and row.get("kernel_s"):
                            row["kernel_vs_torch_var_mean_aminmax"] = torch_kernel / row["kernel_s"]
                profiled = None
                x = None
                if not ctx.dry:
                    torch.cuda.empty_cache()
                ctx.save(result)
    return result


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


# ----------------------------------------------------------------------------- decode


def decode(ctx) -> dict:
    """nvJPEG batch decode (torchvision) vs CPU decode workers on a generated JPEG corpus, images/s."""
    from gpustats.sources import gpu as gpu_decode
    from gpustats.sources import iter_decoded
    from gpustats.sources.synthetic import make_jpeg_corpus

    n, size = (16, (64, 48)) if ctx.dry else (512, (500, 375))
    root = Path(tempfile.mkdtemp(prefix="gpustats-gpu-check-"))
    started = time.perf_counter()
    files = make_jpeg_corpus(root, n, size=size, quality=90)
    result = {"files": n, "size": list(size), "quality": 90, "corpus_s": round(time.perf_counter() - started, 2),
              "cpu_workers": [], "nvjpeg": None}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for workers in sorted({0, min(8, cpus), cpus} if not ctx.dry else {0, 1}):
        if ctx.left() < 5:
            ctx.skip(f"decode: {workers} CPU workers", "the decode section's time budget ran out")
            continue
        t0 = time.perf_counter()
        images = sum(len(b) for b in iter_decoded(files, workers=workers, batch_size=32))
        seconds = time.perf_counter() - t0
        result["cpu_workers"].append({"workers": workers, "images": images, "seconds": seconds,
                                      "images_per_s": images / seconds})
        ctx.save(result)
    ok, why = gpu_decode.gpu_decode_available() if not ctx.dry else (False, "dry run: no GPU")
    if not ok:
        ctx.skip("decode: nvJPEG", why)
        return result
    gpu_decode.decode_files_gpu(files[:8], device="cuda")  # warm-up (nvJPEG handle, CUDA context)
    torch.cuda.synchronize()
    samples = []
    for _ in range(3):
        if ctx.left() < 5:
            break
        t0 = time.perf_counter()
        on_gpu = 0
        for first in range(0, len(files), 64):
            got = gpu_decode.decode_files_gpu(files[first:first + 64], device="cuda")
            on_gpu += sum(r.decoded_on == "gpu" for r in got)
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    if samples:
        best = statistics.median(samples)
        result["nvjpeg"] = {"batch": 64, "images": len(files), "decoded_on_gpu": on_gpu, "seconds": best,
                            "images_per_s": len(files) / best, "rounds": len(samples)}
        ctx.save(result)
    # how far nvJPEG's pixels are from Pillow's (IDCT and chroma upsampling differ), in 0..255 levels
    from gpustats.sources.decode import decode_image

    diffs, mean_diffs = [], []
    for record, path in zip(gpu_decode.decode_files_gpu(files[:32], device="cuda"), files[:32]):
        cpu = decode_image(path).transpose(2, 0, 1).astype(np.int16)
        on_gpu = record.tensor.cpu().numpy().astype(np.int16)
        if on_gpu.shape != cpu.shape:
            result["nvjpeg_vs_pillow_shape_mismatch"] = [path.name, list(on_gpu.shape), list(cpu.shape)]
            break
        diffs.append(np.abs(on_gpu - cpu))
        mean_diffs.append(on_gpu.reshape(3, -1).mean(axis=1) - cpu.reshape(3, -1).mean(axis=1))
    if diffs:
        stacked = np.stack(diffs)
        result["nvjpeg_vs_pillow"] = {"images": len(diffs), "mean_abs_level": float(stacked.mean()),
                                      "p99_abs_level": float(np.percentile(stacked, 99)),
                                      "max_abs_level": int(stacked.max()),
                                      "max_channel_mean_diff_level": float(np.abs(np.stack(mean_diffs)).max())}
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


# ----------------------------------------------------------------------------- engine (issue 24)

#: images of the engine section's corpus on a GPU box (the issue asks for >= 30,000 500x375 JPEGs)
ENGINE_FILES = 30000
DRY_ENGINE_FILES = 12


def _write_jpegs(task) -> int:
    from PIL import Image

    from gpustats.sources.synthetic import photo_array

    root, first, stop, width, height = task
    for i in range(first, stop):  # the files make_jpeg_corpus(root, n) writes, by index
        rng = np.random.default_rng([0, i])
        Image.fromarray(photo_array(rng, width, height), "RGB").save(Path(root) / f"img_{i:07d}.jpg", quality=90)
    return stop - first


def _jpeg_corpus(n: int, size, processes: int) -> Path:
    from multiprocessing import get_context

    root = Path(tempfile.mkdtemp(prefix="gpustats-engine-"))
    chunk = max(1, -(-n // (4 * processes)))
    tasks = [(str(root), i, min(n, i + chunk), size[0], size[1]) for i in range(0, n, chunk)]
    if processes <= 1:
        for task in tasks:
            _write_jpegs(task)
    else:
        with get_context("fork").Pool(processes) as pool:
            pool.map(_write_jpegs, tasks)
    return root


def _stats_run(folder: Path, decode: str, workers: int, cache_dir: str, timeout: float) -> dict:
    """``gpustats stats FOLDER --decode D --workers N --format json -q`` in a fresh process; images/s by the run's
    own elapsed_s and by the whole process (start-up, imports, compiles or cache loads, listing)."""
    import json as _json
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    if not os.environ.get("GPUSTATS_GPU_CHECK_DRY_RUN"):
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [sys.executable, "-m", "gpustats", "stats", str(folder), "--decode", decode, "--workers", str(workers),
           "--format", "json", "-q"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(5.0, timeout))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "timed_out": True}
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-1200:]}"}
    doc = _json.loads(proc.stdout)
    return {"images": doc["images"], "elapsed_s": doc["elapsed_s"], "process_s": wall,
            "images_per_s": doc["images"] / doc["elapsed_s"], "images_per_s_process": doc["images"] / wall,
            "decode": doc["decode"], "workers_used": doc["workers"], "device": doc["device"],
            "strategy": doc["strategy"], "decoders": doc["decoders"]}


def _nvjpeg_only(files, ctx) -> dict | None:
    """nvJPEG decoding alone (torchvision, batches of 64), images/s: the GPU decoder's own speed."""
    from gpustats.sources import gpu as gpu_decode

    gpu_decode.decode_files_gpu(files[:64], device="cuda")  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    done = 0
    for first in range(0, len(files), 64):
        if ctx.left() < 5:
            break
        done += len(gpu_decode.decode_files_gpu(files[first:first + 64], device="cuda"))
    torch.cuda.synchronize()
    return {"images": done, "seconds": time.perf_counter() - started,
            "images_per_s": done / (time.perf_counter() - started)}


def engine(ctx) -> dict:
    """``gpustats stats`` on a generated JPEG folder (>= 30,000 500x375 images on a GPU box) with one CPU
    decode worker per core and with ``--decode gpu``, each with an empty (cold) and then a filled (warm)
    compile cache, beside plain Pillow processes and nvJPEG decoding alone in the same run."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from folder_throughput import pillow_processes

    from gpustats.sources import list_images

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n, size = (DRY_ENGINE_FILES, (64, 48)) if ctx.dry else (ENGINE_FILES, (500, 375))
    started = time.perf_counter()
    folder = _jpeg_corpus(n, size, 1 if ctx.dry else cores)
    files = [str(p) for p in list_images([folder])]
    workers = 1 if ctx.dry else cores
    result = {"files": len(files), "size": list(size), "quality": 90, "cores": cores,
              "corpus_s": round(time.perf_counter() - started, 1), "rows": [], "baselines": {}}
    ctx.save(result)
    if ctx.left() > 10:
        result["baselines"]["pillow_processes"] = {"processes": workers,
                                                   "images_per_s": pillow_processes(files, workers)}
        ctx.save(result)
    gpu_ok = False
    if ctx.dry:
        ctx.skip("engine: --decode gpu and nvJPEG alone", "dry run: no GPU")
    else:
        from gpustats.sources import gpu as gpu_decode

        gpu_ok, why = gpu_decode.gpu_decode_available()
        if not gpu_ok:
            ctx.skip("engine: --decode gpu and nvJPEG alone", why)
        elif ctx.left() > 15:
            result["baselines"]["nvjpeg_only"] = _nvjpeg_only(files, ctx)
            ctx.save(result)
    plans = [("cpu", workers)] + ([("nvjpeg", 8)] if gpu_ok else [])
    cache_dirs = {decoder: tempfile.mkdtemp(prefix=f"gpustats-engine-cache-{decoder}-") for decoder, _ in plans}
    for cache in ("cold", "warm"):  # both first runs before the second ones: the budget may not hold all four
        for decoder, count in plans:
            cache_dir = cache_dirs[decoder]
            if ctx.left() < 8:
                ctx.skip(f"engine: {decoder} {cache}", "the engine section's time budget ran out")
                continue
            run = _stats_run(folder, "cpu" if decoder == "cpu" else "gpu", count, cache_dir, timeout=ctx.left() - 4)
            base = result["baselines"].get("pillow_processes" if decoder == "cpu" else "nvjpeg_only") or {}
            row = {"decoder": decoder, "workers": count, "images": run.get("images", len(files)), "cache": cache,
                   "images_per_s": run.get("images_per_s"), "images_per_s_process": run.get("images_per_s_process"),
                   "decode_only_images_per_s": base.get("images_per_s"),
                   "decode_only": "plain Pillow processes" if decoder == "cpu" else "nvJPEG alone (batches of 64)",
                   **{k: v for k, v in run.items() if k not in ("images", "images_per_s", "images_per_s_process")}}
            if row["images_per_s"] and row["decode_only_images_per_s"]:
                row["vs_decode_only"] = row["images_per_s"] / row["decode_only_images_per_s"]
            result["rows"].append(row)
            ctx.save(result)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return result


SECTIONS = {"machine": machine, "sweep": sweep, "pipeline": pipeline, "decode": decode, "sync": sync, "calls": calls,
            "engine": engine}
