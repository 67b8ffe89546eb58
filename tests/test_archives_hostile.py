"""Hostile archives: refused member by member, with reasons; never a write to disk, never a hang.

Each archive is built byte by byte where the standard writers would not produce it (forged sizes,
checksums, overlapping zip entries). Every run must finish quickly (pytest-timeout), count the
good images that come before the trouble, list the trouble with a reason, and leave the file
system as it was.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpustats.sources.engine import run_folder

OPTS = dict(device="cpu", workers=0, batch_size=4, histogram=True)
pytestmark = pytest.mark.timeout(120)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _header(name: str, size: int, typeflag: bytes = b"0", linkname: str = "", size_field: bytes | None = None) -> bytes:
    """One ustar header block with a correct checksum (``size_field`` forges the size as written)."""
    block = bytearray(512)
    block[0:100] = name.encode().ljust(100, b"\0")[:100]
    block[100:108] = b"0000644\0"
    block[108:124] = b"0000000\0" * 2
    block[124:136] = size_field if size_field is not None else f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[157:257] = linkname.encode().ljust(100, b"\0")[:100]
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def _member(name: str, data: bytes, typeflag: bytes = b"0", linkname: str = "") -> bytes:
    return _header(name, len(data), typeflag, linkname) + data + bytes(-len(data) % 512)


END = bytes(1024)


def _snapshot(*roots: Path) -> dict:
    return {str(p): p.stat().st_size for root in roots for p in root.rglob("*")}


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    """Runs happen from an empty working folder; afterwards it and the archives' folder must be unchanged."""
    work, store = tmp_path / "cwd", tmp_path / "store"
    work.mkdir()
    store.mkdir()
    monkeypatch.chdir(work)
    yield store
    assert not list(work.iterdir()), "something was written to the working folder"
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/gpustats-evil.png").exists()


def _run(path, **kw):
    before = _snapshot(path.parent)
    run = run_folder([path], **{**OPTS, **kw})
    assert _snapshot(path.parent) == before  # nothing extracted, nothing written next to the archive
    return run


def _reasons(run) -> dict[str, str]:
    return {b["path"].split(":", 1)[1] if ":" in b["path"] else "": b["reason"] for b in run.bad_files}


# ---------------------------------------------------------------------------------- tar
def test_unsafe_names_and_links_are_refused_never_followed(sandbox):
    path = sandbox / "names.tar"
    path.write_bytes(_member("ok.png", _png(1)) + _member("../evil.png", _png(2)) + _member("/tmp/gpustats-evil.png",
                     _png(3)) + _member("link.png", b"", b"2", "/etc/passwd") + _member("hard.png", b"", b"1", "ok.png")
                     + _member("fifo.png", b"", b"6") + _member("dir.png/", b"", b"5") + END)
    run = _run(path)
    assert run.images == 1 and run.files_total == 6  # the folder entry is no image name: ignored
    reasons = _reasons(run)
    assert reasons["../evil.png"] == "unsafe member name (a '..' component); refused"
    assert reasons["/tmp/gpustats-evil.png"] == "unsafe member name (absolute path); refused"
    assert reasons["link.png"] == reasons["hard.png"] == "link member (never followed); refused"
    assert reasons["fifo.png"] == "not a regular file (other); refused"


@pytest.mark.parametrize("typeflag", [b"x", b"L"])
def test_a_huge_member_header_stops_the_archive_without_reading_it(sandbox, typeflag):
    """A pax header (or GNU long name) claiming 8 GiB: tarfile would try to read it into memory."""
    path = sandbox / "pax.tar"
    forged = _header("././@PaxHeader", 0, typeflag, size_field=b"77777777777\0")
    path.write_bytes(_member("a.png", _png(1)) + forged + _member("b.png", _png(2)) + END)
    run = _run(path)
    assert run.images == 1
    (reason,) = [b["reason"] for b in run.bad_files]
    assert reason == ("a member header of 8589934591 bytes at byte 1024 (over 1048576); refused; the rest of this "
                      "archive is not read")


