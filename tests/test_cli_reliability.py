"""The command's defects found by the adversarial run (issue "Reliability"), each pinned by a test.

Every test here failed before its fix: a traceback or a late or silent failure where the command
promises one clear line (exit 1) before any work, or output that misleads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpustats.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _folder(tmp_path, n=4, size=(6, 5), bad=0, name="imgs"):
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    for i in range(bad):
        (folder / f"bad{i}.png").write_bytes(b"")
    return folder


def _run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _cli(*args, env=None, **kw):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run([sys.executable, "-m", "gpustats", *args], cwd=kw.pop("cwd", ROOT), env=full_env,
                          capture_output=True, timeout=300, **kw)


# ------------------------------------------------------------------ found too late / quietly wrong
@pytest.mark.parametrize("flag", ["--output", "--checkpoint", "--plot"])
def test_unwritable_output_fails_before_any_file_is_decoded(capsys, monkeypatch, tmp_path, flag):
    from gpustats.sources import reduce_tasks

    folder = _folder(tmp_path)
    decoded = []
    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", lambda self, b: decoded.append(b))
    target = str(tmp_path / "missing-folder" / "out.file")
    rc, out, err = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", flag, target)
    assert rc == 1 and decoded == []
    assert err.startswith(f"gpustats: error: {flag} {target!r}") and "does not exist" in err and err.count("\n") == 1


def test_strict_is_honoured_when_resuming_a_checkpoint_with_bad_files(capsys, tmp_path):
    folder = _folder(tmp_path, bad=1)
    ck = str(tmp_path / "run.ckpt")
    rc, _, _ = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "--checkpoint", ck, "-q")
    assert rc == 0
    rc, out, err = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "--checkpoint", ck,
                        "--strict", "-q")
    assert rc == 1 and out == "" and "bad0.png: zero-byte file" in err and "checkpoint" in err


def test_max_pixels_replaces_pillows_own_limit(monkeypatch, tmp_path):
    """A limit above Pillow's (MAX_IMAGE_PIXELS, lowered here to stand for its 179M-pixel one) is honoured."""
    from gpustats.sources import BadImage, decode_image

    path = tmp_path / "big.png"
    Image.new("RGB", (50, 40), (1, 2, 3)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone refuses 2,000 > 2 x 100 pixels
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert decode_image(path, max_pixels=10_000).shape == (40, 50, 3)  # our limit decides
    with pytest.raises(BadImage, match="too large"):  # None: no limit of ours, Pillow's stands
        decode_image(path, max_pixels=None)
    with pytest.raises(BadImage, match="max_pixels=1999"):
        decode_image(path, max_pixels=1999)
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's setting is restored


def test_16_bit_files_are_reported_once_with_their_count(capsys, tmp_path):
    folder = _folder(tmp_path, n=2)
    for i in range(3):
        Image.fromarray(np.full((4, 5), 1000 * (i + 1), np.uint16)).save(folder / f"deep{i}.png")
    assert Image.open(folder / "deep0.png").mode.startswith("I")
    rc, out, err = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "-q")
    assert rc == 0 and err == ""
    assert out.count("16-bit grayscale image") == 1 and "warning (3 files): 16-bit grayscale image" in out
    rc, out, _ = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "-q", "--format", "json")
    assert json.loads(out)["warnings"] == [{"message": json.loads(out)["warnings"][0]["message"], "files": 3}]


def test_deep_image_warnings_count_only_changed_files_and_say_what_happened(capsys, tmp_path):
    """Issue 25, item 9: the 16-bit warning counted files that did not clip (an MRI scan with maximum 215),
    was also given to 32-bit int/float TIFFs, and a 48-bit PNG (which Pillow reduces to 8 bits) got none."""
    import struct
    import zlib

    folder = _folder(tmp_path, n=2)
    Image.fromarray(np.array([[0, 215], [7, 9]], np.uint16)).save(folder / "mri.png")  # 16-bit, nothing clips
    Image.fromarray(np.array([[0, 4000], [7, 9]], np.uint16)).save(folder / "scan.png")  # clips at 255
    Image.fromarray(np.array([[0, 200], [7, 9]], np.int32)).save(folder / "int_ok.tif")
    Image.fromarray(np.array([[-3, 200], [7, 9]], np.int32)).save(folder / "int_neg.tif")
    Image.fromarray(np.array([[0.0, 200.0], [7.0, 9.0]], np.float32)).save(folder / "float_ok.tif")
    Image.fromarray(np.array([[0.5, 200.0], [7.0, 9.0]], np.float32)).save(folder / "float_frac.tif")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\0" + struct.pack(">HHHHHH", 0x1234, 2, 0xFFFF, 0x80, 0x8000, 3) for _ in range(2))
    (folder / "colour48.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
                                       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert Image.open(folder / "colour48.png").mode == "RGB"
    rc, out, err = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "-q", "--format", "json")
    assert rc == 0, err
    said = {w["message"].split(":")[0]: w["files"] for w in json.loads(out)["warnings"]}
    assert said == {"16-bit grayscale image with values above 255": 1, "32-bit integer image with values outside 0..255": 1,
                    "32-bit float image with values that are not integers in 0..255": 1,
                    "16-bit-per-channel colour image": 1}
    messages = " ".join(w["message"] for w in json.loads(out)["warnings"])
    assert "clipped to 255" in messages and "truncated to integers" in messages and "value // 256" in messages


