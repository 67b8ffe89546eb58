"""Folder runs against plain Pillow processes, in the same run: the folder engine's speed target.

For each corpus and worker count N it measures, round-robin over ``--rounds`` rounds (so a load
change on a shared machine hits every method alike), the median of:

* ``pillow``: N plain processes (a forked pool) each doing ``np.asarray(Image.open(f).convert("RGB"))``
  over an interleaved share of the files: what the machine gives for N decoding processes;
* ``gpustats``: ``gpustats stats DIR --workers N -q --format json --device cpu`` with the Pillow
  decoder (``GPUSTATS_JPEG_DECODER=pillow``), images/s by the run's own ``elapsed_s`` and by the
  whole process (start-up, import and listing included);
* ``gpustats-fast``: the same with libjpeg-turbo (simplejpeg) where it applies, when installed;
* ``gpustats-extras``: ``--histogram --covariance --per-image`` (Pillow decoder), against ``gpustats``;
* ``--baseline LABEL=PYTHON``: the ``gpustats`` run of another install (e.g. main's), as method LABEL;

and the peak resident memory of each decode worker, sampled every 0.2 s, in the first and the last
quarter of the run (flat memory: the two are close).

    python bench/folder_throughput.py --json bench/results/cpu-2core-<date>-folder.json
    python bench/folder_throughput.py --corpora png32 --workers 2 --rounds 3

Corpora are generated once into ``$TMPDIR`` (``make_jpeg_corpus``: 500x375 q90 photo-like JPEGs;
``make_tiny_folder``: 32x32 PNGs, CIFAR-sized). ``--files`` shrinks them (the smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CORPORA = {"jpeg": (3000, "500x375 q90 JPEG"), "png32": (20000, "32x32 PNG")}


def corpus(kind: str, files: int) -> Path:
    from gpustats.sources.synthetic import make_jpeg_corpus, make_tiny_folder

    root = Path(tempfile.gettempdir()) / f"gpustats-folder-{kind}-{files}"
    done = root / ".complete"
    if not done.exists():
        if kind == "jpeg":
            make_jpeg_corpus(root, files, size=(500, 375), quality=90)
        else:
            make_tiny_folder(root, files, size=(32, 32))
        done.write_text("ok\n")
    return root


def _pillow_share(files: list[str]) -> int:
    batch = []  # keep a batch alive, as any consumer does (see bench_decode.py)
    for path in files:
        with Image.open(path) as im:
            batch.append(np.asarray(im.convert("RGB")))
        if len(batch) == 64:
            batch = []
    return len(files)


def pillow_processes(files: list[str], n: int) -> float:
    with get_context("fork").Pool(n) as pool:
        pool.map(_pillow_share, [files[:8]] * n)  # start-up and imports out of the timing
        started = time.perf_counter()
        done = sum(pool.map(_pillow_share, [files[i::n] for i in range(n)]))
        return done / (time.perf_counter() - started)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def gpustats_run(folder: Path, workers: int, extra: list[str], env: dict, python: str = sys.executable) -> dict:
    """One ``gpustats stats`` process of the install of ``python``, run from a neutral folder (so that
    ``-m gpustats`` imports that install's package, not a checkout's)."""
    cmd = [python, "-m", "gpustats", "stats", str(folder), "--workers", str(workers), "-q", "--format",
           "json", "--device", "cpu", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    samples: list[tuple[float, int]] = []  # (seconds since start, max worker RSS in KiB)

    def watch():
        while proc.poll() is None:
            rss = [_rss_kib(c) for c in _children(proc.pid)]
            if rss:
                samples.append((time.perf_counter() - started, max(rss)))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - started
    watcher.join(timeout=2)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    doc = json.loads(out)
    quarter = max(1, len(samples) // 4)
    return {"images": doc["images"], "elapsed_s": doc["elapsed_s"], "wall_s": wall,
            "images_per_s": doc["images"] / doc["elapsed_s"], "images_per_s_process": doc["images"] / wall,
            "decoders": doc["decoders"], "workers": doc["workers"],
            "worker_rss_kib_first_quarter": max((r for _, r in samples[:quarter]), default=None),
            "worker_rss_kib_last_quarter": max((r for _, r in samples[-quarter:]), default=None)}


def measure(kind: str, files: int, workers: int, rounds: int, log, baselines: dict | None = None) -> dict:
    from gpustats.sources import list_images

    folder = corpus(kind, files)
    paths = [str(p) for p in list_images([folder])]
    base_env = dict(os.environ)
    base_env.pop("NUMBA_ENABLE_CUDASIM", None)
    pillow_env = dict(base_env, GPUSTATS_JPEG_DECODER="pillow")
    methods = {
        "pillow": lambda: {"images_per_s": pillow_processes(paths, workers)},
        "gpustats": lambda: gpustats_run(folder, workers, [], pillow_env),
        "gpustats-extras": lambda: gpustats_run(folder, workers, ["--histogram", "--covariance", "--per-image"],
                                                pillow_env),
    }
    for label, python in (baselines or {}).items():  # another install (e.g. main) side by side
        methods[label] = lambda python=python: gpustats_run(folder, workers, [], pillow_env, python)
    try:
        import simplejpeg  # noqa: F401

        if kind == "jpeg":
            methods["gpustats-fast"] = lambda: gpustats_run(folder, workers, [], base_env)
    except ImportError:
        pass
    results: dict = {name: [] for name in methods}
    for r in range(rounds):
        for name, fn in methods.items():
            results[name].append(fn())
            log(f"  {kind} N={workers} round {r + 1}: {name} {results[name][-1]['images_per_s']:.0f} images/s")

    def med(name, key="images_per_s"):
        return statistics.median(x[key] for x in results[name])

    row = {"corpus": kind, "files": len(paths), "description": CORPORA[kind][1], "workers": workers,
           "rounds": rounds, "load_average": list(os.getloadavg()),
           "pillow_images_per_s": med("pillow"), "runs": results}
    for name in methods:
        if name == "pillow":
            continue
        row[f"{name}_images_per_s"] = med(name)
        row[f"{name}_vs_pillow"] = med(name) / row["pillow_images_per_s"]
        row[f"{name}_process_vs_pillow"] = med(name, "images_per_s_process") / row["pillow_images_per_s"]
        # robust to a load that drifts between rounds on a shared machine: each round against its own Pillow
        row[f"{name}_vs_pillow_same_round"] = statistics.median(
            g["images_per_s"] / p["images_per_s"] for g, p in zip(results[name], results["pillow"]))
        row[f"{name}_process_vs_pillow_same_round"] = statistics.median(
            g["images_per_s_process"] / p["images_per_s"] for g, p in zip(results[name], results["pillow"]))
    row["extras_vs_moments"] = row["gpustats-extras_images_per_s"] / row["gpustats_images_per_s"]
    row["extras_vs_moments_same_round"] = statistics.median(
        x["images_per_s"] / m["images_per_s"] for x, m in zip(results["gpustats-extras"], results["gpustats"]))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="jpeg,png32", help="jpeg, png32 or both (comma-separated)")
    parser.add_argument("--workers", default=None, help="worker counts, e.g. 2,4 (default: 2 and all cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=None, help="files per corpus (default 3,000 / 20,000)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--baseline", action="append", default=[], metavar="LABEL=PYTHON",
                        help="also run another install's gpustats (its interpreter), as method LABEL (repeatable)")
    args = parser.parse_args(argv)
    baselines = dict(item.split("=", 1) for item in args.baseline)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    counts = sorted({int(w) for w in args.workers.split(",")}) if args.workers else sorted({2, cores})

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    rows = []
    for kind in args.corpora.split(","):
        for n in counts:
            rows.append(measure(kind, args.files or CORPORA[kind][0], n, args.rounds, log, baselines))
    for row in rows:
        print(f"{row['description']:>18} x{row['files']:<6} N={row['workers']}: pillow {row['pillow_images_per_s']:8.0f}/s; "
              f"gpustats {row['gpustats_vs_pillow']:.2f} (same round {row['gpustats_vs_pillow_same_round']:.2f}, "
              f"process {row['gpustats_process_vs_pillow']:.2f})"
              + (f", fast {row['gpustats-fast_vs_pillow']:.2f} (same round {row['gpustats-fast_vs_pillow_same_round']:.2f})"
                 if "gpustats-fast_vs_pillow" in row else "")
              + f"; extras/moments {row['extras_vs_moments']:.2f} (same round {row['extras_vs_moments_same_round']:.2f})"
              + "".join(f"; {label} {row[f'{label}_vs_pillow']:.2f} (process {row[f'{label}_process_vs_pillow']:.2f})"
                        for label in baselines))
    write_results(args.json, "gpustats-folder-bench/1", rows=rows)
    return 0


def write_results(path: str | None, schema: str, **content) -> None:
    """Write ``{"schema", "machine", **content}`` as JSON to ``path`` (nothing when ``path`` is None)."""
    from gpustats.benchmark import machine_info

    if path:
        doc = {"schema": schema, "machine": machine_info("cpu"), **content}
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
