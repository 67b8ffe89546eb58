"""Archives read in place (tar incl. nested tars, tar.gz, zip, WebDataset shards by brace pattern,
Parquet) give the exact state of the same images in a folder; bad members are listed by name;
checkpoints resume bitwise; ranks share units; sampling needs random access.

The archives are built here with tarfile, zipfile and pyarrow from the files of one folder, in
the folder's listing order, so every run is compared with the folder run of the same images (and
the integer totals with numpy on images decoded by Pillow directly).
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpustats.cli import main
from gpustats.sources import SourceError
from gpustats.sources.engine import StrictBadFile, run_folder

ROOT = Path(__file__).resolve().parent.parent
OPTS = dict(device="cpu", workers=0, batch_size=4, histogram=True, covariance=True, per_image=True)


# --------------------------------------------------------------------------------------- corpus
def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _corpus() -> list[tuple[str, bytes]]:
    """(relative path, bytes) in the folder's listing order: 13 images of every colour mode, 3 bad files.
    Each class folder holds 8 items, so batches of 4 cut folder and archives at the same places."""
    rng = np.random.default_rng(18)

    def pixels():
        return rng.integers(0, 256, (int(rng.integers(3, 17)), int(rng.integers(3, 17)), 3), dtype=np.uint8)

    good = _png(pixels())
    files = {
        "c1/a.png": _png(pixels()), "c1/b.jpg": _jpeg(pixels()), "c1/c.png": _png(pixels(), "L"),
        "c1/d.png": _png(pixels(), "RGBA"), "c1/e.png": _png(pixels(), "P"), "c1/f.JPEG": _jpeg(pixels()),
        "c1/g_truncated.png": good[: len(good) // 2], "c1/h_zero.jpg": b"",
        "c2/a.png": _png(pixels()), "c2/b.png": _png(pixels()), "c2/c.jpg": _jpeg(pixels()), "c2/d.png": _png(pixels()),
        "c2/e_text.jpg": b"this is not an image", "c2/f.png": _png(pixels()), "c2/g.png": _png(pixels(), "LA"),
        "c2/h.png": _png(pixels()),
    }
    return sorted(files.items())


SIDECARS = {".cls": b"3", ".json": b'{"label": 3}'}


def _tar_bytes(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _with_sidecars(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """WebDataset style: each image followed by its key's .cls and .json (ignored: not images), and hidden
    members a folder walk would skip too (a macOS resource fork, a hidden folder)."""
    out = [("__MACOSX/._a.png", b"resource fork")]
    for name, data in members:
        key = name.rsplit(".", 1)[0]
        out += [(name, data)] + [(key + ext, side) for ext, side in SIDECARS.items()]
    return out + [(".cache/x.png", b"hidden")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = tmp_path_factory.mktemp("archives")
    files = _corpus()
    folder = base / "folder"
    for name, data in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "c1" / "notes.txt").write_text("not listed")
    per_class = {c: [(n.split("/", 1)[1], d) for n, d in files if n.startswith(c + "/")] for c in ("c1", "c2")}
    out = {"base": base, "folder": folder, "files": files}
    out["plain.tar"] = base / "plain.tar"
    out["plain.tar"].write_bytes(_tar_bytes(_with_sidecars(files)))
    out["nested.tar"] = base / "nested.tar"  # the ILSVRC layout: one tar of per-class tars
    out["nested.tar"].write_bytes(_tar_bytes([("README.txt", b"classes")] + [
        (f"{c}.tar", _tar_bytes([(f"{c}/{n}", d) for n, d in per_class[c]])) for c in ("c1", "c2")]))
    out["plain.tar.gz"] = base / "plain.tar.gz"
    out["plain.tar.gz"].write_bytes(_tar_bytes(_with_sidecars(files), "w:gz"))
    out["mixed.tar"] = base / "mixed.tar"  # a compressed tar inside an uncompressed one
    out["mixed.tar"].write_bytes(_tar_bytes([
        ("c1.tar.gz", _tar_bytes([(f"c1/{n}", d) for n, d in per_class["c1"]], "w:gz")),
        ("c2.tar", _tar_bytes([(f"c2/{n}", d) for n, d in per_class["c2"]]))]))
    out["data.zip"] = base / "data.zip"
    with zipfile.ZipFile(out["data.zip"], "w") as z:
        for k, (name, data) in enumerate(_with_sidecars(files)):
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if k % 2 else zipfile.ZIP_STORED)
    for k in range(4):  # WebDataset shards of 4 images each
        (base / f"shard-{k:06d}.tar").write_bytes(_tar_bytes(_with_sidecars(files[4 * k: 4 * k + 4])))
    out["pattern"] = str(base / "shard-{000000..000003}.tar")
    out["data.parquet"] = base / "data.parquet"
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    image = pa.array([{"bytes": d, "path": n} for n, d in files], struct)
    pq.write_table(pa.table({"label": list(range(len(files))), "image": image}), out["data.parquet"], row_group_size=4)
    out["odd.parquet"] = base / "odd.parquet"  # row groups of 3 against batches of 4: per-image sums stay exact
    pq.write_table(pa.table({"image": image}), out["odd.parquet"], row_group_size=3)
    out["reference"] = run_folder([folder], **OPTS)
    return out


KINDS = ["plain.tar", "nested.tar", "plain.tar.gz", "mixed.tar", "data.zip", "pattern", "data.parquet", "odd.parquet"]


# ---------------------------------------------------------------------------------- exact state
@pytest.mark.parametrize("kind", KINDS)
def test_each_archive_kind_gives_the_folders_exact_state(corpus, kind):
    ref = corpus["reference"]
    run = run_folder([corpus[kind]], **OPTS)
    assert run.stats.state.to_dict() == ref.stats.state.to_dict()  # bit for bit, per-image aggregates too
    assert (run.images, run.files_total) == (ref.images, ref.files_total) == (13, 16)
    # (a bad Parquet row is also named by the row's path, when it has one)
    assert [b["reason"].split(" (the row's path: ")[0] for b in run.bad_files] == [b["reason"] for b in ref.bad_files]
    label = os.fspath(corpus[kind]) if kind != "pattern" else None
    names = [b["path"] for b in run.bad_files]
    if kind in ("plain.tar", "plain.tar.gz", "data.zip"):
        assert names == [f"{label}:c1/g_truncated.png", f"{label}:c1/h_zero.jpg", f"{label}:c2/e_text.jpg"]
    elif kind == "nested.tar":
        assert names[0] == f"{label}:c1.tar:c1/g_truncated.png" and names[2] == f"{label}:c2.tar:c2/e_text.jpg"
    elif kind == "mixed.tar":
        assert names[0] == f"{label}:c1.tar.gz:c1/g_truncated.png"
    elif kind == "pattern":
        base = corpus["base"]
        assert names == [f"{base}/shard-000001.tar:c1/g_truncated.png", f"{base}/shard-000001.tar:c1/h_zero.jpg",
                         f"{base}/shard-000003.tar:c2/e_text.jpg"]
    else:
        assert names == [f"{label}:6", f"{label}:7", f"{label}:12"]  # Parquet rows


def test_integer_totals_match_numpy_on_pillow_decoded_images(corpus):
    """An independent reference for the exact parts: Pillow's own convert("RGB") and numpy sums."""
    arrays = []
    for name, data in corpus["files"]:
        try:
            with Image.open(io.BytesIO(data)) as im:
                arrays.append(np.asarray(im.convert("RGB")).reshape(-1, 3).astype(np.int64))
        except Exception:
            continue
    pixels = np.concatenate(arrays)
    state = run_folder([corpus["nested.tar"]], **OPTS).stats.state
    assert [int(v) for v in state.isum] == pixels.sum(axis=0).tolist()
    assert [int(v) for v in state.isumsq] == (pixels * pixels).sum(axis=0).tolist()
    for c in range(3):
        assert state.hist[c].tolist() == np.bincount(pixels[:, c], minlength=256).tolist()


