"""Say it, don't surprise (issue "bounded memory, signals, paths and bad values"): warnings where the
line is pasted, options that would do nothing refused, plot formats by name, capped workers said once,
unbounded intervals, unread zip/Parquet files inside a tar, odd member and file names, unsupported TIFFs.

Each test pins one defect the adversarial run found; each failed before its fix; all run in this
process on tiny data. Shared helpers: tests/_never_crash_helpers.py.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from gpustats import compute_stats
from gpustats.cli import main
from gpustats.sources.engine import run_folder

import _never_crash_helpers
from _never_crash_helpers import U8, _folder, _png, _run

pytestmark = pytest.mark.timeout(120)
no_decoding = _never_crash_helpers.no_decoding  # a shared fixture (assigned: pyflakes reads an imported one as unused)


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
