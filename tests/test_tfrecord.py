"""TFRecord shards (tf.train.Example records with the encoded image) read without TensorFlow give the
exact state of the same images in a folder; both checksums of every record are checked, and a corrupt
record is named with its shard and byte offset.

The shards are written by tests/_tfrecords.py with Google's protobuf and a bitwise CRC-32C (neither
shares code with the reader); the reference is the folder run of the same images (tests/test_archives.py's
corpus: 13 images of every colour mode, 3 bad files).
"""

from __future__ import annotations

import gzip
import os
import struct
import sys

import pytest

from _tfrecords import example, frame, shard
from gpustats.cli import main
from gpustats.sources import SourceError
from gpustats.sources.engine import run_folder
from test_archives import OPTS, _corpus

pytest.importorskip("google.protobuf")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("tfrecord")
    files = _corpus()
    folder = base / "folder"
    for name, data in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    out = {"base": base, "files": files, "reference": run_folder([folder], **OPTS)}
    for k in range(4):  # the ImageNet tooling's names: train-00000-of-00004 ...
        (base / f"train-{k:05d}-of-00004").write_bytes(shard(files[4 * k:4 * k + 4]))
    out["pattern"] = str(base / "train-{00000..00003}-of-00004")
    out["one.tfrecord"] = base / "one.tfrecord"
    out["one.tfrecord"].write_bytes(shard(files))
    out["tfds.tfrecord-00000-of-00001"] = base / "tfds.tfrecord-00000-of-00001"  # TFDS: the feature "image"
    out["tfds.tfrecord-00000-of-00001"].write_bytes(shard(files, key="image"))
    out["gz.tfrecord.gz"] = base / "gz.tfrecord.gz"  # TFRecordOptions(compression_type="GZIP"): read as a stream
    out["gz.tfrecord.gz"].write_bytes(gzip.compress(shard(files)))
    return out


def _offsets(data: bytes) -> list[int]:
    """Byte offsets of the records of a shard (read here from the framing, independently)."""
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack("<Q", data[pos:pos + 8])[0]
    return offsets


@pytest.mark.parametrize("kind", ["pattern", "one.tfrecord", "tfds.tfrecord-00000-of-00001", "gz.tfrecord.gz"])
def test_shards_give_the_folders_exact_state(shards, kind):
    ref = shards["reference"]
    run = run_folder([shards[kind]], **OPTS)
    assert run.stats.state.to_dict() == ref.stats.state.to_dict()  # bit for bit, per-image aggregates too
    assert (run.images, run.files_total) == (13, 16)
    assert [b["reason"] for b in run.bad_files] == [b["reason"] for b in ref.bad_files]
    if kind == "pattern":
        base = shards["base"]
        assert [b["path"] for b in run.bad_files] == [f"{base}/train-00001-of-00004:2", f"{base}/train-00001-of-00004:3",
                                                      f"{base}/train-00003-of-00004:0"]
    else:
        assert [b["path"] for b in run.bad_files] == [f"{shards[kind]}:{n}" for n in (6, 7, 12)]


def test_a_record_whose_data_checksum_fails_is_named_with_its_shard_and_offset(tmp_path, shards):
    data = bytearray(shard(shards["files"]))
    offsets = _offsets(bytes(data))
    data[offsets[1] + 40] ^= 0xFF  # inside record 1's data (c1/b.jpg)
    path = tmp_path / "flipped.tfrecord"
    path.write_bytes(bytes(data))
    folder = tmp_path / "folder"
    for name, content in shards["files"]:
        if name != "c1/b.jpg":
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
    expected = run_folder([folder], **{**OPTS, "per_image": False})
    for workers in (0, 2):
        run = run_folder([path], **{**OPTS, "per_image": False, "workers": workers})
        assert run.stats.state.to_dict() == expected.stats.state.to_dict()  # the 12 other images, exactly
        assert run.bad_files[0] == {"path": f"{path}:1", "reason": f"corrupt TFRecord record at byte {offsets[1]} "
                                                                   "(the data's CRC-32C does not match)"}
        assert len(run.bad_files) == 4 and run.images == 12