def test_corrupt_truncated_and_oversized_tars_keep_what_came_before(sandbox, monkeypatch):
    good = _member("a.png", _png(1)) + _member("b.png", _png(2))
    corrupt = bytearray(_member("c.png", _png(3)))
    corrupt[148] ^= 0x01  # checksum
    (sandbox / "corrupt.tar").write_bytes(good + bytes(corrupt) + _member("d.png", _png(4)) + END)
    run = _run(sandbox / "corrupt.tar")
    assert run.images == 2 and _reasons(run) == {
        "": f"corrupt header at byte {len(good)} (checksum mismatch); the rest of this archive is not read"}
    cut = good + _member("c.png", _png(3))
    (sandbox / "cut.tar").write_bytes(cut[: len(good) + 600])
    run = _run(sandbox / "cut.tar")
    assert run.images == 2 and "truncated: member 'c.png' needs" in run.bad_files[0]["reason"]
    claims = _header("huge.png", 0, size_field=b"17777777777\0")  # 2 GiB of data that is not there
    (sandbox / "claims.tar").write_bytes(good + claims + END)
    run = _run(sandbox / "claims.tar")
    assert run.images == 2 and [b["reason"] for b in run.bad_files] == [
        f"truncated: member 'huge.png' needs 2147483647 bytes from byte {len(good) + 512}, past the end; the rest "
        "of this archive is not read"]


def test_a_compressed_tar_whose_member_claims_terabytes_ends_quickly(sandbox):
    raw = _member("a.png", _png(1)) + _header("huge.png", 0, size_field=b"\x80" + (1 << 40).to_bytes(11, "big")) + END
    buf = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        gz.write(raw)
    (sandbox / "claims.tar.gz").write_bytes(buf.getvalue())
    run = _run(sandbox / "claims.tar.gz")
    assert run.images == 1
    assert run.bad_files[0]["reason"] == (f"too large: member of {1 << 40:,} bytes > 268,435,456 bytes (half of "
                                          "GPUSTATS_WORKER_MEMORY_MB=512); refused unread")
    assert "past the end" in run.bad_files[1]["reason"]


def test_corrupt_or_cut_gzip_data_is_reported_and_earlier_members_count(sandbox):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for k in range(6):
            data = _png(k) + os.urandom(4000)  # incompressible tail: the damage lands after the first members
            info = tarfile.TarInfo(f"{k}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    (sandbox / "cut.tar.gz").write_bytes(raw[: len(raw) * 2 // 3])
    run = _run(sandbox / "cut.tar.gz")
    assert 1 <= run.images < 6
    assert run.bad_files[-1]["reason"].startswith("corrupt or truncated compressed data (EOFError")
    flipped = bytearray(raw)
    flipped[-8] ^= 0xFF  # the gzip trailer's CRC: noticed at the end of the stream, after the members
    (sandbox / "crc.tar.gz").write_bytes(bytes(flipped))
    run = _run(sandbox / "crc.tar.gz")
    assert run.bad_files[-1]["reason"].startswith("corrupt or truncated compressed data (BadGzipFile: CRC check failed")


def test_tars_nested_too_deep_are_refused(sandbox):
    inner = _member("deep.png", _png(9)) + END
    for level in range(6):  # deep.png sits 7 archives down
        inner = _member(f"level{level}.tar", inner) + END
    (sandbox / "deep.tar").write_bytes(_member("top.png", _png(1)) + _member("l.tar", _member("two.png", _png(2))
                                                                              + END) + _member("nest.tar", inner) + END)
    run = _run(sandbox / "deep.tar")
    assert run.images == 2  # top.png and l.tar:two.png (level 2)
    (bad,) = run.bad_files
    assert bad["path"].endswith("deep.tar:nest.tar:level5.tar:level4.tar:level3.tar")
    assert bad["reason"] == "archive nested more than 4 levels deep; refused"


# ---------------------------------------------------------------------------------- zip
def _local(name: bytes, data: bytes, method: int, crc: int, size: int) -> bytes:
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size, len(name), 0) + name


