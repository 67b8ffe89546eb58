"""Never crash, hang or run out of memory (issue "bounded memory, signals, paths and bad values").

Each test pins one defect the adversarial run found; each failed before its fix. Memory bounds are
measured (``ru_maxrss`` of a child process, with a small budget so that the data stays small), hangs
and signals run in a child with a timeout; everything else runs in this process on tiny data.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpustats import compute_stats
from gpustats.cli import main
from gpustats.sources.engine import run_folder

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


def _png(seed: int = 0, size=(5, 4)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def _folder(tmp_path: Path, n: int = 4, name: str = "imgs") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:02d}.png").write_bytes(_png(i))
    return folder


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if a file is decoded: checks must come before the run."""
    from gpustats.sources import mapside

    decoded = []
    monkeypatch.setattr(mapside.ReducedBatches, "__getitem__", lambda self, b: decoded.append(b))
    return decoded


def _child_env(**extra) -> dict:
    env = dict(os.environ, **extra)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


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


# ====================================================================== 2. --max-pixels after resize/crop
def test_max_pixels_holds_after_resize_and_crop(tmp_path):
    from gpustats.sources import BadImage, decode_image

    path = tmp_path / "small.png"
    Image.new("RGB", (27, 34)).save(path)
    with pytest.raises(BadImage, match=r"too large after resize: 27x34 -> 100x125 > max_pixels=1000"):
        decode_image(path, resize=100, max_pixels=1000)  # 918 pixels in the file, 12,500 once resized
    with pytest.raises(BadImage, match="too large after center crop"):
        decode_image(path, center_crop=(40, 30), max_pixels=1000)
    assert decode_image(path, resize=30, max_pixels=1200).shape == (37, 30, 3)


@pytest.mark.parametrize("flags", [["--resize", "20000"], ["--center-crop", "40000", "--covariance"],
                                   ["--resize", "40", "--max-pixels", "1000"]])
def test_absurd_geometry_is_refused_before_the_run(capsys, tmp_path, no_decoding, flags):
    rc, out, err = _run(capsys, "stats", _folder(tmp_path), "--device", "cpu", "--workers", "0", *flags)
    assert rc == 1 and no_decoding == [] and out == ""
    assert err.count("\n") == 1 and "makes every image" in err and "--max-pixels" in err


# ====================================================================== 3. bench validates first
@pytest.fixture
def bench_ran(monkeypatch):
    from gpustats.benchmark import suites

    calls = []
    monkeypatch.setattr(suites, "run_cpu", lambda **kw: calls.append(kw) or [])
    monkeypatch.setattr(suites, "run_cuda", lambda **kw: calls.append(kw) or [])
    return calls


@pytest.mark.parametrize("flags", [["--sizes", "abc"], ["--sizes", "0"], ["--sizes", "-5"], ["--sizes", "1e9"],
                                   ["--sizes", "inf"], ["--repeats", "-1"], ["--repeats", "x"]])
def test_bench_arguments_are_validated_before_running(capsys, bench_ran, flags):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and bench_ran == []
    assert err.splitlines()[-1].startswith("gpustats bench: error: argument")


def test_bench_json_is_checked_before_running_and_creates_no_folder(capsys, tmp_path, bench_ran):
    missing = tmp_path / "missing" / "x.json"
    assert main(["bench", "--device", "cpu", "--sizes", "1", "--json", str(missing)]) == 2
    assert bench_ran == [] and not missing.parent.exists()
    assert main(["bench", "--device", "cpu", "--sizes", "1", "--json", str(tmp_path)]) == 2  # a folder
    assert bench_ran == [] and "is a folder" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--sizes", "1", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == []


# ====================================================================== 4. never open a FIFO or a device
_LIST = textwrap.dedent("""
    import sys
    from gpustats.cli import main
    for path in sys.argv[1:]:
        print(main(["stats", path, "--device", "cpu", "--workers", "0"]), flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_unopened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: forever (in C code for pyarrow, where no
    signal reaches Python), so this runs in a child with a deadline."""
    fifos = [tmp_path / name for name in ("pipe.png", "pipe.tar", "pipe.parquet")]
    for fifo in fifos:
        os.mkfifo(fifo)
    try:
        proc = subprocess.run([sys.executable, "-c", _LIST, *map(str, fifos)], capture_output=True, text=True,
                              timeout=90, env=_child_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"reading a named pipe hung (exit statuses so far: {exc.stdout!r})")
    assert proc.stdout.split() == ["1", "1", "1"], proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and all("is a named pipe (FIFO), not a regular file" in line for line in lines)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.timeout(60)
def test_a_device_is_refused_unopened(capsys):
    rc, out, err = _run(capsys, "stats", "/dev/zero", "--device", "cpu", "--workers", "0")
    assert rc == 1 and "is a character device" in err


# ====================================================================== 5. torch.distributed environment
@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "2"}, "RANK, MASTER_ADDR, MASTER_PORT are not set"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK=5 is outside 0..1"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT=99999"),
])
def test_a_torchrun_environment_is_checked(capsys, tmp_path, monkeypatch, env, says):
    for name in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rc, out, err = _run(capsys, "stats", _folder(tmp_path), "--device", "cpu", "--workers", "0")
    assert rc == 1 and err.count("\n") == 1 and says in err and "torchrun" in err
    assert not torch.distributed.is_initialized()


