"""Checkpoints from issue 17: doctored or hostile files, resolved paths, file modes.

Every refusal must be the checkpoint module's own one-line error naming the file (the CLI prints
it as ``gpustats: error: ...``, exit 1), never a traceback, never a silently wrong resume.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from gpustats import Accumulator
from gpustats.checkpoint import (Checkpoint, CheckpointError, NotACheckpointError, check_compatible,
                                 file_list_fingerprint, read_checkpoint, write_checkpoint)
from gpustats.cli import main
from gpustats.sources import list_images
from gpustats.sources.synthetic import make_tiny_folder


def _state(dtype: str):
    rng = np.random.default_rng(0)
    if dtype == "uint8":
        acc = Accumulator("cpu", histogram=True, covariance=True, per_image=True)
        acc.update(torch.from_numpy(rng.integers(0, 256, (2, 3, 8, 5), dtype=np.uint8)))
    else:
        acc = Accumulator("cpu", histogram=True, hist_bins=8, hist_range=(0.0, 1.0), covariance=True, per_image=True)
        acc.update(torch.from_numpy(rng.random((2, 3, 8, 5), dtype=np.float32)))
    return acc.state()


@pytest.fixture(scope="module")
def good():
    """Valid checkpoint dicts (exact JSON form), one of 8-bit and one of float data."""
    out = {}
    for dtype in ("uint8", "float32"):
        options = {"mode": "RGB", "histogram": True, "covariance": True, "per_image": True}
        ck = Checkpoint(state=_state(dtype), next_index=4, files_total=9, fingerprint="f", options=options,
                        bad_files=[{"path": "x.png", "reason": "truncated"}], images=2, bytes=100, elapsed_s=1.5)
        out[dtype] = json.loads(json.dumps(ck.to_dict()))
        assert Checkpoint.from_dict(out[dtype]).state == ck.state  # the base itself is accepted, exactly
    return out


def _ck() -> Checkpoint:
    """A valid checkpoint: 2 files of 3 done, both good (the per-image state holds 2 images)."""
    return Checkpoint(state=_state("uint8"), next_index=2, files_total=3, fingerprint="f", options={}, images=2)


def _write(path: Path, d: dict) -> Path:
    path.write_text(json.dumps(d))
    return path


def _one_line_error(path: Path, exc_type=CheckpointError) -> str:
    with pytest.raises(exc_type) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and repr(str(path)) in message
    return message


def _set(d: dict, keys: tuple, value) -> dict:
    d = copy.deepcopy(d)
    target = d
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    return d


def _hex(x: float) -> str:
    return float(x).hex()


# ------------------------------------------------------------------- item 3: doctored, well-formed
DOCTORED = [  # (base, keys, new value, words the message must contain)
    ("uint8", ("state", "count"), [-80, -80, -80], "state.count[0] is -80"),
    ("uint8", ("state", "count"), [80.0, 80, 80], "state.count[0] is 80.0"),
    ("uint8", ("state", "count"), [40, 80, 80], "the count is 40"),
    ("uint8", ("complete",), "false", "complete is a str 'false'"),
    ("uint8", ("complete",), 1, "complete is 1"),
    ("uint8", ("next_index",), 1.7, "next_index is 1.7"),
    ("uint8", ("next_index",), "12", "next_index is a str '12'"),
    ("uint8", ("next_index",), 10, "next_index is 10, expected an integer in 0..9"),
    ("uint8", ("next_index",), -1, "next_index is -1"),
    ("uint8", ("files_total",), True, "files_total is True"),
    ("uint8", ("images",), 5, "images is 5, expected an integer in 0..4"),
    ("uint8", ("bytes",), -3, "bytes is -3"),
    ("uint8", ("elapsed_s",), -1.0, "elapsed_s is -1.0"),
    ("uint8", ("fingerprint",), 7, "fingerprint is 7"),
    ("uint8", ("options",), {"mode": {"nested": [1]}}, "options['mode']"),
    ("uint8", ("options", "histogram"), False, "options.histogram is False, the state has hist"),
    ("float32", ("options", "per_image"), False, "options.per_image is False, the state has images"),
    ("uint8", ("options",), ["mode"], "options is a list"),
    ("uint8", ("bad_files",), [{"path": 1, "reason": "x"}], "bad_files[0]"),
    ("uint8", ("bad_files",), {"path": "x"}, "bad_files is a dict"),
    ("uint8", ("state", "isum", 0), str(80 * 255 + 1), "do not fit min"),  # mean above max
    ("uint8", ("state", "isum", 0), "-100", "do not fit min"),
    ("uint8", ("state", "isum", 0), "1e3", "state.isum[0]"),
    ("uint8", ("state", "mean", 0), _hex(300.0), "mean/m2 disagree"),  # the mean itself above max
    ("uint8", ("state", "min", 0), _hex(255.0), "state channel 0: min"),  # min > max
    ("uint8", ("state", "max", 0), _hex(256.0), "not uint8 values"),
    ("uint8", ("state", "nonfinite"), [1, 0, 0], "nonfinite"),
    ("uint8", ("state", "scale"), _hex(0.0), "state.scale is 0.0"),
    ("uint8", ("state", "scale"), 255, "state.scale is 255"),
    ("uint8", ("state", "max"), [_hex(250.0)] * 2, "state.max has 2 entries, expected 3"),
    ("uint8", ("state", "hist", 0, 0), 1_000_000, "state.hist[0] holds"),
    ("uint8", ("state", "hist", 1), [0] * 255, "state.hist[1] has 255 entries"),
    ("uint8", ("state", "icross", 0, 1), "0", "state.icross[0][1]"),
    ("uint8", ("state", "images", "images"), 3, "per-image state holds 3 images"),
    # integer per-image aggregates are exact sums of the per-image values ("<hex>p<shift>", [3][C])
    ("uint8", ("state", "images", "sums", 0, 0), "ffp1074", "state.images of channel 0 do not fit"),
    ("uint8", ("state", "images", "sums", 0, 0), "12x", "state.images.sums[0][0]"),
    ("uint8", ("state", "images", "sumsqs", 2), ["0p0"], "state.images.sumsqs[2] has 1 entries"),
    ("uint8", ("state", "images", "counts", 0), 7, "state.images.counts[0]"),
    ("float32", ("state", "images", "m2", 0), _hex(-1.0), "state.images of channel 0 do not fit"),
    ("float32", ("state", "images", "mean", 0), _hex(254.0), "state.images of channel 0 do not fit"),
    ("uint8", ("state", "dtype"), None, "the state is empty but 2 images"),
    ("uint8", ("state", "dtype"), "int32", "state.dtype is a str 'int32'"),
    ("float32", ("state", "mean", 0), _hex(2.0), "do not fit min"),  # mean above max
    ("float32", ("state", "m2", 1), _hex(-1.0), "do not fit min"),
    ("float32", ("state", "m2", 1), _hex(1e6), "do not fit min"),  # more spread than [min, max] allows
    ("float32", ("state", "min", 2), _hex(2.0), "do not fit min"),  # min > max
    ("float32", ("state", "mean", 0), "nan", "no non-finite value was counted"),
    ("float32", ("state", "comoment", 2), [_hex(0.0)] * 3 + [_hex(1.0)], "state.comoment[2] has 4 entries"),
    ("float32", ("state", "isum"), ["1", "2", "3"], "state.isum is a list, expected none for float data"),
]


@pytest.mark.parametrize("base, keys, value, words", DOCTORED, ids=[f"{b}-{'.'.join(map(str, k))}-{v!r}"[:60]
                                                                   for b, k, v, _ in DOCTORED])
def test_doctored_checkpoint_is_refused_with_one_line(tmp_path, good, base, keys, value, words):
    message = _one_line_error(_write(tmp_path / "c.ckpt", _set(good[base], keys, value)))
    assert "is damaged" in message and words in message and message.endswith("delete it to start over")


def test_complete_needs_next_index_at_the_end(tmp_path, good):
    message = _one_line_error(_write(tmp_path / "c.ckpt", _set(good["uint8"], ("complete",), True)))
    assert "complete is true but next_index is 4 of 9" in message


# ------------------------------------------------------------------- item 4: hostile files
def _text_with(good: dict, key: str, literal: str) -> str:
    """The checkpoint's JSON text with ``key``'s value replaced by a raw JSON literal."""
    text = json.dumps(_set(good, (key,), "__HERE__"))
    return text.replace('"__HERE__"', literal)


@pytest.mark.parametrize("key, literal, words", [
    ("images", "Infinity", "the constant Infinity"),
    ("images", "NaN", "the constant NaN"),
    ("elapsed_s", "-Infinity", "the constant -Infinity"),
    ("images", "1e400", "'1e400', out of range"),
    ("bytes", "9" * 5000, "out of range"),  # Python's int() refuses 5,000 digits with a ValueError
    ("bytes", "9" * 4000, "out of range"),  # accepted by int(), overflows int64 later
    ("options", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("state", "[]", "state is a list"),
    ("state", '"x"', "state is a str 'x'"),
    ("state", "3", "state is 3"),
    ("state", "null", "state is None"),
    ("state", '{"format": "gpustats.ChannelStats/1", "dtype": "uint8", "count": {}}', "state.count is a dict"),
])
def test_hostile_checkpoint_values_are_one_line_errors(tmp_path, good, key, literal, words):
    path = tmp_path / "c.ckpt"
    path.write_text(_text_with(good["uint8"], key, literal))
    message = _one_line_error(path)
    assert words in message and "delete it to start over" in message


@pytest.mark.parametrize("content, words", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 400, "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n" + bytes(300), "a PNG image"),
    (bytes(range(256)) * 3, "binary data"),
    (b"", "an empty file"),
    (b'{"name": "weights", "layers": [1, 2]}', "no \"format\": 'gpustats.checkpoint/1' entry"),
    (b"[1, 2, 3]", "its JSON is a list"),
    (b"[" * 100_000 + b"]" * 100_000, "not a JSON object"),  # not even read past 64 KiB
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b"hello, world", "not a JSON object"),
    (b'{"format": "gpustats.checkpoint/2"}', "another gpustats version"),
])
def test_files_that_are_not_checkpoints_are_not_called_damaged(tmp_path, content, words):
    path = tmp_path / "c.ckpt"
    path.write_bytes(content)
    message = _one_line_error(path, NotACheckpointError)
    assert words in message and "pass another checkpoint path" in message and "delete" not in message
    assert path.read_bytes() == content


def test_a_folder_is_not_a_checkpoint(tmp_path):
    message = _one_line_error(tmp_path, NotACheckpointError)
    assert "not a regular file" in message
    with pytest.raises(CheckpointError, match="not a regular file"):
        write_checkpoint(tmp_path, Checkpoint(state=_state("uint8"), next_index=0, files_total=0, fingerprint="",
                                              options={}))


def test_damaged_checkpoint_with_bad_bytes_is_damaged_not_foreign(tmp_path, good):
    path = tmp_path / "c.ckpt"
    path.write_bytes(json.dumps(good["uint8"]).encode()[:-40] + b"\xff\xfe")
    assert "is damaged (not UTF-8 text)" in _one_line_error(path)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "data"
    make_tiny_folder(root, 12)
    return root


def test_cli_prints_one_error_line_for_a_jpeg_or_doctored_checkpoint(capsys, tmp_path, tiny_data, good):
    jpeg = tmp_path / "photo.jpg"
    content = b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256))
    jpeg.write_bytes(content)
    rc = main(["stats", str(tiny_data), "--device", "cpu", "--workers", "0", "--checkpoint", str(jpeg), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("gpustats: error: ") and err.count("\n") == 1
    assert "not a gpustats checkpoint (a JPEG image); pass another checkpoint path" in err
    assert jpeg.read_bytes() == content  # not overwritten
    doctored = _write(tmp_path / "c.ckpt", _set(good["uint8"], ("complete",), "false"))
    rc = main(["stats", str(tiny_data), "--device", "cpu", "--workers", "0", "--checkpoint", str(doctored)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "complete is a str 'false'" in err and "delete it" in err


# ------------------------------------------------------------------- item 7: hostile state JSON
HOSTILE_VALUES = [None, True, -1, 2**70, 1.5, "x", "-0x1p+0", "nan", "inf", "9" * 60, [], {}, [[]], [None] * 3]


def _leaves(node, keys=()):
    """Paths to the leaves of a JSON tree (first and last entry of each list only)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, keys + (k,))
    elif isinstance(node, list) and node:
        for i in sorted({0, len(node) - 1}):
            yield from _leaves(node[i], keys + (i,))
    yield keys