def test_several_paths_keep_their_order(corpus):
    opts = {**OPTS, "per_image": False}
    once = run_folder([corpus["folder"]], **opts).stats.state
    run = run_folder([corpus["data.zip"], corpus["plain.tar.gz"]], **opts)
    assert run.stats.state.to_dict() == once.merge(once).to_dict()  # exact integer totals: any split
    assert run.images == 26 and run.files_total == 32
    assert [b["path"].rsplit(":", 1)[0] for b in run.bad_files] == [os.fspath(corpus["data.zip"])] * 3 + [
        os.fspath(corpus["plain.tar.gz"])] * 3


# ---------------------------------------------------------------------------------- bad members, strict
def test_strict_stops_at_the_first_bad_member_naming_it(corpus):
    with pytest.raises(StrictBadFile, match=r"bad file .*nested\.tar:c1\.tar:c1/g_truncated\.png: truncated"):
        run_folder([corpus["nested.tar"]], **{**OPTS, "strict": True})


def test_cli_reads_a_shard_pattern_without_a_shell(capsys, corpus):
    rc = main(["stats", corpus["pattern"], "--device", "cpu", "--workers", "0", "--batch-size", "4", "--histogram",
               "--covariance", "--per-image", "--format", "json", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["state"] == json.loads(json.dumps(corpus["reference"].stats.state.to_dict()))
    assert doc["files"] == 16 and doc["images"] == 13 and len(doc["bad_files"]) == 3


def test_missing_shard_and_unknown_column_are_one_line_errors(capsys, corpus):
    assert main(["stats", str(corpus["base"] / "shard-{000000..000009}.tar"), "-q"]) == 1
    assert "6 of the 10 paths of the pattern" in capsys.readouterr().err
    assert main(["stats", str(corpus["data.parquet"]), "--column", "pixels", "-q"]) == 1
    err = capsys.readouterr().err
    assert "no column 'pixels'" in err and "image (struct" in err and err.count("\n") == 1
    assert main(["stats", str(corpus["data.parquet"]), "--column", "label", "-q"]) == 1
    assert "column 'label' is int64, not encoded images" in capsys.readouterr().err
    assert main(["stats", str(corpus["folder"]), "--column", "image", "-q"]) == 1
    assert "no .parquet file was given" in capsys.readouterr().err


def test_parquet_column_found_named_or_ambiguous(tmp_path, corpus):
    import pyarrow as pa
    import pyarrow.parquet as pq

    datas = [d for _, d in corpus["files"]]
    path = tmp_path / "two.parquet"
    pq.write_table(pa.table({"a": pa.array(datas, pa.binary()), "b": pa.array(datas, pa.large_binary())}), path)
    with pytest.raises(SourceError, match=r"several columns may hold images \(a, b\); pass --column NAME"):
        run_folder([path], **OPTS)
    run = run_folder([path], column="b", **OPTS)
    assert run.stats.state.to_dict() == corpus["reference"].stats.state.to_dict()


def test_parquet_rows_without_bytes_are_bad_with_the_reason(tmp_path, corpus):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = corpus["files"][0][1]
    image = pa.array([{"bytes": good, "path": "a.png"}, {"bytes": None, "path": "remote/b.jpg"}, None],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    path = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"image": image}), path)
    run = run_folder([path], **OPTS)
    assert run.images == 1
    assert [b["reason"] for b in run.bad_files] == [
        "no image bytes in the row (only the path 'remote/b.jpg', which is not read)",
        "no image bytes in the row (null)"]


