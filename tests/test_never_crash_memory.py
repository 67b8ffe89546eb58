"""Never run out of memory (issue "bounded memory, signals, paths and bad values"): archives and Parquet
files are held by bytes, not by member count, and members over the budget are refused unread.

Each test pins one defect the adversarial run found; each failed before its fix. Memory bounds are
measured (``ru_maxrss`` of a child process, with a small budget so that the data stays small).
Shared helpers: tests/_never_crash_helpers.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from gpustats.sources.engine import run_folder

from _never_crash_helpers import _child_env, _png

pytestmark = pytest.mark.timeout(120)


# ====================================================================== 1. memory bounded by bytes
_PEAK = textwrap.dedent("""
    import json, resource, sys
    from gpustats.sources.engine import run_folder
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    small, large = sys.argv[1:3]
    run_folder([small], device="cpu", workers=0)  # warm: imports, numba, one member of the same size
    before = peak()
    run = run_folder([large], device="cpu", workers=0)
    print(json.dumps({"before": before, "after": peak(), "images": run.images, "bad": len(run.bad_files)}))
""")


def _peak_growth(small: Path, large: Path, budget_mib: int) -> dict:
    """How much a child's peak RSS grows reading ``large`` after reading ``small`` (same-size members)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(small), str(large)], capture_output=True, text=True,
                          timeout=120, env=_child_env(GPUSTATS_WORKER_MEMORY_MB=str(budget_mib)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MIB = 1 << 20


def _zeros_tgz(path: Path, members: int, size: int) -> None:
    """A .tar.gz of one small image, then ``members`` members of ``size`` zero bytes named like images (they
    are not images)."""
    zeros, good = bytes(size), _png()
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("good.png")
        info.size = len(good)
        tar.addfile(info, io.BytesIO(good))
        for i in range(members):
            info = tarfile.TarInfo(f"m{i:02d}.jpg")
            info.size = size
            tar.addfile(info, io.BytesIO(zeros))


def test_a_compressed_tar_is_held_by_bytes_not_by_member_count(tmp_path):
    """24 members of 8 MiB went out in one batch of 64 members (~190 MiB held at once; 2.2 GB for the
    issue's twelve 150 MiB members); batches are now cut by bytes: reading 24 costs what reading 1 does."""
    one, many = tmp_path / "one.tar.gz", tmp_path / "many.tar.gz"
    _zeros_tgz(one, 1, 8 * MIB)
    _zeros_tgz(many, 24, 8 * MIB)
    got = _peak_growth(one, many, budget_mib=32)  # batches of at most 16 MiB: one member each
    assert (got["images"], got["bad"]) == (1, 24)  # zeros: not images (each decoded alone)
    assert got["after"] - got["before"] < 48 * MIB, got  # measured: +16 MiB; +89 MiB before with 12 members


def test_a_dictionary_encoded_parquet_column_is_held_once(tmp_path):
    """24 rows repeating one 8 MiB value (a 1 KB file) decoded to 24 copies at once, twice over (~630 MiB; 6 GB
    for the issue's twelve 150 MiB rows); the column is now read as a dictionary, rows handed on by bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(path: Path, rows: int) -> None:
        zeros = bytes(8 * MIB)  # the writer dictionary-encodes the repeated value: stored once
        pq.write_table(pa.table({"image": pa.array([_png()] + [zeros] * rows, pa.binary())}), path,
                       compression="zstd")

    one, many = tmp_path / "one.parquet", tmp_path / "many.parquet"
    write(one, 1)
    write(many, 24)
    assert many.stat().st_size < 100_000
    got = _peak_growth(one, many, budget_mib=32)
    assert (got["images"], got["bad"]) == (1, 24)
    assert got["after"] - got["before"] < 64 * MIB, got  # measured: +25 MiB (+634 MiB before)


def test_members_over_the_budget_are_refused_before_they_are_inflated(tmp_path, monkeypatch):
    """The size the format states (tar header, zip directory, Parquet metadata) decides, before reading."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("GPUSTATS_WORKER_MEMORY_MB", "2")  # members over 1 MiB are refused
    big = bytes(MIB + 1)
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        for name, data in (("big.png", big), ("ok.png", _png(1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(tmp_path / "b.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.png", big)
        z.writestr("ok.png", _png(2))
    pq.write_table(pa.table({"image": pa.array([big, big], pa.binary())}), tmp_path / "c.parquet",
                   use_dictionary=False, compression="zstd")
    run = run_folder([tmp_path / "a.tar.gz", tmp_path / "b.zip", tmp_path / "c.parquet"], device="cpu", workers=0)
    reasons = {b["path"].split(os.sep)[-1]: b["reason"] for b in run.bad_files}
    assert run.images == 2 and len(reasons) == 4, reasons
    assert reasons["a.tar.gz:big.png"].startswith("too large: member of 1,048,577 bytes > 1,048,576 bytes")
    assert reasons["b.zip:big.png"].startswith("too large: member of 1,048,577 bytes")
    assert reasons["c.parquet:0"].startswith("too large: row group 0's image column (uncompressed)")
    assert all(r.endswith("refused unread") for r in reasons.values())


def test_byte_capped_batches():
    from gpustats.sources.streamed import byte_capped

    records = [(i, f"m{i}", [0, i], bytes(n)) for i, n in enumerate([3, 3, 3, 9, 1, 1])]
    sizes = [[len(r[3]) for r in batch] for batch in byte_capped(records, 64, cap=6)]
    assert sizes == [[3, 3], [3], [9], [1, 1]]  # never over 6 bytes, but a larger member goes alone
    assert [len(b) for b in byte_capped(records, 2, cap=100)] == [2, 2, 2]


def test_a_bad_budget_is_one_line(tmp_path, monkeypatch):
    from gpustats.sources import SourceError

    monkeypatch.setenv("GPUSTATS_WORKER_MEMORY_MB", "lots")
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        info = tarfile.TarInfo("a.png")
        data = _png()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match="GPUSTATS_WORKER_MEMORY_MB must be a whole number"):
        run_folder([tmp_path / "a.tar"], device="cpu", workers=0)
