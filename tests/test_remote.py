"""Datasets where they live: the same images read from an S3-compatible server (moto's S3, with IAM
checked) and an HTTP server with byte ranges (tests/_servers.py), both started here on loopback ports,
give the exact state of a local folder of them; dropped connections are retried and resumed at the
right offset, nothing counted twice; a run that cannot go on leaves a checkpoint that resumes;
missing objects and denied buckets are one line; credentials never appear in what gpustats writes.

Nothing of the client is mocked: s3fs/aiobotocore and fsspec's HTTP client talk to real servers, and
the faults are connections the servers really drop mid-response (tests/_servers.py ``Faults``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
import tarfile
import zipfile

import pytest

_MISSING = [name for name in ("moto", "s3fs", "aiohttp") if importlib.util.find_spec(name) is None]
if _MISSING:  # looked up, not imported: the servers and clients load with the first test that needs them
    pytest.skip(f"needs {', '.join(_MISSING)} (pip install -e '.[test]')", allow_module_level=True)

from _servers import HttpServer, S3Server  # noqa: E402
from _tfrecords import shard  # noqa: E402
from gpustats.cli import main  # noqa: E402
from gpustats.sources import SourceError, SourceNotFoundError  # noqa: E402
from gpustats.sources.engine import run_folder  # noqa: E402
from test_archives import OPTS, _corpus, _tar_bytes, _with_sidecars  # noqa: E402

BUCKET = "train-bkt"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The corpus as a folder, 4 tar shards, a zip, a Parquet file, a .tar.gz and TFRecord shards, in a local
    folder (the HTTP server's root) and in an S3 bucket; the S3 server checks IAM credentials from then on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpustats.sources import remote, storelist

    base = tmp_path_factory.mktemp("stores")
    files = _corpus()
    for name, data in files:
        (base / "folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (base / "folder" / name).write_bytes(data)
    (base / "folder" / ".hidden.png").write_bytes(b"hidden")
    for k in range(4):
        (base / f"shard-{k:06d}.tar").write_bytes(_tar_bytes(_with_sidecars(files[4 * k:4 * k + 4])))
        (base / f"train-{k:05d}-of-00004").write_bytes(shard(files[4 * k:4 * k + 4]))
    (base / "plain.tar.gz").write_bytes(_tar_bytes(_with_sidecars(files), "w:gz"))
    (base / "gz.tfrecord.gz").write_bytes(gzip.compress(shard(files)))
    with zipfile.ZipFile(base / "data.zip", "w") as z:
        for k, (name, data) in enumerate(_with_sidecars(files)):
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if k % 2 else zipfile.ZIP_STORED)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    image = pa.array([{"bytes": d, "path": n} for n, d in files], struct)
    pq.write_table(pa.table({"image": image}), base / "data.parquet", row_group_size=4)
    (base / "shards-only").mkdir()
    (base / "shards-only" / "shard-000000.tar").write_bytes((base / "shard-000000.tar").read_bytes())
    reference = run_folder([base / "folder"], **OPTS)
    with S3Server() as s3, HttpServer(base) as http, pytest.MonkeyPatch.context() as mp:
        client = s3.client()
        for bucket in (BUCKET, "closed-bkt"):
            client.create_bucket(Bucket=bucket)
        for path in sorted(base.rglob("*")):
            if path.is_file():
                client.put_object(Bucket=BUCKET, Key=path.relative_to(base).as_posix(), Body=path.read_bytes())
        client.put_object(Bucket="closed-bkt", Key="shard-000000.tar", Body=(base / "shard-000000.tar").read_bytes())
        env = s3.enforce_iam("reader", [BUCKET])  # from now on: only the reader's keys, only its bucket
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("GPUSTATS_REMOTE_BACKOFF", "0.01")  # the waits of the retries, kept short here
        mp.setattr(remote, "_filesystems", {})  # this module's servers, not another's
        mp.setattr(storelist, "_files", {})
        yield {"base": base, "files": files, "reference": reference, "s3": s3, "http": http, "env": env}


@pytest.fixture
def faults(stores):
    for server in (stores["s3"], stores["http"]):
        server.faults.clear()
    yield
    for server in (stores["s3"], stores["http"]):
        server.faults.clear()


def _source(stores, store: str, what: str) -> str:
    root = f"s3://{BUCKET}" if store == "s3" else stores["http"].url
    return f"{root}/{what}"


KINDS = [("s3", "folder/"), ("s3", "shard-{000000..000003}.tar"), ("s3", "data.zip"), ("s3", "data.parquet"),
         ("s3", "plain.tar.gz"), ("s3", "train-{00000..00003}-of-00004"), ("http", "shard-{000000..000003}.tar"),
         ("http", "data.zip"), ("http", "data.parquet"), ("http", "gz.tfrecord.gz")]


# ---------------------------------------------------------------------------------- exact state
@pytest.mark.parametrize("store,what", KINDS)
def test_remote_sources_give_the_folders_exact_state(stores, faults, store, what):
    ref = stores["reference"]
    source = _source(stores, store, what)
    run = run_folder([source], **OPTS)
    assert run.stats.state.to_dict() == ref.stats.state.to_dict()  # bit for bit, per-image aggregates too
    assert (run.images, run.files_total) == (13, 16)
    reasons = [b["reason"] for b in run.bad_files]
    if what.endswith(".parquet"):  # a bad row's reason also names its Hugging Face path (issue 26)
        expected = [f"{b['reason']} (the row's path: {b['path'][len(str(stores['base'] / 'folder')) + 1:]!r})"
                    for b in ref.bad_files]
        assert reasons == expected
    else:
        assert reasons == [b["reason"] for b in ref.bad_files]
    root = source.split("{")[0].rsplit("/", 1)[0] if "{" in source else source.rstrip("/")
    assert all(b["path"].startswith(root) for b in run.bad_files)
    if what == "folder/":  # a prefix walked like a folder: the same names under it
        assert [b["path"][len(source):] for b in run.bad_files] == [
            b["path"][len(str(stores["base"] / "folder")) + 1:] for b in ref.bad_files]


def test_compute_stats_and_workers_read_remote_paths(stores, faults):
    """compute_stats(URL) runs the same engine; with 2 decode workers (forked DataLoader workers reading zip
    members and Parquet row groups by range, each with its own client; a pool fed with a remote tar's stream)
    the state is the one of a process reading everything itself."""
    from gpustats import compute_stats

    sources = [_source(stores, "s3", "data.zip"), _source(stores, "http", "data.parquet"),
               _source(stores, "s3", "shard-{000000..000003}.tar"), _source(stores, "s3", "folder/")]
    one = run_folder(sources, **OPTS)
    two = compute_stats(sources, device="cpu", **{**{k: v for k, v in OPTS.items() if k != "device"}, "workers": 2})
    assert two.state.to_dict() == one.stats.state.to_dict() and two.images == 52 and len(two.bad_files) == 12


# ---------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("store", ["s3", "http"])
def test_a_dropped_stream_is_resumed_at_the_right_offset_and_nothing_counts_twice(monkeypatch, stores, faults,
                                                                                  store):
    """A shard read in ranges of 4 KiB: the range at byte 8192 of shard 2 is dropped after 1000 bytes, twice.
    It is asked for again from byte 8192 (not from the start of the object) until it comes whole, and the
    state is the folder's, bit for bit."""
    monkeypatch.setenv("GPUSTATS_REMOTE_CHUNK", "4096")
    server = stores[store]
    server.faults.drop("shard-000002.tar", after=1000, times=2, start=8192)
    run = run_folder([_source(stores, store, "shard-{000000..000003}.tar")], **OPTS)
    assert run.stats.state.to_dict() == stores["reference"].stats.state.to_dict() and run.images == 13
    assert [(d[1], d[2]) for d in server.faults.dropped] == [("bytes=8192-12287", 1000)] * 2
    ranges = server.faults.gets("shard-000002.tar")
    size = (stores["base"] / "shard-000002.tar").stat().st_size
    assert ranges.count("bytes=8192-12287") == 3  # dropped twice, whole the third time
    # Every range up to the last member's data; the ranges wholly in the end-of-archive zeros may or may not
    # be asked for: the reader stops at the end marker and cancels what is still queued (a race, not a fault).
    with tarfile.open(stores["base"] / "shard-000002.tar") as tar:
        data_end = max(m.offset_data + m.size for m in tar.getmembers())
    chunks = [f"bytes={s}-{min(s + 4096, size) - 1}" for s in range(0, size, 4096)]
    needed = [c for s, c in zip(range(0, size, 4096), chunks) if s < data_end]
    assert set(needed) <= set(ranges) <= set(chunks) and len(needed) >= 3
    assert len(ranges) == len(set(ranges)) + 2  # every other range once: the object was never restarted


@pytest.mark.parametrize("what", ["data.zip", "folder/"])
def test_a_dropped_member_or_file_is_asked_for_again(stores, faults, what):
    """Random access (zip members, image files under a prefix): the dropped request is repeated, same range."""
    server = stores["s3"]
    if what == "data.zip":  # the request of the member c2/a.png (its local header and data)
        target, start = "data.zip", zipfile.ZipFile(stores["base"] / "data.zip").getinfo("c2/a.png").header_offset
    else:
        target, start = "c2/f.png", None
    server.faults.drop(target, after=10, times=1, start=start)
    run = run_folder([_source(stores, "s3", what)], **OPTS)
    assert run.stats.state.to_dict() == stores["reference"].stats.state.to_dict() and run.images == 13
    (dropped,) = server.faults.dropped
    assert server.faults.gets(target).count(dropped[1]) == 2


def test_a_run_that_cannot_go_on_leaves_a_checkpoint_that_resumes(monkeypatch, tmp_path, capsys, stores, faults):
    """Retries run out in shard 2 (2 tries, both dropped): one line naming the shard and the tries, the
    checkpoint saved after shards 0 and 1; the rerun resumes, does not read shards 0 and 1 again, and gives
    the uninterrupted result bit for bit."""
    from gpustats.checkpoint import read_checkpoint

    monkeypatch.setenv("GPUSTATS_REMOTE_ATTEMPTS", "2")
    server = stores["http"]
    source = _source(stores, "http", "shard-{000000..000003}.tar")
    ck = tmp_path / "run.ckpt"
    args = ["stats", source, "--device", "cpu", "--workers", "0", "--batch-size", "4", "--histogram", "--covariance",
            "--per-image", "--format", "json", "--checkpoint", str(ck), "--checkpoint-every", "3600", "-q"]
    server.faults.drop("shard-000002.tar", after=100, times=2)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard-000002.tar: reading bytes 0-" in err and "failed 2 times" in err
    assert f"progress saved in {ck} (rerun the same command to resume)" in err
    saved = read_checkpoint(ck)
    assert saved.next_index == 8 and not saved.complete and saved.streams == {"0": 4, "1": 4}
    server.faults.clear()
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == json.loads(json.dumps(stores["reference"].stats.state.to_dict()))
    assert doc["images"] == 13 and doc["files"] == 16 and len(doc["bad_files"]) == 3
    assert server.faults.gets("shard-000000.tar") == [] and server.faults.gets("shard-000001.tar") == []
    assert len(server.faults.gets("shard-000002.tar")) == 1  # read again from its start (members before 8 skipped)


def test_missing_objects_and_denied_buckets_are_one_line_errors(capsys, stores, faults):
    http = stores["http"].url
    cases = [
        (f"s3://{BUCKET}/missing.tar", f"path does not exist: 's3://{BUCKET}/missing.tar'"),
        (f"s3://{BUCKET}/shard-{{000000..000005}}.tar",
         f"2 of the 6 objects of the pattern 's3://{BUCKET}/shard-{{000000..000005}}.tar' do not exist (first: "
         f"'s3://{BUCKET}/shard-000004.tar')"),
        ("s3://no-such-bkt/x.tar", "s3://no-such-bkt/x.tar: access denied (PermissionError: "),  # as S3 answers
        ("s3://closed-bkt/shard-000000.tar", "s3://closed-bkt/shard-000000.tar: access denied (PermissionError: "),
        (f"{http}/denied/x.tar", f"{http}/denied/x.tar: access denied (ClientResponseError: 403"),
        (f"{http}/missing.zip", f"path does not exist: '{http}/missing.zip'"),
        (f"s3://{BUCKET}/shards-only/", "archives under a prefix are not opened: name them, e.g. "
                                        f"s3://{BUCKET}/shards-only/'shard-000000.tar'"),
    ]
    for source, expected in cases:
        assert main(["stats", source, "--device", "cpu", "-q"]) == 1, source
        err = capsys.readouterr().err
        assert err.startswith("gpustats: error: ") and err.count("\n") == 1 and expected in err, (source, err)
    with pytest.raises(SourceNotFoundError):
        run_folder([f"s3://{BUCKET}/missing.zip"], **OPTS)


def test_credentials_never_appear_in_output_reports_or_checkpoints(capsys, tmp_path, stores, faults):
    """The reader's keys (in the environment, as S3 clients find them) and a URL's user:password and query
    token (needed: /private/ asks for HTTP basic auth) are used to read, and written nowhere."""
    env = stores["env"]
    secrets = [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], "secret", "tok3n-value"]
    http = stores["http"].url.replace("http://", "http://user:secret@")
    (stores["base"] / "private").mkdir(exist_ok=True)
    (stores["base"] / "private" / "data.zip").write_bytes((stores["base"] / "data.zip").read_bytes())
    private = f"{http}/private/data.zip?token=tok3n-value"
    ck = tmp_path / "run.ckpt"
    out_json = tmp_path / "out.json"
    assert main(["stats", f"s3://{BUCKET}/data.zip", private, "--device", "cpu", "--workers", "0", "--format",
                 "json", "--checkpoint", str(ck), "-o", str(out_json)]) == 0
    report = out_json.read_text()
    doc = json.loads(report)
    assert doc["images"] == 26 and "user:secret" not in report
    assert f"{stores['http'].url.replace('http://', 'http://***@')}/private/data.zip?token=***:c1/g_truncated.png" in [
        b["path"] for b in doc["bad_files"]]
    assert main(["stats", "s3://closed-bkt/shard-000000.tar", f"{http}/denied/x.tar?token=tok3n-value", "-q"]) == 1
    written = capsys.readouterr()
    for text in (report, ck.read_text(), written.out, written.err):
        for secret in secrets:
            assert secret not in text