def test_the_rendezvous_wait_is_bounded(capsys, tmp_path, monkeypatch):
    """Rank 0 of 2 with no rank 1 waited for gloo's 30-minute default, silently."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    started = time.monotonic()
    rc, out, err = _run(capsys, "stats", _folder(tmp_path), "--device", "cpu", "--workers", "0",
                        "--rendezvous-timeout", "1")
    assert rc == 1 and time.monotonic() - started < 30
    assert err.count("\n") == 1 and "could not meet the other ranks" in err and "--rendezvous-timeout" in err
    assert not torch.distributed.is_initialized()


# ====================================================================== 6. the early check is the final write
def test_a_long_output_name_that_passes_the_check_is_written(capsys, tmp_path):
    """A 250-character name is legal, but NAME.<16 hex>.tmp was not: the run failed after decoding."""
    output, ck = tmp_path / ("o" * 250), tmp_path / ("c" * 250)
    rc, out, err = _run(capsys, "stats", _folder(tmp_path), "--device", "cpu", "--workers", "0", "-q", "-o", output,
                        "--checkpoint", ck, "--format", "json")
    assert rc == 0, err
    assert json.loads(output.read_text())["images"] == 4 and json.loads(ck.read_text())["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["imgs", output.name, ck.name])  # no temporaries


@pytest.mark.parametrize("flag", ["--output", "--checkpoint", "--plot"])
def test_a_dangling_symlink_into_a_missing_folder_fails_before_the_run(capsys, tmp_path, no_decoding, flag):
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "missing" / "target.png")
    rc, out, err = _run(capsys, "stats", _folder(tmp_path), "--device", "cpu", "--workers", "0", flag, link)
    assert rc == 1 and no_decoding == []
    assert err.count("\n") == 1 and "does not exist" in err and "where the symlink" in err


def test_a_symlinked_output_stays_a_link(capsys, tmp_path):
    link, target = tmp_path / "out.json", tmp_path / "real.json"
    link.symlink_to(target)  # dangling, into an existing folder: the target is created
    rc, _, err = _run(capsys, "stats", _folder(tmp_path), "--device", "cpu", "--workers", "0", "-q", "-o", link,
                      "--format", "json")
    assert rc == 0, err
    assert link.is_symlink() and json.loads(target.read_text())["images"] == 4


# ====================================================================== 7. outputs are not inputs
def test_outputs_that_are_each_other_or_inputs_are_refused(capsys, tmp_path, no_decoding):
    folder = _folder(tmp_path)
    archive = tmp_path / "victim.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder / "00.png", "00.png")
    before = archive.read_bytes()
    cases = [
        (["-o", tmp_path / "same.json", "--checkpoint", tmp_path / "same.json"], "name the same file"),
        (["--plot", tmp_path / "ck.png", "--checkpoint", tmp_path / "ck.png"], "name the same file"),
        (["-o", archive], "is an input of this run"),
        (["--plot", folder / "01.png"], "lies in the input folder"),
        (["--plot", folder / "new.png"], "lies in the input folder"),  # the next run would read it
    ]
    for flags, says in cases:
        rc, out, err = _run(capsys, "stats", folder, archive, "--device", "cpu", "--workers", "0", *flags)
        assert rc == 1 and says in err and err.count("\n") == 1, (flags, err)
    assert no_decoding == [] and archive.read_bytes() == before and not (tmp_path / "same.json").exists()


def test_a_report_may_go_into_the_input_folder(capsys, tmp_path):
    folder = _folder(tmp_path)
    rc, _, err = _run(capsys, "stats", folder, "--device", "cpu", "--workers", "0", "-q", "-o", folder / "stats.json")
    assert rc == 0, err  # not an image name: the next run does not read it


# ====================================================================== 8. SIGTERM saves like Ctrl-C
_SLOW = textwrap.dedent("""
    import sys, time
    from gpustats.sources import mapside
    reduce_records = mapside.reduce_records
    def slow(*args, **kwargs):
        time.sleep(0.4)
        return reduce_records(*args, **kwargs)
    mapside.reduce_records = slow
    from gpustats.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_saves_the_checkpoint_once_and_leaves_no_temporary_file(tmp_path, capsys):
    folder = _folder(tmp_path, n=12)
    ck = tmp_path / "run.ckpt"
    args = ["stats", str(folder), "--device", "cpu", "--workers", "0", "--batch-size", "1", "-q", "--format", "json",
            "--checkpoint", str(ck), "--checkpoint-every", "0"]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW, *args], cwd=tmp_path, env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(10):  # a scheduler (or an impatient user) sends several
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.02)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.count("interrupted") == 1 and out == ""
    saved = json.loads(ck.read_text())
    assert 0 < saved["next_index"] < 12 and not saved["complete"]
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    rc, resumed, err = _run(capsys, *args[:-4], "--checkpoint", ck)
    assert rc == 0 and err == ""  # -q
    rc, fresh, _ = _run(capsys, *args[:-4])
    assert json.loads(resumed)["state"] == json.loads(fresh)["state"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """kill -9 during a write leaves NAME's temporary file; the next write removes it, and only such files:
    never one of a process that still runs, never another file's."""
    from gpustats.checkpoint import atomic_write_text, _swept, temp_path

    target = tmp_path / "run.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    live = str(os.getppid())
    mine = Path(temp_path(target))
    stale = mine.with_name(mine.name.replace(f"-{os.getpid():010d}-", f"-{int(dead):010d}-"))
    running = mine.with_name(mine.name.replace(f"-{os.getpid():010d}-", f"-{int(live):010d}-"))
    other = Path(temp_path(tmp_path / "other.json"))
    other = other.with_name(other.name.replace(f"-{os.getpid():010d}-", f"-{int(dead):010d}-"))
    for path in (stale, running, other):
        path.write_text("half a checkpoint")
    _swept.clear()
    atomic_write_text(target, "{}")
    assert not stale.exists() and running.exists() and other.exists()
    assert target.read_text() == "{}"


# ====================================================================== 9. one line, never a traceback
def test_a_closed_stdout_is_said_before_the_run(capsys, tmp_path, monkeypatch, no_decoding):
    monkeypatch.setattr(sys, "stdout", None)  # what `gpustats stats ... >&-` gives Python
    rc = main(["stats", str(_folder(tmp_path)), "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and no_decoding == [] and "stdout is closed" in err and "--output" in err


def test_deeply_nested_braces_are_one_line():
    from gpustats.sources import SourceError
    from gpustats.sources.braces import expand_braces

    with pytest.raises(SourceError, match="nested more than 32 levels"):
        expand_braces("{a," * 500 + "b" + "}" * 500)
    with pytest.raises(SourceError, match="expands to more than"):
        expand_braces("{a,b}" * 3000)  # many groups in a row: a loop now, no recursion
    assert expand_braces("{a,{b,{c,d}}}-{0..1}") == ["a-0", "a-1", "b-0", "b-1", "c-0", "c-1", "d-0", "d-1"]


U8 = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)


@pytest.mark.parametrize("options, says", [
    ({"scale": 1e-200}, "scale must be"), ({"scale": 1e308}, "scale must be"), ({"layout": 3}, "layout must be"),
    ({"channels": True}, "channels must be"), ({"channels": np.bool_(True)}, "channels must be"),
])
def test_bad_option_values_are_one_error(options, says):
    from gpustats.batches import InputError

    with pytest.raises(InputError, match=says):
        compute_stats([U8], device="cpu", **{"layout": "NCHW", **options})


def test_a_scale_that_pushes_the_result_out_of_float64_is_refused():
    """Within the accepted range the data can still overflow: float64 data of 1e150 over scale 1e-30."""
    from gpustats.stats import StatsError

    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4)) * 1e150
    with pytest.raises(StatsError, match="out of float64's range"):
        compute_stats([x], device="cpu", layout="NCHW", scale=1e-30)
    s = compute_stats([U8], device="cpu", layout="NCHW", scale=1e30)  # extreme but representable
    ref = U8.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(s.std, ref.std(axis=1) / 1e30, rtol=1e-12)