@pytest.mark.parametrize("name", ["cut.tfrecord", "cut.tfrecord.gz"])
def test_a_broken_length_ends_the_shard_named_with_its_offset(tmp_path, shards, name):
    data = bytearray(shard(shards["files"]))
    offsets = _offsets(bytes(data))
    data[offsets[3]] ^= 0x01  # record 3's length: its checksum fails, the boundaries after it are lost
    path = tmp_path / name
    path.write_bytes(gzip.compress(bytes(data)) if name.endswith(".gz") else bytes(data))
    run = run_folder([path], **OPTS)
    assert run.images == 3 and run.files_total == 4  # records 0-2, then the problem
    assert run.bad_files == [{"path": str(path), "reason": f"corrupt TFRecord at byte {offsets[3]} (the record "
                                                           "length's CRC-32C does not match); the rest of this shard "
                                                           "is not read"}]
    cut = tmp_path / "short.tfrecord"
    cut.write_bytes(bytes(shard(shards["files"]))[:offsets[2] + 30])
    run = run_folder([cut], **OPTS)
    assert run.images == 2 and run.bad_files[0]["path"] == str(cut)
    assert run.bad_files[0]["reason"].startswith(f"truncated TFRecord: the record at byte {offsets[2]} needs")


def test_the_image_feature_is_found_or_named(tmp_path, shards):
    good = shards["files"][0][1]
    path = tmp_path / "keys.tfrecord"
    path.write_bytes(frame(example(jpeg=good, label=3)) + frame(example(image__encoded=[good, good]))
                     + frame(example(image__encoded=5)) + frame(b"\x0a\x05\x0a\x03"))
    with pytest.raises(SourceError, match=r"none of the 4 files could be decoded \(first: .*keys\.tfrecord:0: no "
                                          r"'image/encoded' or 'image' feature in the record \(its features: jpeg, "
                                          r"label\); pass --column NAME\)"):
        run_folder([path], **OPTS)
    run = run_folder([path], column="jpeg", **OPTS)
    assert run.images == 1
    assert [b["reason"] for b in run.bad_files] == [
        "no 'jpeg' feature in the record (its features: image/encoded); pass --column NAME",
        "no 'jpeg' feature in the record (its features: image/encoded); pass --column NAME",
        "not a tf.train.Example (a field runs past its message) (record at byte "
        f"{_offsets(path.read_bytes())[3]})"]
    run = run_folder([path, shards["one.tfrecord"]], **OPTS)
    reasons = [b["reason"] for b in run.bad_files[:3]]
    assert reasons[1:] == ["the feature 'image/encoded' holds 2 values (one encoded image expected)",
                           "the feature 'image/encoded' is a int64 list, not encoded image bytes"]


def test_checkpoint_resumes_a_shard_bitwise_and_workers_change_nothing(monkeypatch, tmp_path, shards):
    from gpustats.checkpoint import read_checkpoint
    from gpustats.sources import reduce_tasks

    full = shards["reference"]
    ck = tmp_path / "run.ckpt"
    real, calls = reduce_tasks.ReducedBatches.__getitem__, {"n": 0}

    def third_interrupts(self, b):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, b)

    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", third_interrupts)
    with pytest.raises(KeyboardInterrupt):
        run_folder([shards["pattern"]], checkpoint=str(ck), checkpoint_every=3600, **OPTS)
    assert read_checkpoint(ck).next_index == 8
    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", real)
    resumed = run_folder([shards["pattern"]], checkpoint=str(ck), **OPTS)
    assert resumed.resumed_from == 8 and resumed.stats.state.to_dict() == full.stats.state.to_dict()
    assert resumed.bad_files == run_folder([shards["pattern"]], **OPTS).bad_files
    two = run_folder([shards["pattern"], shards["gz.tfrecord.gz"]], **{**OPTS, "workers": 2})
    one = run_folder([shards["pattern"], shards["gz.tfrecord.gz"]], **OPTS)
    assert two.stats.state.to_dict() == one.stats.state.to_dict() and two.images == 26


def test_sampling_reads_records_at_random(shards):
    import numpy as np

    from gpustats.sampling import estimate_stats

    est = estimate_stats(shards["pattern"], tolerance=0.0, seed=5, batch_size=3)
    ref = shards["reference"].stats
    assert est.stopped_because == "exhausted" and est.images_used == 13
    np.testing.assert_allclose(est.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(est.std, ref.std, rtol=1e-9)


def test_cli_and_missing_crc32c_say_what_to_do(capsys, monkeypatch, shards):
    assert main(["stats", shards["pattern"], "--device", "cpu", "--workers", "0", "--format", "json", "-q"]) == 0
    assert '"images": 13' in capsys.readouterr().out
    from gpustats.sources import tfrecord

    monkeypatch.setitem(sys.modules, "google_crc32c", None)
    monkeypatch.setitem(sys.modules, "crc32c", None)
    tfrecord._crc32c.cache_clear()
    try:
        assert main(["stats", str(shards["one.tfrecord"]), "-q"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'gpustats[tfrecord]'" in err
    finally:
        tfrecord._crc32c.cache_clear()
    assert os.path.exists(shards["one.tfrecord"])
