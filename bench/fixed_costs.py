"""Fixed costs a user feels beside the per-image work, for one or more installs side by side.

For each ``--python`` (the interpreter of an install of gpustats; default this one), round-robin over
``--rounds`` rounds so that a load change on a shared machine hits every install alike:

* ``first_call_moments_s``: a fresh process with an empty numba cache folder (``NUMBA_CACHE_DIR``,
  so nothing is written into the install) times ``compute_stats`` on a uint8 batch, then on a
  float32 batch (``--shape``, NCHW, device cpu); then a process with ``GPUSTATS_CPU_LOOPS=numba``
  compiles the loops those calls use into the folder (untimed: installs without numpy twins ignore
  the setting and find them compiled already), and a third process times the same calls with the
  folder warm; the figure is cold minus warm: what the first call costs beyond the same call with
  compiled code on disk (the issue's "first call after install minus the same call with a warm
  cache"), in wall seconds and in the process's CPU seconds (``*_cpu_s``: less sensitive to other
  work on a shared machine; compiling runs on one thread). ``cold_s``/``warm_s`` keep the two
  calls' own times;
* ``first_call_extras_s``: the same with ``histogram=True, covariance=True, per_image=True``
  (float32 with ``hist_bins=256, hist_range=(0, 1)``);
* ``long_run``: ``--long`` batches of the uint8 and float32 kinds in one fresh process with an empty
  cache, by default (``auto``: numpy until a loop's compile pays) and with ``GPUSTATS_CPU_LOOPS=numba``
  (compile at once): what the two tiers cost a run long enough to switch;
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
repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 1
started, cpu = time.perf_counter(), time.process_time()
a = compute_stats([u8] * repeat, device="cpu", **kw)
b = compute_stats([f32] * repeat, device="cpu", **fkw)
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


def _calls(python: str, shape: str, kind: str, cache: str, loops: str = "", repeat: int = 1) -> dict:
    proc = subprocess.run([python, "-c", _CALLS, shape, kind, str(repeat)], cwd=tempfile.gettempdir(),
                          env=_env(NUMBA_CACHE_DIR=cache, GPUSTATS_CPU_LOOPS=loops), capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{python}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def first_call(python: str, shape: str, kind: str) -> dict:
    """Cold and warm ``compute_stats`` calls of ``kind`` ("moments" or "extras") in fresh processes."""
    cache = tempfile.mkdtemp(prefix="gpustats-bench-numba-")
    try:
        cold = _calls(python, shape, kind, cache)
        _calls(python, shape, kind, cache, loops="numba")  # compiles what the calls use (untimed)
        warm = _calls(python, shape, kind, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"cold_s": cold["calls_s"], "warm_s": warm["calls_s"], "compile_s": cold["calls_s"] - warm["calls_s"],
            "cold_cpu_s": cold["calls_cpu_s"], "warm_cpu_s": warm["calls_cpu_s"],
            "compile_cpu_s": cold["calls_cpu_s"] - warm["calls_cpu_s"]}


def long_run(python: str, shape: str, batches: int) -> dict:
    """``batches`` batches of each kind in one cold process, default tiers vs numba at once (seconds)."""
    out = {}
    for loops in ("", "numba"):
        cache = tempfile.mkdtemp(prefix="gpustats-bench-numba-")
        try:
            out[loops or "auto"] = _calls(python, shape, "moments", cache, loops=loops, repeat=batches)["calls_s"]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return out


def measure(python: str, shape: str, batches: int) -> dict:
    env = _env()
    return {
        "first_call_moments": first_call(python, shape, "moments"),
        "first_call_extras": first_call(python, shape, "extras"),
        "long_run": long_run(python, shape, batches) if batches else None,
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
    parser.add_argument("--long", type=int, default=0, help="batches of the long-run figure (0: not measured)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    labelled = [p.split("=", 1) if "=" in p else [None, p] for p in (args.python or [sys.executable])]
    pythons = [path for _, path in labelled]
    installs = {path: dict(_describe(path), label=label or _describe(path)["commit"]) for label, path in labelled}
    raw: dict = {python: [] for python in pythons}
    loads = []
    for r in range(args.rounds):
        for python in pythons:
            raw[python].append(measure(python, args.shape, args.long))
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
                     "first_call_moments_cold_s": med(lambda x: x["first_call_moments"]["cold_s"]),
                     "first_call_moments_warm_s": med(lambda x: x["first_call_moments"]["warm_s"]),
                     "first_call_extras_cold_s": med(lambda x: x["first_call_extras"]["cold_s"]),
                     "first_call_extras_warm_s": med(lambda x: x["first_call_extras"]["warm_s"]),
                     "long_run_s": ({k: med(lambda x: x["long_run"][k]) for k in ("auto", "numba")}
                                    if args.long else None),
                     "help_s": med(lambda x: x["help_s"]), "import_s": med(lambda x: x["import_s"]), "runs": runs})
    for row in rows:
        print(f"{row['label']}: first call (compile) moments {row['first_call_moments_s']:.2f} s "
              f"({row['first_call_moments_cpu_s']:.2f} CPU s), extras {row['first_call_extras_s']:.2f} s "
              f"({row['first_call_extras_cpu_s']:.2f} CPU s); --help {row['help_s']:.2f} s; "
              f"import gpustats {row['import_s']:.2f} s; cold/warm calls moments "
              f"{row['first_call_moments_cold_s']:.2f}/{row['first_call_moments_warm_s']:.2f} s, extras "
              f"{row['first_call_extras_cold_s']:.2f}/{row['first_call_extras_warm_s']:.2f} s; long run "
              f"{row['long_run_s']}")
    if args.json:
        from gpustats.benchmark import machine_info

        doc = {"schema": "gpustats-fixed-costs/2", "machine": machine_info("cpu"), "shape": args.shape,
               "long_batches": args.long,
               "rounds": args.rounds, "load_average_per_run": loads, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
