"""Checkpoint/resume: atomic files, bitwise identical resumed results (also after SIGKILL), refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpustats import ChannelStats
from gpustats.checkpoint import (CHECKPOINT_FORMAT, Checkpoint, CheckpointError, check_compatible,
                                 file_list_fingerprint, rank_path, read_checkpoint, write_checkpoint)
from gpustats.cli import main
from gpustats.sources.synthetic import make_demo_folder, make_tiny_folder

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.pop("WORLD_SIZE", None)
    return env


def _json(capsys, *args: str) -> dict:
    rc = main(["stats", *args, "--format", "json", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck") / "imgs"
    make_tiny_folder(root, 400)
    (root / "d0000" / "t0000100.png").write_bytes(b"")  # one bad file on the way (399 good)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck_small") / "imgs"
    make_tiny_folder(root, 150)
    (root / "d0000" / "t0000020.png").write_bytes(b"")
    return root


# ---------------------------------------------------------------------------------- the file
def test_write_read_round_trip_is_exact(tmp_path):
    state = ChannelStats.from_integer_sums([4], [10], [30], [1], [4], dtype="uint8", scale=255.0)
    ck = Checkpoint(state=state, next_index=3, files_total=9, fingerprint="f", options={"mode": "RGB"},
                    bad_files=[{"path": "a.jpg", "reason": "not an image"}], images=2, bytes=10, elapsed_s=1.5)
    path = tmp_path / "c.json"
    write_checkpoint(path, ck)
    back = read_checkpoint(path)
    assert back.state == state and back.to_dict() == ck.to_dict()
    assert json.loads(path.read_text())["format"] == CHECKPOINT_FORMAT
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left behind
    assert read_checkpoint(tmp_path / "none.json") is None


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"format": "gpustats.checkpoint/1", "state"')
    with pytest.raises(CheckpointError, match="not valid JSON.*delete it"):
        read_checkpoint(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a gpustats checkpoint"):
        read_checkpoint(path)


def test_check_compatible_names_the_difference():
    ck = Checkpoint(state=ChannelStats.empty(), next_index=0, files_total=2, fingerprint="f",
                    options={"mode": "RGB", "resize": None})
    check_compatible("c", ck, fingerprint="f", files_total=2, options={"mode": "RGB", "resize": None})
    with pytest.raises(CheckpointError, match="resize: checkpoint None, now 224.*delete"):
        check_compatible("c", ck, fingerprint="f", files_total=2, options={"mode": "RGB", "resize": 224})
    with pytest.raises(CheckpointError, match="another file list"):
        check_compatible("c", ck, fingerprint="g", files_total=2, options={"mode": "RGB", "resize": None})


def test_fingerprint_and_rank_path(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"12")
    b.write_bytes(b"345")
    first = file_list_fingerprint([a, b])
    assert first == file_list_fingerprint([a, b]) != file_list_fingerprint([b, a])
    b.write_bytes(b"3456")
    assert file_list_fingerprint([a, b]) != first  # sizes count
    second = file_list_fingerprint([a, b])
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 1))
    assert file_list_fingerprint([a, b]) != second  # and modification times, to the nanosecond
    assert rank_path("run.ckpt", 0, 1) == "run.ckpt" and rank_path("run.ckpt", 3, 4) == "run.ckpt.rank3"


@pytest.mark.parametrize("archive", [False, True])
def test_a_file_rewritten_with_the_same_size_is_noticed(capsys, tmp_path, archive):
    """Issue 25, item 2: rewriting a counted BMP with the same size resumed silently with another mean.
    The fingerprint records each file's (and each archive's) size and modification time."""
    import tarfile

    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((4, 5, 3), 10 * i, np.uint8)).save(data / f"{i}.bmp")
    target = data
    if archive:
        target = tmp_path / "shard.tar"
        with tarfile.open(target, "w") as tar:
            for i in range(4):
                tar.add(data / f"{i}.bmp", arcname=f"{i}.bmp")
    ck = tmp_path / "c.ckpt"
    opts = [str(target), "--device", "cpu", "--workers", "0", "--checkpoint", str(ck), "--quiet"]
    assert main(["stats", *opts]) == 0
    capsys.readouterr()
    changed = target if archive else data / "1.bmp"
    size, mtime = changed.stat().st_size, changed.stat().st_mtime_ns
    blob = changed.read_bytes()
    pixel = blob.rindex(bytes([10, 10, 10]))  # one pixel of image 1, in place: same size, other values
    changed.write_bytes(blob[:pixel] + bytes([200, 200, 200]) + blob[pixel + 3:])
    os.utime(changed, ns=(mtime + 10**9, mtime + 10**9))  # a rewrite moves the modification time
    assert changed.stat().st_size == size
    assert main(["stats", *opts]) == 1
    err = capsys.readouterr().err
    assert "another file list" in err and "modification times" in err and "delete" in err and err.count("\n") == 1


def test_a_checkpoint_without_modification_times_is_refused(tmp_path):
    files = make_tiny_folder(tmp_path / "d", 3)
    for older in ("v2:" + "0" * 64 + ":" + "1" * 64, "a" * 64, "a1:" + "2" * 64):
        ck = Checkpoint(state=ChannelStats.empty(), next_index=0, files_total=3, fingerprint=older, options={})
        with pytest.raises(CheckpointError, match="earlier gpustats.*modification times.*delete"):
            check_compatible("c", ck, fingerprint=file_list_fingerprint(files), files_total=3, options={})


# ---------------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_bitwise_identical(capsys, monkeypatch, tmp_path, small):
    """Ctrl-C mid-run saves the checkpoint; the rerun gives exactly the uninterrupted state,
    per-image aggregates (float64 merges) included."""
    from gpustats.sources import reduce_tasks

    opts = [str(small), "--device", "cpu", "--workers", "0", "--batch-size", "8", "--histogram", "--covariance",
            "--per-image"]
    full = _json(capsys, *opts)
    ck = tmp_path / "run.ckpt"
    real_batch, calls = reduce_tasks.ReducedBatches.__getitem__, {"n": 0}

    def batch_then_interrupt(self, b):  # Ctrl-C while the 9th batch is being decoded
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real_batch(self, b)

    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", batch_then_interrupt)
    rc = main(["stats", *opts, "--checkpoint", str(ck), "--checkpoint-every", "3600", "--quiet"])
    assert rc == 130
    saved = read_checkpoint(ck)
    assert not saved.complete and saved.next_index == 8 * 8 and saved.images == 8 * 8 - 1
    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", real_batch)
    resumed = _json(capsys, *opts, "--checkpoint", str(ck))
    assert resumed["resumed_from"] == 8 * 8
    assert resumed["state"] == full["state"] and resumed["stats"] == full["stats"]
    assert resumed["bad_files"] == full["bad_files"] and resumed["images"] == full["images"] == 149
    done = read_checkpoint(ck)
    assert done.complete and done.next_index == 150
    again = _json(capsys, *opts, "--checkpoint", str(ck))  # a finished run just reports
    assert again["state"] == full["state"] and again["resumed_from"] == 150


def test_sigkill_mid_run_then_rerun_is_bitwise_identical(capsys, tmp_path, tiny):
    opts = [str(tiny), "--device", "cpu", "--workers", "0", "--histogram"]
    base = [sys.executable, "-m", "gpustats", "stats", *opts, "--batch-size", "2", "--format", "json", "--quiet"]
    full = _json(capsys, *opts)  # 8-bit states are exact: any batch split gives the same bits
    for attempt in range(3):  # the run must still be going when it is killed
        ck = tmp_path / f"kill{attempt}.ckpt"
        proc = subprocess.Popen(base + ["--checkpoint", str(ck), "--checkpoint-every", "0"], cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        saved = read_checkpoint(ck)
        if saved is not None and not saved.complete:
            break
    else:
        pytest.fail("the run finished before it could be killed three times in a row")
    assert proc.returncode == -signal.SIGKILL
    assert 0 < saved.next_index < saved.files_total
    rerun = subprocess.run(base + ["--checkpoint", str(ck)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    resumed = json.loads(rerun.stdout)
    assert resumed["resumed_from"] == saved.next_index > 0
    assert resumed["state"] == full["state"]  # the exact state, bit for bit
    assert resumed["bad_files"] == full["bad_files"] and resumed["images"] == full["images"]


def test_checkpoint_of_other_options_or_files_is_refused(capsys, tmp_path):
    data = tmp_path / "data"
    make_demo_folder(data)
    ck = tmp_path / "c.ckpt"
    assert main(["stats", str(data), "--device", "cpu", "--workers", "0", "--checkpoint", str(ck), "--quiet"]) == 0
    capsys.readouterr()
    rc = main(["stats", str(data), "--device", "cpu", "--workers", "0", "--checkpoint", str(ck), "--mode", "L"])
    err = capsys.readouterr().err
    assert rc == 1 and "other options" in err and "mode: checkpoint 'RGB', now 'L'" in err and "delete" in err
    assert err.count("\n") == 1
    (data / "extra.png").write_bytes((data / "photo_b.png").read_bytes())
    rc = main(["stats", str(data), "--device", "cpu", "--workers", "0", "--checkpoint", str(ck)])
    err = capsys.readouterr().err
    assert rc == 1 and "another file list" in err and "delete" in err