def test_numpy_integer_scalars_count_like_python_ints():
    ref = compute_stats([U8], device="cpu", layout="NCHW", channels=3, scale=2)
    got = compute_stats([U8], device="cpu", layout="NCHW", channels=np.int64(3), scale=np.int64(2))
    assert got.mean.tolist() == ref.mean.tolist() and got.std.tolist() == ref.std.tolist()
    assert compute_stats([U8], device="cpu", layout="nchw", scale=np.float32(2)).mean.tolist() == ref.mean.tolist()


@pytest.mark.parametrize("batch, says", [
    (np.zeros((2, 3, 4, 4), np.longdouble), "unsupported numpy dtype"),
    (torch.zeros(2, 3, 4, 4).to_sparse(), "sparse_coo tensor"),
    (torch.zeros(2, 3, 4, 4, device="meta"), "'meta' device"),
    ([torch.zeros(3, 2, 2).to_sparse()], "sparse_coo tensor"),
])
def test_unreadable_tensors_are_one_error(batch, says):
    from gpustats.batches import InputError

    if isinstance(batch, np.ndarray) and batch.dtype.itemsize <= 8:
        pytest.skip("long double is float64 here")
    with pytest.raises(InputError, match=says):
        compute_stats([batch], device="cpu", layout="NCHW" if getattr(batch, "ndim", 3) == 4 else None)