@pytest.mark.parametrize("base", ["uint8", "float32"])
def test_no_hostile_state_json_gives_a_traceback(good, base):
    """Every leaf and every list of the state, replaced by hostile values or deleted: a checkpoint
    that reads must hold a state that finalizes; anything else must be a CheckpointError."""
    tried = refused = 0
    paths = [p for p in _leaves(good[base]["state"]) if p]
    for keys in paths:
        variants = [_set(good[base], ("state",) + keys, v) for v in HOSTILE_VALUES]
        parent = copy.deepcopy(good[base])
        holder = parent["state"]
        for k in keys[:-1]:
            holder = holder[k]
        if isinstance(holder, dict):
            del holder[keys[-1]]
            variants.append(parent)
        for doc in variants:
            tried += 1
            try:
                ck = Checkpoint.from_dict(doc)
            except CheckpointError as exc:
                refused += 1
                assert "\n" not in str(exc)
                continue
            ck.state.finalize()  # what was accepted must be a usable state
    assert tried > 500 and refused > 0.9 * tried


# ------------------------------------------------------------------- item 5: resolved paths
def _legacy_fingerprint(files) -> str:
    """The fingerprint gpustats wrote before v2 (sha256 over each path as typed and its size)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(os.fspath(f).encode() + b"\0" + str(os.stat(f).st_size).encode() + b"\n")
    return digest.hexdigest()


def test_fingerprint_compares_resolved_paths(tmp_path, monkeypatch, tiny_data):
    monkeypatch.chdir(tiny_data.parent)
    (tmp_path / "link").symlink_to(tiny_data)
    typed = {"relative": list_images(["data"]), "absolute": list_images([str(tiny_data)]),
             "symlink": list_images([str(tmp_path / "link")]), "dotted": list_images([f"./{tiny_data.name}/../data"])}
    options = {"mode": "RGB"}
    for made_with, files in typed.items():
        ck = Checkpoint(state=_state("uint8"), next_index=1, files_total=len(files),
                        fingerprint=file_list_fingerprint(files), options=options, images=1)
        for resumed_with, other in typed.items():  # every spelling resumes every other
            check_compatible("c", ck, fingerprint=file_list_fingerprint(other), files_total=len(other), options=options)
    fewer = typed["absolute"][:-1]
    with pytest.raises(CheckpointError, match="another file list"):
        check_compatible("c", ck, fingerprint=file_list_fingerprint(fewer), files_total=len(typed["absolute"]),
                         options=options)


def test_checkpoint_of_an_earlier_version_is_refused_with_what_to_do(tmp_path, monkeypatch, tiny_data):
    """Fingerprints before v3 hold no modification times, so they cannot tell a rewritten file: refused."""
    monkeypatch.chdir(tiny_data.parent)
    files = list_images(["data"])
    ck = Checkpoint(state=_state("uint8"), next_index=1, files_total=len(files),
                    fingerprint=_legacy_fingerprint(files), options={}, images=1)
    with pytest.raises(CheckpointError, match="earlier gpustats.*delete"):
        check_compatible("c", ck, fingerprint=file_list_fingerprint(files), files_total=len(files), options={})


def test_cli_run_checkpointed_as_relative_path_resumes_as_absolute(capsys, monkeypatch, tmp_path, tiny_data):
    from gpustats.sources import reduce_tasks

    monkeypatch.chdir(tiny_data.parent)
    opts = ["--device", "cpu", "--workers", "0", "--batch-size", "4", "--histogram", "--format", "json", "--quiet"]
    assert main(["stats", str(tiny_data), *opts]) == 0
    full = json.loads(capsys.readouterr().out)
    ck = tmp_path / "run.ckpt"
    real_batch, calls = reduce_tasks.ReducedBatches.__getitem__, {"n": 0}

    def batch_then_interrupt(self, b):  # Ctrl-C while the second batch is being decoded
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_batch(self, b)

    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", batch_then_interrupt)
    assert main(["stats", "data", *opts, "--checkpoint", str(ck)]) == 130
    monkeypatch.setattr(reduce_tasks.ReducedBatches, "__getitem__", real_batch)
    capsys.readouterr()
    assert main(["stats", str(tiny_data), *opts, "--checkpoint", str(ck)]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["resumed_from"] == 4 and resumed["state"] == full["state"]


# ------------------------------------------------------------------- item 6: file modes
@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_checkpoint_respects_the_umask(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "c.ckpt"
    write_checkpoint(path, _ck())
    assert _mode(path) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


@pytest.mark.parametrize("existing", [0o644, 0o640, 0o600, 0o664])
def test_rewritten_checkpoint_keeps_its_mode(tmp_path, umask, existing):
    umask(0o077)  # would give 0600 to a new file: an existing one must not change
    path = tmp_path / "c.ckpt"
    path.write_text("{}")
    path.chmod(existing)
    ck = _ck()
    write_checkpoint(path, ck)
    write_checkpoint(path, ck)
    assert _mode(path) == existing and read_checkpoint(path).state == ck.state


def test_symlinked_checkpoint_stays_a_symlink(tmp_path):
    target = tmp_path / "real.ckpt"
    link = tmp_path / "link.ckpt"
    link.symlink_to(target)
    ck = _ck()
    write_checkpoint(link, ck)
    assert link.is_symlink() and read_checkpoint(target).state == ck.state


def test_cli_output_file_respects_umask_and_keeps_mode(capsys, tmp_path, umask, tiny_data):
    umask(0o022)
    out = tmp_path / "stats.json"
    args = ["stats", str(tiny_data), "--device", "cpu", "--workers", "0", "--format", "json", "--quiet",
            "--output", str(out)]
    assert main(args) == 0 and _mode(out) == 0o644
    out.chmod(0o604)
    assert main(args) == 0 and _mode(out) == 0o604
    assert json.loads(out.read_text())["images"] == 12