def test_without_pyarrow_parquet_says_how_to_install(monkeypatch, corpus):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SourceError, match=r"pip install 'gpustats\[parquet\]'"):
        run_folder([corpus["data.parquet"]], **OPTS)


# ---------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["nested.tar", "plain.tar.gz", "data.parquet"])
def test_interrupted_archive_run_resumes_bitwise_identical(monkeypatch, tmp_path, corpus, kind):
    """Ctrl-C in the third task saves the checkpoint; the rerun resumes at the member position and gives
    the uninterrupted state, bit for bit (per-image aggregates included), and the same bad members."""
    from gpustats.checkpoint import read_checkpoint
    from gpustats.sources import reduce_tasks, streamed

    full = run_folder([corpus[kind]], **OPTS)
    ck = tmp_path / "run.ckpt"
    target = (streamed, "reduce_records") if kind == "plain.tar.gz" else (reduce_tasks.ReducedBatches, "__getitem__")
    real, calls = getattr(*target), {"n": 0}

    def third_interrupts(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(*target, third_interrupts)
    with pytest.raises(KeyboardInterrupt):
        run_folder([corpus[kind]], checkpoint=str(ck), checkpoint_every=3600, **OPTS)
    saved = read_checkpoint(ck)
    assert not saved.complete and saved.next_index == 8 and len(saved.bad_files) == 2
    monkeypatch.setattr(*target, real)
    resumed = run_folder([corpus[kind]], checkpoint=str(ck), **OPTS)
    assert resumed.resumed_from == 8
    assert resumed.stats.state.to_dict() == full.stats.state.to_dict()
    assert resumed.bad_files == full.bad_files and resumed.images == full.images == 13
    assert resumed.files_total == 16 and read_checkpoint(ck).complete
    again = run_folder([corpus[kind]], checkpoint=str(ck), **OPTS)  # a finished run just reports
    assert again.stats.state.to_dict() == full.stats.state.to_dict() and again.files_total == 16


def test_checkpoint_of_another_archive_is_refused(tmp_path, corpus):
    from gpustats.checkpoint import CheckpointError

    ck = tmp_path / "run.ckpt"
    run_folder([corpus["plain.tar"]], checkpoint=str(ck), **OPTS)
    with pytest.raises(CheckpointError, match="another file list|other options"):
        run_folder([corpus["data.zip"]], checkpoint=str(ck), **OPTS)


# ---------------------------------------------------------------------------------- ranks
def test_ranks_share_units_and_orders_rebuild_the_listing_order(corpus):
    from gpustats.sources.plan import Plan
    from gpustats.sources.units import list_units

    units = list_units([corpus["pattern"], corpus["nested.tar"], corpus["data.parquet"]])
    assert len(units) == 4 + 2 + 4  # shards, class tars, row groups
    plans = [Plan(units, rank, 3) for rank in range(3)]
    assert [len(p.units) for p in plans] == [4, 3, 3]
    assert sum(p.total for p in plans) == 48 and plans[0].all_known == 48
    orders = sorted(seg.order(pos) for p in plans for seg in p.segments for pos in range(len(seg)))
    assert orders[:2] == [[0, 0], [0, 1]] and len(orders) == len({tuple(o) for o in orders}) == 48


def test_two_ranks_with_decode_workers_match_one_process(capsys, tmp_path, corpus):
    """Two ranks (gloo), each with 2 decode workers: DataLoader workers reading members by byte range and
    Parquet row groups, and the pool a compressed tar (inside mixed.tar) feeds. The merged result equals
    one process decoding everything itself, bit for bit. Rank processes are fresh, so their workers fork."""
    from test_distributed import _env, run_ranks

    args = ["stats", corpus["pattern"], str(corpus["mixed.tar"]), str(corpus["data.parquet"]), "--format", "json",
            "--device", "cpu", "--histogram", "--covariance", "--batch-size", "4", "-q"]
    assert main([*args, "--workers", "0"]) == 0
    one = json.loads(capsys.readouterr().out)
    env = _env({"WORLD_SIZE": "2"})
    outs = run_ranks([*args, "--workers", "2"], env, tmp_path)
    assert [rc for rc, _, _ in outs] == [0, 0], outs
    two = json.loads(outs[0][1])  # only rank 0 prints
    assert two["workers"] == 2 and two["state"] == one["state"] and two["stats"] == one["stats"]
    for key in ("images", "pixels", "files", "bytes", "bad_files"):
        assert two[key] == one[key], key
    assert one["images"] == 39 and one["files"] == 48 and len(one["bad_files"]) == 9


# ---------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kind", ["nested.tar", "data.zip", "data.parquet"])
def test_sampling_visits_members_at_random_and_exhausting_them_is_exact(corpus, kind):
    from gpustats.sampling import estimate_stats

    est = estimate_stats(corpus[kind], tolerance=0.0, seed=3, batch_size=5)
    ref = corpus["reference"].stats
    assert est.stopped_because == "exhausted" and est.images_used == 13 and not est.is_estimate
    np.testing.assert_allclose(est.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(est.std, ref.std, rtol=1e-9)
    assert sorted(b[1] for b in est.bad_files) == sorted(b["reason"] for b in corpus["reference"].bad_files)


def test_sampling_a_compressed_tar_is_refused_with_what_to_do(capsys, corpus):
    rc = main(["stats", str(corpus["plain.tar.gz"]), "--sample-tolerance", "0.01", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "sampling needs random access" in err and "decompress it to a .tar" in err


# ---------------------------------------------------------------------------------- GPU bytes path
def test_byte_batches_feed_the_gpu_decoder_the_same_items(corpus):
    """The nvJPEG path reads members in this process; a fake decoder (CPU) stands in for nvJPEG."""
    import torch

    from gpustats.sources.gpu import decode_sources_gpu
    from gpustats.sources.plan import Plan
    from gpustats.sources.units import list_units

    def fake(datas, mode, device):
        return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(bytes(d.numpy()))).convert(mode))).permute(2, 0, 1)
                for d in datas]

    for source in (corpus["mixed.tar"], corpus["data.parquet"]):
        plan = Plan(list_units([source]))
        good, bad = 0, []
        for first, stop, items in plan.byte_batches(0, 5):
            decoded = decode_sources_gpu([i[3] for i in items], indices=[i[0] for i in items], device="cpu",
                                         decoder=fake)
            good += sum(r.tensor is not None for r in decoded)
            bad += [r.bad_reason for r in decoded if r.tensor is None]
        assert good == 13 and bad == [b["reason"] for b in corpus["reference"].bad_files]


