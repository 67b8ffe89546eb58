"""The JPEG sections of ``bench/gpu_check.sh`` (what a section is: gpu_check_sections.py): ``decode``
(nvJPEG batch decode against CPU decode workers) and ``engine`` (``gpustats stats`` on a generated
JPEG folder, cold and warm compile cache, beside plain Pillow processes and nvJPEG alone).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


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
