"""Never crash on what the user gives (issue "bounded memory, signals, paths and bad values"): bad
geometry, bench arguments, named pipes and devices, a torchrun environment, closed stdout, nested braces
and bad option values are refused before the run, in one line, never a traceback.

Each test pins one defect the adversarial run found; each failed before its fix. Hangs run in a child
with a timeout; everything else runs in this process on tiny data. Shared helpers:
tests/_never_crash_helpers.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from gpustats import compute_stats
from gpustats.cli import main

import _never_crash_helpers
from _never_crash_helpers import U8, _child_env, _folder, _run

pytestmark = pytest.mark.timeout(120)
no_decoding = _never_crash_helpers.no_decoding  # a shared fixture (assigned: pyflakes reads an imported one as unused)


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