# ---------------------------------------------------------------------------------- ranks and sampling
def test_ranks_share_remote_objects_and_shards(stores, faults):
    """torchrun's sharing, in process: each rank gets every other shard/zip/row group, nothing twice."""
    from gpustats.sources.plan import Plan
    from gpustats.sources.units import list_units

    units = list_units([_source(stores, "s3", "shard-{000000..000003}.tar"), _source(stores, "http", "data.zip"),
                        _source(stores, "s3", "data.parquet")])
    assert len(units) == 4 + 1 + 4
    ranks = [Plan(units, rank, 2) for rank in range(2)]
    assert [len(p.units) for p in ranks] == [5, 4] and ranks[0].units[0] is units[0] and ranks[1].units[0] is units[1]


def test_two_torchrun_ranks_match_one_process(tmp_path, capsys, stores, faults):
    """Two ranks (gloo), each with its own clients, reading from both servers: the merged result equals one
    process reading everything, bit for bit (decode workers on remote sources: the test above)."""
    from test_distributed import _env, run_ranks

    args = ["stats", _source(stores, "s3", "shard-{000000..000003}.tar"), _source(stores, "http", "data.zip"),
            _source(stores, "s3", "data.parquet"), "--format", "json", "--device", "cpu", "--histogram",
            "--batch-size", "4", "-q"]
    assert main([*args, "--workers", "0"]) == 0
    one = json.loads(capsys.readouterr().out)
    env = _env({"WORLD_SIZE": "2", **stores["env"], "GPUSTATS_REMOTE_BACKOFF": "0.01"})
    outs = run_ranks([*args, "--workers", "0"], env, tmp_path)
    assert [rc for rc, _, _ in outs] == [0, 0], outs
    two = json.loads(outs[0][1])
    assert two["state"] == one["state"] and two["bad_files"] == one["bad_files"] and one["images"] == 39


