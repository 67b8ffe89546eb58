"""Zip archives read in place: the central directory lists the members, and each member is read
from its own byte range (local header, then data), so any member can be read by any process with
nothing but an open file descriptor -- no ``ZipFile`` per decode worker.

Members are refused, with a reason, when they are encrypted, symbolic links, stored with a
compression method other than stored/deflate, larger than
:func:`~gpustats.sources.tarindex.max_member_bytes` (256 MiB by default; the size the directory
declares, checked before inflating), named unsafely (absolute, ``..``) or overlap
another member's data (the trick of "zip bombs" that reuse one compressed kernel for many members).
Deflated data is inflated to at most the size the directory declares (one byte more is an error),
and the CRC-32 is checked, so a member can never expand beyond its declared size.

>>> import io, os, tempfile, zipfile
>>> path = os.path.join(tempfile.mkdtemp(), "a.zip")
>>> with zipfile.ZipFile(path, "w") as z:
...     z.writestr("x.png", b"12345", compress_type=zipfile.ZIP_DEFLATED)
...     z.writestr("notes.txt", b"hi")
>>> members = list_zip(path)
>>> [(m.name, m.size, m.refused) for m in members]
[('x.png', 5, None), ('notes.txt', 2, None)]
>>> fd = os.open(path, os.O_RDONLY)
>>> read_member(fd, members[0])
b'12345'
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from typing import Any, NamedTuple

from .errors import BadImage
from .tarindex import pread, refusal

__all__ = ["ZipMember", "ZipListError", "list_zip", "read_member"]

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
_STORED, _DEFLATED = 0, 8
_EXTRA_SLACK = 64  # bytes of a local header's extra field read with it (zip64 and timestamps fit)


class ZipListError(Exception):
    """The zip's directory cannot be read; ``str()`` is the reason."""


class ZipMember(NamedTuple):
    """One entry of the central directory (what reading it needs)."""

    name: str
    header_offset: int
    compressed: int
    size: int
    method: int
    crc: int
    refused: str | None


def list_zip(path: str, opened: Any = None) -> list[ZipMember]:
    """The file members of the zip at ``path`` in directory order (folders left out); refusals marked.
    ``opened``: a seekable file object of it to read instead (a remote object: :mod:`.remote`)."""
    try:
        with zipfile.ZipFile(path if opened is None else opened) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, MemoryError,
            OverflowError, struct.error, UnicodeDecodeError) as exc:
        raise ZipListError(f"not a readable zip archive ({type(exc).__name__}: {exc})") from None
    infos = [i for i in infos if not i.is_dir()]
    overlapping = _overlapping(infos, os.path.getsize(path) if opened is None else opened.size)
    members = []
    for n, info in enumerate(infos):
        mode = info.external_attr >> 16
        is_link = info.create_system == 3 and stat.S_ISLNK(mode)
        reason = refusal(info.filename, "link" if is_link else "file", info.file_size)
        if reason is None and info.flag_bits & 0x1:
            reason = "encrypted member; refused"
        if reason is None and info.compress_type not in (_STORED, _DEFLATED):
            reason = f"compression method {info.compress_type} is not read (stored and deflate are); refused"
        if reason is None and n in overlapping:
            reason = overlapping[n]
        members.append(ZipMember(info.filename, info.header_offset, info.compress_size, info.file_size,
                                 info.compress_type, info.CRC, reason))
    return members


def _overlapping(infos: list[zipfile.ZipInfo], file_size: int) -> dict[int, str]:
    """Members whose smallest possible byte range (local header, name, data) meets another's or runs past
    the end of the file."""
    order = sorted(range(len(infos)), key=lambda n: infos[n].header_offset)
    found = {}
    reason = ("its data overlaps another member or runs past the end of the archive (a zip bomb's trick, or a "
              "damaged zip); refused")
    for k, n in enumerate(order):
        info = infos[n]
        name_bytes = len(info.filename.encode("utf-8")) if info.flag_bits & 0x800 else len(info.orig_filename)
        smallest_end = info.header_offset + _LOCAL.size + name_bytes + info.compress_size
        if smallest_end > file_size:
            found[n] = reason
        if k + 1 < len(order) and smallest_end > infos[order[k + 1]].header_offset:
            found[n] = found[order[k + 1]] = reason
    return found


def read_member(fd: int, member: ZipMember) -> bytes:
    """The uncompressed bytes of ``member`` from the zip open as ``fd``; :class:`BadImage` when they cannot be."""
    if member.refused:
        raise BadImage(member.refused)
    # one read for the local header and the data, when its name and extra field are the directory's size
    # (as zip writers make them; a remote member is then one request), else a second one
    guess = len(member.name.encode("utf-8")) + _EXTRA_SLACK
    chunk = pread(fd, _LOCAL.size + guess + member.compressed, member.header_offset)
    header = chunk[:_LOCAL.size]
    if len(header) < _LOCAL.size:
        raise BadImage("truncated zip member (no local header)")
    signature, _, _, _, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack(header)
    if signature != b"PK\x03\x04":
        raise BadImage("corrupt zip member (bad local header signature)")
    if name_len + extra_len <= guess:
        start = _LOCAL.size + name_len + extra_len
        data = chunk[start:start + member.compressed]
    else:
        data = pread(fd, member.compressed, member.header_offset + _LOCAL.size + name_len + extra_len)
    if len(data) < member.compressed:
        raise BadImage("truncated zip member (data ends early)")
    if member.method == _STORED:
        out = data
    else:
        inflater = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(data, member.size + 1)
        except zlib.error as exc:
            raise BadImage(f"corrupt zip member (deflate: {exc})") from None
    if len(out) != member.size:
        raise BadImage(f"corrupt zip member ({len(out)} bytes where the directory says {member.size})")
    if zlib.crc32(out) != member.crc:
        raise BadImage("corrupt zip member (CRC-32 mismatch)")
    return out