def test_a_folder_of_archives_says_to_name_them(capsys, tmp_path, corpus):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").write_bytes((corpus["base"] / "shard-000000.tar").read_bytes())
    assert main(["stats", str(shards), "-q"]) == 1
    err = capsys.readouterr().err
    assert "archives inside a folder are not opened: name them" in err and "shard-000000.tar" in err


def test_compute_stats_takes_archives_patterns_and_column(corpus):
    from gpustats import compute_stats

    opts = {k: v for k, v in OPTS.items() if k != "device"}
    ref = corpus["reference"].stats
    for source in (corpus["pattern"], corpus["nested.tar"], [corpus["data.parquet"]]):
        got = compute_stats(source, device="cpu", column="image" if isinstance(source, list) else None, **opts)
        assert got.state.to_dict() == ref.state.to_dict() and got.images == 13 and len(got.bad_files) == 3


def test_without_pread_members_are_read_by_seek_and_read(monkeypatch, corpus):
    """Windows has no os.pread: the same bytes come from a seek and a read."""
    from gpustats.sources import units

    monkeypatch.delattr(os, "pread")
    monkeypatch.setattr(units, "_fds", {})
    for kind in ("nested.tar", "data.zip"):
        assert run_folder([corpus[kind]], **OPTS).stats.state.to_dict() == corpus["reference"].stats.state.to_dict()