def _central(name: bytes, method: int, crc: int, csize: int, size: int, offset: int, attr: int = 0) -> bytes:
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0x0314, 20, 0, method, 0, 0, crc, csize, size,
                       len(name), 0, 0, 0, 0, attr, offset) + name


def _zip(entries: list[tuple], locals_: bytes) -> bytes:
    directory = b"".join(_central(*e) for e in entries)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(locals_), 0)
    return locals_ + directory + end


def test_zip_bombs_are_refused_before_any_inflating(sandbox):
    """Overlapping entries (many names, one kernel), a member that inflates past its declared size, and a
    member declared larger than the limit (256 MiB by default)."""
    good = _png(1)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = zeros.compress(bytes(50_000_000)) + zeros.flush()  # 50 MB of zeros in ~50 kB
    crc0 = zlib.crc32(good)
    local_good = _local(b"a.png", good, 0, crc0, len(good)) + good
    bomb_at = len(local_good)
    local_bomb = _local(b"b.png", kernel, 8, 0, 100) + kernel
    entries = [(b"a.png", 0, crc0, len(good), len(good), 0),
               (b"b.png", 8, 0, len(kernel), 100, bomb_at),  # declares 100 bytes: inflating stops at 101
               (b"c.png", 8, 0, len(kernel), 2**31, bomb_at),  # the same kernel again, declared 2 GiB
               (b"d.png", 8, 0, len(kernel), 50_000_000, bomb_at)]
    (sandbox / "bomb.zip").write_bytes(_zip(entries, local_good + local_bomb))
    run = _run(sandbox / "bomb.zip")
    assert run.images == 1
    reasons = _reasons(run)
    assert "overlaps another member" in reasons["b.png"] and "overlaps another member" in reasons["d.png"]
    assert reasons["c.png"] == ("too large: member of 2,147,483,648 bytes > 268,435,456 bytes (half of "
                                "GPUSTATS_WORKER_MEMORY_MB=512); refused unread")
    (sandbox / "alone.zip").write_bytes(_zip(entries[:2], local_good + local_bomb))  # no overlap: inflate, bounded
    reasons = _reasons(_run(sandbox / "alone.zip"))
    assert reasons["b.png"] == "corrupt zip member (101 bytes where the directory says 100)"


def test_zip_links_encryption_and_names_are_refused(sandbox):
    path = sandbox / "odd.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ok.png", _png(1))
        link = zipfile.ZipInfo("link.png")
        link.create_system, link.external_attr = 3, (0o120777 << 16)
        z.writestr(link, "/etc/passwd")
        z.writestr("../up.png", _png(2))
        secret = zipfile.ZipInfo("secret.png")
        z.writestr(secret, _png(3))
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"PK\x01\x02" + raw[raw.rfind(b"PK\x01\x02") + 4: raw.rfind(b"PK\x01\x02") + 6])
    raw[at + 8] |= 0x01  # the encrypted flag of secret.png's directory entry
    path.write_bytes(bytes(raw))
    reasons = _reasons(_run(path))
    assert reasons == {"link.png": "link member (never followed); refused",
                       "../up.png": "unsafe member name (a '..' component); refused",
                       "secret.png": "encrypted member; refused"}


def test_not_an_archive_is_one_bad_item_named_after_it(sandbox):
    for name in ("fake.tar", "fake.zip"):
        (sandbox / name).write_bytes(b"hello, not an archive at all" * 40)
    run = run_folder([sandbox / "fake.tar", sandbox / "fake.zip", _good_folder(sandbox)], **OPTS)
    assert run.images == 1
    assert [b["path"] for b in run.bad_files] == [str(sandbox / "fake.tar"), str(sandbox / "fake.zip")]
    assert run.bad_files[0]["reason"].startswith("corrupt header at byte 0 (")
    assert run.bad_files[1]["reason"].startswith("not a readable zip archive (BadZipFile")


def _good_folder(root: Path) -> Path:
    folder = root / "good"
    folder.mkdir(exist_ok=True)
    (folder / "a.png").write_bytes(_png(1))
    return folder
