"""The PTX of every kernel tests/test_kernels_ptx.py compiles, normalized, to compare two versions of the kernels.

A change meant to leave the GPU code alone (how numba types the device functions, how they are declared) can be
checked without a GPU: dump the PTX before and after, then compare. The dump drops what only names differ in:
numba's mangled symbols (a counter in each name) and the ``.common .global`` status words numba declares once per
device function compiled (fewer compiles, fewer declarations: none of them is used by a kernel). With ptxas (the
CUDA toolkit) each kernel is also assembled for sm_90 and its registers, stack frame and spills are recorded.

    python bench/ptx_dump.py OUT                 # OUT/<kernel>.ptx (normalized) and OUT/summary.json
    python bench/ptx_dump.py --compare OLD NEW   # kernels whose normalized PTX or ptxas line differ; exit 1 if any
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MANGLED = re.compile(r"_[0-9a-zA-Z_]*[0-9]{3,}[0-9a-zA-Z_]*")


def normalize(ptx: str) -> str:
    """The PTX without symbol names and without numba's per-device-function ``.common`` declarations."""
    lines = [_MANGLED.sub("X", re.sub(r"B[0-9]+v[0-9]+B", "BvB", line)) for line in ptx.splitlines()]
    return "\n".join(line for line in lines if not line.startswith(".common"))


def _ptxas(ptx: str) -> str | None:
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        out = subprocess.run([ptxas, "-arch=sm_90", "-v", str(path), "-o", str(path) + ".cubin"], capture_output=True,
                             text=True)
    return " | ".join(line.split(":", 1)[-1].strip() for line in out.stderr.splitlines() if "Used" in line or "stack" in line)


def dump(out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    class _Sm90:  # device functions compile for the current device: without a GPU there is none
        compute_capability = (9, 0)

    dispatcher.get_current_device = lambda: _Sm90()
    import test_kernels_ptx as cases

    out.mkdir(parents=True, exist_ok=True)
    summary, started = {}, time.perf_counter()
    for case in cases.CASES:
        for name, kernel, signature in cases.kernels(*case):
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
            (out / f"{name}.ptx").write_text(normalize(ptx))
            summary[name] = {"instructions": sum(1 for line in ptx.splitlines() if line.strip().endswith(";")
                                                 and not line.lstrip().startswith((".", "//"))),
                             "ptxas": _ptxas(ptx)}
    doc = {"compile_and_assemble_s": round(time.perf_counter() - started, 1), "kernels": summary}
    (out / "summary.json").write_text(json.dumps(doc, indent=1))
    return doc


def compare(old: Path, new: Path) -> list[str]:
    a, b = (json.loads((d / "summary.json").read_text())["kernels"] for d in (old, new))
    differ = [name for name in sorted(set(a) | set(b))
              if a.get(name) != b.get(name) or (old / f"{name}.ptx").read_text() != (new / f"{name}.ptx").read_text()]
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER")
    parser.add_argument("--compare", action="store_true", help="compare two dumps: OLD NEW")
    args = parser.parse_args()
    if args.compare:
        if len(args.folders) != 2:
            parser.error("--compare takes two folders: OLD NEW")
        differ = compare(*args.folders)
        total = len(json.loads((args.folders[0] / "summary.json").read_text())["kernels"])
        print(f"{total - len(differ)} of {total} kernels identical" + (f"; differ: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    doc = dump(args.folders[0])
    print(f"{len(doc['kernels'])} kernels in {doc['compile_and_assemble_s']} s -> {args.folders[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
