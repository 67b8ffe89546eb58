#!/usr/bin/env bash
# One command for a GPU machine: correctness, strategy sweep, calls, engine, baselines, pipeline, decode,
# synchronizations -- on a time budget, writing at most 8 files into OUTDIR.
#
#   bash bench/gpu_check.sh OUTDIR
#   GPUSTATS_GPU_CHECK_BUDGET_S=540   seconds for everything after the set-up (default 540: with the
#                                     set-up and the machine's start it fits a 15-minute lease)
#   GPUSTATS_GPU_CHECK_DRY_RUN=1      CPU-only dress rehearsal: numba simulator, tiny sizes
#   GPUSTATS_GPU_CHECK_INSTALL=1      pip install -e . into the interpreter (off by default: see below)
#   PYTHON=python3                    the interpreter (it must already have torch, numba, numba-cuda)
#
# The interpreter is left as it is: the checkout is put on PYTHONPATH (a folder of links,
# gpustats/ with kernels/ inside it as gpustats.kernels, as the package is laid out when installed;
# PYTHONSAFEPATH=1 keeps the working directory from shadowing it, Python >= 3.11). With
# GPUSTATS_GPU_CHECK_INSTALL=1 the project is installed instead (--no-deps --no-index: no network).
# See bench/README.md, "The GPU check".
set -uo pipefail
OUT="${1:?usage: bash bench/gpu_check.sh OUTDIR}"
PY="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2

# 1. the project, importable from this checkout (kernels/ is gpustats.kernels)
here() { "$PY" - "$ROOT" <<'PY' 2>/dev/null
import os, sys
from importlib.util import find_spec
kernels = find_spec("gpustats.kernels")  # found, not imported (that would import numba)
root = os.path.realpath(sys.argv[1])
sys.exit(0 if kernels is not None and os.path.realpath(kernels.origin).startswith(root) else 1)
PY
}
{
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
  if [ "${GPUSTATS_GPU_CHECK_INSTALL:-0}" = 1 ]; then
    timeout 300 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -n 20
    here && echo "installed from $ROOT (GPUSTATS_GPU_CHECK_INSTALL=1)" || echo "pip install failed"
  else
    SITE="$(mktemp -d)"
    mkdir "$SITE/gpustats"
    for entry in "$ROOT"/gpustats/*; do ln -s "$entry" "$SITE/gpustats/$(basename "$entry")"; done
    ln -s "$ROOT/kernels" "$SITE/gpustats/kernels"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    if here; then
      echo "gpustats from $ROOT on PYTHONPATH ($SITE, links): the interpreter is unchanged"
    else
      echo "gpustats is not importable from $ROOT on PYTHONPATH (Python < 3.11 lets the working directory shadow it):"
      echo "rerun with GPUSTATS_GPU_CHECK_INSTALL=1; the sections will fail"
    fi
  fi
  # what is installed, by the distributions' records (importing torch here costs seconds; the machine
  # section imports everything and says what fails)
  "$PY" - <<'PY' 2>&1
from importlib import metadata, util
for name, dist in (("torch", "torch"), ("numpy", "numpy"), ("numba", "numba"), ("numba_cuda", "numba-cuda"),
                   ("cuda.bindings", "cuda-bindings"), ("cuda.core", "cuda-core"), ("torchvision", "torchvision"),
                   ("PIL", "pillow"), ("pytest", "pytest"), ("xdist", "pytest-xdist"), ("hypothesis", "hypothesis")):
    try:
        found = util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails to import
        found = False
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = None
    print(f"{name} {version}" if found and version else f"{name}: not installed" if not found else f"{name} (version unknown)")
PY
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} > "$OUT/install.log" 2>&1
cat "$OUT/install.log"

# 2. everything else, on the budget; the outer timeout is a last resort (every step has its own)
BUDGET="${GPUSTATS_GPU_CHECK_BUDGET_S:-540}"
timeout -k 10 "$(( ${BUDGET%.*} + 150 ))" "$PY" bench/gpu_check.py "$OUT"
status=$?
[ -f "$OUT/gpu_check.md" ] && sed -n '1,200p' "$OUT/gpu_check.md"
exit $status
