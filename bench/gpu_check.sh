#!/usr/bin/env bash
# One command for a GPU machine: install, correctness, strategy sweep, baselines, pipeline, decode,
# synchronizations -- on a time budget, writing at most 8 files into OUTDIR.
#
#   bash bench/gpu_check.sh OUTDIR
#   GPUSTATS_GPU_CHECK_BUDGET_S=420   seconds for everything after the install (default 420)
#   GPUSTATS_GPU_CHECK_DRY_RUN=1      CPU-only dress rehearsal: numba simulator, tiny sizes
#   PYTHON=python3                    the interpreter (it must already have torch, numba, numba-cuda)
#
# Needs no network: the project is installed with --no-deps --no-index, and where that is not
# possible it is put on PYTHONPATH from a copy. See bench/README.md, "The GPU check".
set -uo pipefail
OUT="${1:?usage: bash bench/gpu_check.sh OUTDIR}"
PY="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2

# 1. the project, importable from this checkout (kernels/ is installed as gpustats.kernels)
here() { "$PY" - "$ROOT" <<'PY' 2>/dev/null
import os, sys
import gpustats, gpustats.kernels
root = os.path.realpath(sys.argv[1])
sys.exit(0 if os.path.realpath(gpustats.__file__).startswith(root) else 1)
PY
}
{
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
  if here; then
    echo "gpustats already importable from $ROOT: no install"
  else
    timeout 300 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -n 20
    if ! here; then
      SITE="$(mktemp -d)"
      cp -r gpustats "$SITE/gpustats" && cp -r kernels "$SITE/gpustats/kernels"
      export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
      echo "pip install failed: using a copy on PYTHONPATH ($SITE)"
      here || echo "gpustats is still not importable: the sections will fail"
    fi
  fi
  "$PY" - <<'PY' 2>&1
import importlib
for name in ("torch", "numpy", "numba", "numba_cuda", "torchvision", "PIL", "pytest", "xdist", "hypothesis"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__}: {exc})")
PY
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} > "$OUT/install.log" 2>&1
cat "$OUT/install.log"

# 2. everything else, on the budget; the outer timeout is a last resort (every step has its own)
BUDGET="${GPUSTATS_GPU_CHECK_BUDGET_S:-420}"
timeout -k 10 "$(( ${BUDGET%.*} + 150 ))" "$PY" bench/gpu_check.py "$OUT"
status=$?
[ -f "$OUT/gpu_check.md" ] && sed -n '1,200p' "$OUT/gpu_check.md"
exit $status