# ====================================================================== 10. say it, don't surprise
def test_a_constant_channel_warns_where_the_line_is_pasted(capsys, tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.new("RGB", (4, 4), (7, 7, 7)).save(folder / "a.png")
    rc, out, err = _run(capsys, "stats", folder, "--device", "cpu", "--format", "python")
    assert rc == 0 and "std=[0.0, 0.0, 0.0])  # WARNING: std 0 in R, G, B (constant)" in out
    assert "warning: std is 0 in channel(s) R, G, B" in err and "divide by zero" in err
    rc, out, err = _run(capsys, "stats", folder, "--device", "cpu", "--format", "python", "-q")
    assert rc == 0 and err == "" and "# WARNING" in out


@pytest.mark.parametrize("flags, rc_expected, says", [
    (["--confidence", "7"], 2, "strictly between 0 and 1"),
    (["--strategy", "bogus"], 2, "expected one of auto"),
    (["--seed", "3"], 1, "--seed applies only with --sample-tolerance"),
    (["--max-images", "5", "--confidence", "0.9"], 1, "--confidence, --max-images apply only with"),
])
def test_options_that_would_do_nothing_are_refused(capsys, tmp_path, no_decoding, flags, rc_expected, says):
    folder = _folder(tmp_path)
    if rc_expected == 2:
        with pytest.raises(SystemExit) as exc:
            main(["stats", str(folder), "--device", "cpu", *flags])
        rc = exc.value.code
    else:
        rc = main(["stats", str(folder), "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert rc == rc_expected and says in err and no_decoding == []


def test_a_bogus_strategy_is_refused_by_the_library_too():
    from gpustats.batches import InputError

    with pytest.raises(InputError, match="strategy must be one of"):
        compute_stats([U8], device="cpu", layout="NCHW", strategy="bogus")


def test_the_plot_is_written_in_the_format_its_name_asks_for(capsys, tmp_path, no_decoding):
    from gpustats.plot import plot_histograms

    stats = compute_stats([U8], device="cpu", layout="NCHW", histogram=True)
    plot_histograms(stats, tmp_path / "h.pdf")  # PNG bytes whatever the name, before
    assert (tmp_path / "h.pdf").read_bytes().startswith(b"%PDF")
    from gpustats.plot import plot_format

    assert [plot_format(n) for n in ("a.svg", "a.PNG", "a", "a.jpg", "a.tif")] == ["svg", "png", "png", "jpeg", "tiff"]
    rc, _, err = _run(capsys, "stats", _folder(tmp_path), "--device", "cpu", "--workers", "0", "--plot",
                      tmp_path / "h.xyz")
    assert rc == 1 and "cannot write a plot as .xyz" in err and no_decoding == []


def test_workers_are_capped_by_the_work_and_said_once(capsys, tmp_path, monkeypatch, recwarn):
    folder = _folder(tmp_path, n=4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one usable core
    rc, out, err = _run(capsys, "stats", folder, "--device", "cpu", "--workers", "40", "--batch-size", "2",
                        "--format", "json")
    assert rc == 0 and json.loads(out)["workers"] == 2  # 2 tasks: 2 processes, not 40
    assert err.count("decode workers on 1 usable CPU cores") == 1
    assert not [w for w in recwarn if "DataLoader will create" in str(w.message)]  # torch's, twice before


def test_one_sampled_image_reads_the_same_in_every_format():
    from gpustats.intervals import SampledStats
    from gpustats.report import format_sampled

    inf = np.full(3, np.inf)
    half = {"mean": inf, "std": inf}
    result = SampledStats(mean=np.full(3, 0.5), std=np.full(3, 0.2), mean_ci=(-inf, inf), std_ci=(np.zeros(3), inf),
                          half_widths=half, images_used=1, units_visited=1, pixels_used=20, population_size=6,
                          stopped_because="max_images", confidence=0.95, tolerance=0.01, is_estimate=True,
                          scale=255.0, seed=0, elapsed_s=1.0)
    table = format_sampled(result, "table", ("R", "G", "B"))
    python = format_sampled(result, "python", ("R", "G", "B"))
    doc = json.loads(format_sampled(result, "json", ("R", "G", "B")))
    assert "CI high            inf       inf       inf" in table and "nan" not in table
    assert "± inf" in python and doc["half_widths"]["std"] == [None] * 3
    for text in (table, python, doc["note"]):
        assert "the intervals are unbounded" in text


def test_zip_and_parquet_files_inside_a_tar_are_said(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("x.png", _png())
    for name, mode in (("outer.tar", "w"), ("outer.tar.gz", "w:gz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            for member, data in (("a.png", _png(1)), ("more.zip", inner.getvalue()), ("rows.parquet", b"PAR1")):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        notes = []
        run = run_folder([tmp_path / name], device="cpu", workers=0, note=notes.append)
        assert run.images == 1
        assert [n for n in notes if "zip/Parquet" in n] == [
            f"{tmp_path / name} holds 2 zip/Parquet file(s) (first: 'more.zip'), which are not read inside a tar "
            "(only tars are): extract them and name them"]


def test_a_pax_sparse_member_is_named_by_its_real_name(tmp_path):
    from gpustats.sources.units import list_units

    data = _png()
    with tarfile.open(tmp_path / "s.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("./GNUSparseFile.123/photo.png")  # what GNU tar writes for a sparse file
        info.size = len(data)
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "photo.png",
                            "GNU.sparse.realsize": str(len(data))}
        tar.addfile(info, io.BytesIO(data))
    (unit,) = list_units([tmp_path / "s.tar"])
    assert unit.item_name(0) == f"{tmp_path / 's.tar'}:photo.png"
    assert unit.refused[0] == "sparse member (not supported); refused"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs file names that are not UTF-8")
def test_json_is_strict_for_names_that_are_not_utf8(capsys, tmp_path):
    folder = _folder(tmp_path, n=1)
    (folder / os.fsdecode(b"bad\xff.png")).write_bytes(b"not an image")
    rc, out, _ = _run(capsys, "stats", folder, "--device", "cpu", "--workers", "0", "-q", "--format", "json")
    assert rc == 0 and "\\udc" not in out  # a lone surrogate escape: strict parsers reject it
    doc = json.loads(out)
    out.encode("utf-8")
    assert doc["bad_files"][0]["path"].endswith("bad\\xff.png")


def test_a_letter_range_is_said(capsys, tmp_path):
    rc, out, err = _run(capsys, "stats", tmp_path / "img-{a..c}.png", "--device", "cpu")
    assert rc == 1 and "letter ranges such as {a..c} are not expanded" in err and "{a,b,c}" in err


def test_an_unsupported_tiff_is_not_called_not_an_image(tmp_path):
    from gpustats.sources import BadImage, decode_image

    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    reopened = Image.open(io.BytesIO(bytes(data)))
    assert reopened.tag_v2[258] == (8, 8, 8)
    offset = data.find(b"\x08\x00\x08\x00\x08\x00")  # BitsPerSample, stored out of line
    data[offset:offset + 6] = b"\x0c\x00\x0c\x00\x0c\x00"  # 12-bit samples: valid TIFF, not for Pillow
    path = tmp_path / "odd.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(BadImage) as exc:
        decode_image(path)
    assert exc.value.reason == "unsupported TIFF file: unknown pixel mode"
    (tmp_path / "junk.png").write_bytes(b"just text")
    with pytest.raises(BadImage) as exc:
        decode_image(tmp_path / "junk.png")
    assert exc.value.reason == "not an image"


def test_a_bad_parquet_row_is_named_by_its_path_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"bytes": _png(), "path": "good.png"}, {"bytes": b"junk", "path": "cat.png"},
            {"bytes": b"junk", "path": None}]
    column = pa.array(rows, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": column}), tmp_path / "d.parquet")
    run = run_folder([tmp_path / "d.parquet"], device="cpu", workers=0)
    assert [(b["path"][len(str(tmp_path)) + 1:], b["reason"]) for b in run.bad_files] == [
        ("d.parquet:1", "not an image (the row's path: 'cat.png')"), ("d.parquet:2", "not an image")]
