"""Never lose or clobber what a run writes (issue "bounded memory, signals, paths and bad values"): the
early check of an output is the final write, outputs are not inputs, SIGTERM saves the checkpoint like
Ctrl-C, and a killed writer's temporary file is removed by the next write.

Each test pins one defect the adversarial run found; each failed before its fix. Signals run in a child
with a timeout; everything else runs in this process on tiny data. Shared helpers:
tests/_never_crash_helpers.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

import _never_crash_helpers
from _never_crash_helpers import _child_env, _folder, _run

pytestmark = pytest.mark.timeout(120)
no_decoding = _never_crash_helpers.no_decoding  # a shared fixture (assigned: pyflakes reads an imported one as unused)


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
    from gpustats.sources import reduce_tasks
    reduce_records = reduce_tasks.reduce_records
    def slow(*args, **kwargs):
        time.sleep(0.4)
        return reduce_records(*args, **kwargs)
    reduce_tasks.reduce_records = slow
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
    from gpustats.checkpoint import _swept, atomic_write_text, temp_path

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
