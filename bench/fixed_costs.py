"""Fixed costs a user feels beside the per-image work, for one or more installs side by side.

For each ``--python`` (the interpreter of an install of gpustats; default this one), round-robin over
``--rounds`` rounds so that a load change on a shared machine hits every install alike:

* ``first_call_moments_s``: a fresh process with an empty numba cache folder (``NUMBA_CACHE_DIR``,
  so nothing is written into the install) times ``compute_stats`` on a uint8 batch, then on a
  float32 batch (``--shape``, NCHW, device cpu); a second process with the same, now warm, folder
  times the same calls; the figure is cold minus warm: the compile time of the first call (the
  issue's "first call after install minus the same call with a warm cache"), in wall seconds and
  in the process's CPU seconds (``*_cpu_s``: less sensitive to other work on a shared machine;
  compiling runs on one thread);
* ``first_call_extras_s``: the same with ``histogram=True, covariance=True, per_image=True``
  (float32 with ``hist_bins=256, hist_range=(0, 1)``);
* ``help_s``: wall time of ``python -m gpustats --help`` (a fresh process; interpreter start included);
* ``import_s``: wall time of ``python -c "import gpustats"``.

    python bench/fixed_costs.py --python main=/path/to/main/.venv/bin/python --python .venv/bin/python \\
        --rounds 3 --json bench/results/cpu-2core-<date>-fixed-costs.json

Each child runs in a neutral folder (the temp dir), so ``python -m gpustats`` imports the install's
own package, not the current checkout's. Medians and every raw timing go to the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CALLS = """
import json, sys, time
import torch
from gpustats import compute_stats
shape = tuple(int(v) for v in sys.argv[1].split("x"))
extras = sys.argv[2] == "extras"
g = torch.Generator().manual_seed(0)
u8 = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
f32 = torch.rand(shape, generator=g)
kw = dict(histogram=True, covariance=True, per_image=True) if extras else {}
fkw = dict(kw, hist_bins=256, hist_range=(0.0, 1.0)) if extras else kw
started, cpu = time.perf_counter(), time.process_time()
a = compute_stats([u8], device="cpu", **kw)
b = compute_stats([f32], device="cpu", **fkw)
print(json.dumps({"calls_s": time.perf_counter() - started, "calls_cpu_s": time.process_time() - cpu,
                  "check": [float(a.mean[0]), float(b.mean[0])]}))
"""


def _env(**extra: str) -> dict:
    env = dict(os.environ, **extra)
    for name in ("NUMBA_ENABLE_CUDASIM", "WORLD_SIZE", "PYTHONPATH"):
        env.pop(name, None)
    return env


def _wall(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


def first_call(python: str, shape: str, kind: str) -> dict:
    """Cold and warm ``compute_stats`` calls of ``kind`` ("moments" or "extras") in two fresh processes."""
    cache = tempfile.mkdtemp(prefix="gpustats-bench-numba-")
    try:
        runs = []
        for _ in range(2):  # cold, then warm (same cache folder)
            proc = subprocess.run([python, "-c", _CALLS, shape, kind], cwd=tempfile.gettempdir(),
                                  env=_env(NUMBA_CACHE_DIR=cache), capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"{python}: {proc.stderr[-2000:]}")
            runs.append(json.loads(proc.stdout))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cold, warm = runs
    return {"cold_s": cold["calls_s"], "warm_s": warm["calls_s"], "compile_s": cold["calls_s"] - warm["calls_s"],
            "cold_cpu_s": cold["calls_cpu_s"], "warm_cpu_s": warm["calls_cpu_s"],
            "compile_cpu_s": cold["calls_cpu_s"] - warm["calls_cpu_s"]}


def measure(python: str, shape: str) -> dict:
    env = _env()
    return {
        "first_call_moments": first_call(python, shape, "moments"),
        "first_call_extras": first_call(python, shape, "extras"),
        "help_s": _wall([python, "-m", "gpustats", "--help"], env),
        "import_s": _wall([python, "-c", "import gpustats"], env),
    }


def _describe(python: str) -> dict:
    code = ("import json, os, subprocess, gpustats; root = os.path.dirname(os.path.dirname(gpustats.__file__)); "
            "commit = subprocess.run(['git', '-C', root, 'rev-parse', '--short', 'HEAD'], capture_output=True, "
            "text=True).stdout.strip(); print(json.dumps({'package': os.path.dirname(gpustats.__file__), "
            "'commit': commit or None}))")
    proc = subprocess.run([python, "-c", code], cwd=tempfile.gettempdir(), env=_env(), capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", default=None,
                        help="an install's interpreter, optionally LABEL=PATH (repeatable; default: this one)")
    parser.add_argument("--shape", default="32x3x224x224", help="NCHW batch shape of the first-call figures")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    labelled = [p.split("=", 1) if "=" in p else [None, p] for p in (args.python or [sys.executable])]
    pythons = [path for _, path in labelled]
    installs = {path: dict(_describe(path), label=label or _describe(path)["commit"]) for label, path in labelled}
    raw: dict = {python: [] for python in pythons}
    loads = []
    for r in range(args.rounds):
        for python in pythons:
            raw[python].append(measure(python, args.shape))
            loads.append(os.getloadavg())
            last = raw[python][-1]
            print(f"round {r + 1} {installs[python]['label']}: first call moments "
                  f"{last['first_call_moments']['compile_s']:.2f} s ({last['first_call_moments']['compile_cpu_s']:.2f} CPU), "
                  f"extras {last['first_call_extras']['compile_s']:.2f} s ({last['first_call_extras']['compile_cpu_s']:.2f} CPU), "
                  f"--help {last['help_s']:.2f} s, import {last['import_s']:.2f} s", file=sys.stderr, flush=True)
    rows = []
    for python in pythons:
        runs = raw[python]

        def med(get):
            return statistics.median(get(run) for run in runs)

        rows.append({"python": python, **installs[python],
                     "first_call_moments_s": med(lambda x: x["first_call_moments"]["compile_s"]),
                     "first_call_extras_s": med(lambda x: x["first_call_extras"]["compile_s"]),
                     "first_call_moments_cpu_s": med(lambda x: x["first_call_moments"]["compile_cpu_s"]),
                     "first_call_extras_cpu_s": med(lambda x: x["first_call_extras"]["compile_cpu_s"]),
                     "help_s": med(lambda x: x["help_s"]), "import_s": med(lambda x: x["import_s"]), "runs": runs})
    for row in rows:
        print(f"{row['label']}: first call (compile) moments {row['first_call_moments_s']:.2f} s "
              f"({row['first_call_moments_cpu_s']:.2f} CPU s), extras {row['first_call_extras_s']:.2f} s "
              f"({row['first_call_extras_cpu_s']:.2f} CPU s); --help {row['help_s']:.2f} s; "
              f"import gpustats {row['import_s']:.2f} s")
    if args.json:
        from gpustats.benchmark import machine_info

        doc = {"schema": "gpustats-fixed-costs/1", "machine": machine_info("cpu"), "shape": args.shape,
               "rounds": args.rounds, "load_average_per_run": loads, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