@pytest.mark.parametrize("what", ["data.zip", "folder/", "data.parquet"])
def test_sampling_reads_remote_items_at_random(stores, faults, what):
    import numpy as np

    from gpustats.sampling import estimate_stats

    est = estimate_stats(_source(stores, "s3", what), tolerance=0.0, seed=3, batch_size=5)
    ref = stores["reference"].stats
    assert est.stopped_because == "exhausted" and est.images_used == 13
    np.testing.assert_allclose(est.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(est.std, ref.std, rtol=1e-9)


def test_sampling_a_remote_tar_says_what_to_do(capsys, stores, faults):
    rc = main(["stats", _source(stores, "s3", "shard-000000.tar"), "--sample-tolerance", "0.01", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "sampling needs random access" in err and "copy it to a local disk" in err


def test_without_the_store_package_the_error_says_what_to_install(monkeypatch, stores):
    import importlib

    from gpustats.sources import remote

    monkeypatch.setattr(remote, "_filesystems", {})
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec's imported classes: as if no s3fs
    monkeypatch.delitem(registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(SourceError, match=r"cannot read s3:// paths .*pip install 'gpustats\[s3\]'"):
        run_folder([f"s3://{BUCKET}/data.zip"], **OPTS)


def test_byte_batches_feed_the_gpu_decoder_remote_items(stores, faults):
    """The nvJPEG path reads items in this process: remote members, streams and files come as their bytes."""
    import io

    from PIL import Image

    from gpustats.sources.errors import BadImage
    from gpustats.sources.plan import Plan
    from gpustats.sources.units import list_units

    for what in ("shard-{000000..000003}.tar", "data.zip", "folder/"):
        good, bad = 0, []
        for first, stop, items in Plan(list_units([_source(stores, "s3", what)])).byte_batches(0, 5):
            for _, name, _, source in items:
                assert isinstance(source, (bytes, BadImage)), (name, type(source))
                try:
                    Image.open(io.BytesIO(source)).convert("RGB") if isinstance(source, bytes) else None
                    good += isinstance(source, bytes)
                except Exception:
                    bad.append(name)
        assert (good, len(bad)) == (13, 3), what


def test_sampling_stops_with_one_line_when_retries_run_out(monkeypatch, capsys, stores, faults):
    monkeypatch.setenv("GPUSTATS_REMOTE_ATTEMPTS", "2")
    stores["s3"].faults.drop("folder/c1/a.png", after=5, times=1000)  # every read of this image dropped
    rc = main(["stats", _source(stores, "s3", "folder/"), "--sample-tolerance", "0.01", "--device", "cpu",
               "--workers", "0", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert f"s3://{BUCKET}/folder/c1/a.png: reading bytes 0-" in err and "failed 2 times" in err


@pytest.mark.parametrize("pulled", [True, False])
def test_workers_read_whole_shards_and_a_checkpoint_between_them_resumes(monkeypatch, tmp_path, stores, faults,
                                                                         pulled):
    """4 shards and 2 workers: each worker reads and reduces whole shards (Plan.shard_results, spied on here);
    the state is the one-process state bit for bit. Interrupted while the third result is asked for, the
    rerun (same workers) takes shards 0-1 from the checkpoint without reading them and gives the same state."""
    from gpustats.checkpoint import read_checkpoint
    from gpustats.sources.plan import Plan

    source = _source(stores, "s3", "shard-{000000..000003}.tar")
    one = run_folder([source], **OPTS)
    real, calls = Plan.shard_results, []

    def spy(self, run, *args, **kwargs):
        calls.append(list(run))
        results = real(self, run, *args, **kwargs)
        for n in range(len(run) + 1):
            if n == 2 and interrupt and not pulled:  # before shard 1 is marked done: it is read again, skipped
                raise KeyboardInterrupt
            result = next(results, None)
            if n == 2 and interrupt:  # after: shard 1 is counted by the checkpoint
                raise KeyboardInterrupt
            if result is None:
                return
            yield result

    monkeypatch.setattr(Plan, "shard_results", spy)
    interrupt = False
    two = run_folder([source], **{**OPTS, "workers": 2})
    assert calls == [[0, 1, 2, 3]] and two.stats.state.to_dict() == one.stats.state.to_dict()
    assert two.bad_files == one.bad_files and two.images == 13 and two.files_total == 16
    ck = tmp_path / "run.ckpt"
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        run_folder([source], **{**OPTS, "workers": 2, "checkpoint": str(ck), "checkpoint_every": 0})
    saved = read_checkpoint(ck)
    assert saved.next_index == 8 and saved.streams == ({"0": 4, "1": 4} if pulled else {"0": 4})
    interrupt = False
    stores["s3"].faults.clear()
    resumed = run_folder([source], **{**OPTS, "workers": 2, "checkpoint": str(ck)})
    assert resumed.resumed_from == 8 and resumed.stats.state.to_dict() == one.stats.state.to_dict()
    assert resumed.bad_files == one.bad_files and resumed.files_total == 16
    gets = stores["s3"].faults.gets
    assert gets("shard-000000.tar") == [] and len(gets("shard-000001.tar")) == (0 if pulled else 1)
    assert len(gets("shard-000002.tar")) == 1