def test_unreadable_subfolder_is_listed_like_a_bad_file(capsys, monkeypatch, tmp_path):
    import gpustats.sources.listing as listing

    folder = _folder(tmp_path)
    locked = folder / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(listing.os, "scandir", scandir)
    rc, out, err = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "-q", "--format", "json")
    assert rc == 0 and "UserWarning" not in err
    assert json.loads(out)["bad_files"] == [{"path": str(locked), "reason": "unreadable folder: Permission denied"}]
    rc, out, err = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "-q", "--strict")
    assert rc == 1 and "unreadable folder" in err


def test_a_killed_decode_worker_is_one_line_and_the_checkpoint_is_kept(tmp_path):
    folder = _folder(tmp_path, n=8)
    ck = tmp_path / "run.ckpt"
    script = (
        "import os, sys, signal\n"
        "from gpustats.sources import reduce_tasks\n"
        "reduce_tasks._start_method = lambda: 'fork'\n"
        "real = reduce_tasks.ReducedBatches.__getitem__\n"
        "def dying(self, b):\n"
        "    if b == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, b)\n"
        "reduce_tasks.ReducedBatches.__getitem__ = dying\n"
        "from gpustats.cli import main\n"
        f"sys.exit(main(['stats', {str(folder)!r}, '--device', 'cpu', '--workers', '1', '--batch-size', '2', "
        f"'--checkpoint', {str(ck)!r}, '-q']))\n")
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("gpustats: error: a decode worker process died") and proc.stderr.count("\n") == 1
    assert ck.exists() and "rerun to resume" in proc.stderr


# ------------------------------------------------------------------ tracebacks where one line is promised
def test_bad_file_name_that_is_not_utf8_goes_to_the_report_file(tmp_path):
    folder = _folder(tmp_path)
    bad = os.path.join(os.fsencode(folder), b"bad\xff.png")
    with open(bad, "wb"):
        pass
    report = tmp_path / "report.txt"
    proc = _cli("stats", str(folder), "--device", "cpu", "--workers", "0", "-q", "-o", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "bad\\udcff.png: zero-byte file" in report.read_text(encoding="utf-8")


def test_a_non_utf8_terminal_gets_escapes_not_a_traceback(tmp_path):
    folder = _folder(tmp_path)
    (folder / "été.png").write_bytes(b"")
    proc = _cli("stats", str(folder), "--device", "cpu", "--workers", "0", "-q", env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr
    assert b"\\xe9t\\xe9.png: zero-byte file" in proc.stdout


# ------------------------------------------------------------------ cosmetics
def test_python_format_refuses_nan(capsys, tmp_path):
    folder = tmp_path / "const"
    folder.mkdir()
    Image.new("RGB", (3, 3), (9, 9, 9)).save(folder / "a.png")  # std 0: Normalize would divide by 0
    rc, out, err = _run(capsys, "stats", str(folder), "--device", "cpu", "--workers", "0", "-q",
                        "--format", "python", "--ddof", "1")
    assert rc == 0 and "nan" not in out  # ddof=1 over 9 pixels is finite: 0
    import gpustats.report as report
    from gpustats.stats import StatsError

    class Run:  # a run whose std is NaN
        class stats:
            @staticmethod
            def normalize_args():
                return [0.5], [float("nan")]

    with pytest.raises(StatsError, match="NaN or inf"):
        report.format_run(Run(), "python")


def test_table_wording(capsys, tmp_path):
    folder = _folder(tmp_path, bad=1)
    (folder / "new\nline.png").write_bytes(b"")
    # few files: no workers. --decode cpu: the wording of the CPU decoder's line, on a GPU machine too (there
    # --decode auto picks nvJPEG and the line reads "decode: gpu (nvJPEG)")
    rc, out, err = _run(capsys, "stats", str(folder), "-q", "--covariance", "--decode", "cpu")
    assert rc == 0 and "RuntimeWarning" not in err
    assert "2 bad files skipped" in out and "new\\nline.png: zero-byte file" in out
    assert "in this process (runs of under 64 files do not start worker processes)" in out
    if "GPU not used" in out:
        assert "device='cpu'" not in out
    folder1 = _folder(tmp_path, bad=1, name="one")
    rc, out, _ = _run(capsys, "stats", str(folder1), "--device", "cpu", "--workers", "0", "-q")
    assert "1 bad file skipped" in out and "1 bad files" not in out


def test_bench_table_says_why_memcpy_and_roofline_are_dashes():
    from gpustats.benchmark import format_table

    rows = [{"method": "memcpy", "strategy": "memcpy", "dtype": "uint8", "layout": "NCHW", "size": "8MiB",
             "gbps": 9.0, "roofline_frac": None, "speedup": 40.0, "baseline": "forum-recipe"}]
    table = format_table(rows)
    assert "40.00x" not in table and "memcpy: a torch copy" in table and "% roofline: measured on CUDA only" in table


def test_sampled_share_counts_images_used():
    from gpustats.intervals import SampledStats
    from gpustats.report import format_sampled

    one = np.array([0.5])
    result = SampledStats(  # 24 files visited: 19 images, 5 bad
        mean=one, std=one / 5, mean_ci=(one, one), std_ci=(one / 5, one / 5),
        half_widths={"mean": one * 0, "std": one * 0}, images_used=19, units_visited=24, pixels_used=190,
        population_size=24, stopped_because="exhausted", confidence=0.95, tolerance=0.0, is_estimate=False,
        scale=255.0, seed=0, elapsed_s=2.4, bad_files=tuple((f"b{i}.png", "not an image") for i in range(5)),
        units="files")
    text = format_sampled(result, "table")
    assert "24 of 24 files visited (19 images, 5 bad files) (100.0%)" in text
