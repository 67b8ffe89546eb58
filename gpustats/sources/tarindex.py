"""Tar archives read in place: a hardened header parser, the index of an uncompressed tar (tars
inside it included, the ILSVRC layout) and the member stream of a compressed one.

Nothing is ever written to disk and no member name is ever used as a path: a member is only a
name (for reports) and a byte range (for reading). The parser is written here rather than taken
from :mod:`tarfile` so that every limit is ours:

* pax extended headers and GNU long names larger than :data:`MAX_HEADER_BYTES` (1 MiB) stop the
  archive with a reason (``tarfile`` reads a header of any claimed size into memory);
* a header whose checksum is wrong, a size field that is not a number, data that runs past the
  end of the archive: the archive stops there with a reason (members before it still count);
* tars inside tars are followed :data:`MAX_DEPTH` levels deep at most (ILSVRC2012 needs 2);
* the caller refuses links (never followed), sparse members, unsafe names (absolute, ``..``) and
  members over :func:`max_member_bytes` (:func:`refusal`: half the per-worker budget,
  :func:`worker_memory`; 256 MiB by default), from the size in the header, before reading them.

Formats: POSIX ustar (with its name prefix), pax (``path``, ``size``), GNU (long names, base-256
sizes, old sparse headers); the end is the first all-zero block or the end of the data.

>>> import io, tarfile
>>> buf = io.BytesIO()
>>> with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
...     for name, data in [("a/x.jpg", b"12345"), ("../evil.png", b"1")]:
...         info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
>>> [(e.name, e.offset, e.size, e.kind) for e in iter_entries(SeqReader(io.BytesIO(buf.getvalue())))]
[('a/x.jpg', 512, 5, 'file'), ('../evil.png', 1536, 1, 'file')]
>>> refusal("../evil.png", "file", 1)
"unsafe member name (a '..' component); refused"
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from typing import Any, BinaryIO, Iterator, NamedTuple

from ..tuning import DEFAULT_WORKER_MEMORY_MB

__all__ = ["MAX_DEPTH", "MAX_HEADER_BYTES", "MAX_MEMBER_BYTES", "DEFAULT_WORKER_MEMORY_MB", "TAR_SUFFIXES",
           "max_member_bytes", "too_large", "worker_memory", "TarError", "Entry", "SeqReader", "is_hidden", "pread",
           "PreadReader", "LimitedFile", "iter_entries", "compression_of", "open_decompressed", "is_tar_name",
           "refusal"]

BLOCK = 512
#: largest pax extended header or GNU long name read (a name or a size never needs more)
MAX_HEADER_BYTES = 1 << 20
#: archives inside archives are read this many levels deep (the outermost archive is level 1)
MAX_DEPTH = 4
# DEFAULT_WORKER_MEMORY_MB: encoded bytes (archive members, Parquet values) a decode worker holds at once,
# in MiB, unless the environment variable ``GPUSTATS_WORKER_MEMORY_MB`` says otherwise (:func:`worker_memory`;
# why 512: :data:`gpustats.tuning.DEFAULT_WORKER_MEMORY_MB`)
#: largest member read into memory with the default budget (half of it: two batches per worker are in
#: flight); :func:`max_member_bytes` is the one in force
MAX_MEMBER_BYTES = DEFAULT_WORKER_MEMORY_MB << 19
_ENV_BUDGET = "GPUSTATS_WORKER_MEMORY_MB"


def worker_memory() -> int:
    """Bytes of encoded images a decode worker holds at once (``GPUSTATS_WORKER_MEMORY_MB``, default 512 MiB).

    A compressed tar's members go to the workers in batches of at most half of it (two batches per
    worker in flight), and no single member, zip member, Parquet value or row group's image column over
    half of it (:func:`max_member_bytes`) is read: each is refused, before it is inflated wherever the
    format states its size (tar header, zip directory, Parquet metadata)."""
    text = os.environ.get(_ENV_BUDGET, "").strip()
    if not text:
        return DEFAULT_WORKER_MEMORY_MB << 20
    try:
        mib = int(text)
    except ValueError:
        mib = 0
    if mib < 2:
        from .errors import SourceError

        raise SourceError(f"{_ENV_BUDGET} must be a whole number of MiB >= 2 (default {DEFAULT_WORKER_MEMORY_MB}), "
                          f"got {text!r}")
    return mib << 20


def max_member_bytes() -> int:
    """The largest member, value or Parquet row-group image column read: half of :func:`worker_memory`."""
    return worker_memory() // 2


def too_large(size: int, what: str = "member") -> str:
    """The reason a ``what`` of ``size`` bytes is refused (over :func:`max_member_bytes`)."""
    return (f"too large: {what} of {size:,} bytes > {max_member_bytes():,} bytes (half of "
            f"{_ENV_BUDGET}={worker_memory() >> 20}); refused unread")
#: names read as tar archives (any case); the content decides the compression
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")

_ZERO = bytes(BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")
_KINDS = {b"1": "link", b"2": "link", b"5": "dir", b"3": "other", b"4": "other", b"6": "other", b"V": "other",
          b"M": "other", b"D": "other", b"S": "sparse"}
_NO_DATA = (b"1", b"2", b"5", b"3", b"4", b"6")
_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


class TarError(Exception):
    """The archive cannot be read past this point; ``str()`` is the reason."""


class Entry(NamedTuple):
    """One member: ``offset`` is where its data starts (from the start of the tar stream)."""

    name: str
    offset: int
    size: int
    kind: str  # "file", "dir", "link", "sparse" or "other"


def is_tar_name(name: str) -> bool:
    """True for the names read as tar archives (:data:`TAR_SUFFIXES`, any case)."""
    return name.lower().endswith(TAR_SUFFIXES)


def is_hidden(name: str) -> bool:
    """True when a component of the member name starts with ``.`` (``./`` and ``..`` aside): skipped like
    hidden files in folders (``__MACOSX/._x.jpg``, ``.cache/x.png``).

    >>> is_hidden("./train/a.jpg"), is_hidden("__MACOSX/._a.jpg"), is_hidden("../a.jpg")
    (False, True, False)
    """
    return any(part.startswith(".") and part not in (".", "..") for part in name.replace("\\", "/").split("/"))


def refusal(name: str, kind: str, size: int) -> str | None:
    """Why a member named like an image is not read (``None``: it is read)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "unsafe member name (absolute path); refused"
    if ".." in parts:
        return "unsafe member name (a '..' component); refused"
    if kind == "link":
        return "link member (never followed); refused"
    if kind == "sparse":
        return "sparse member (not supported); refused"
    if kind != "file":
        return f"not a regular file ({kind}); refused"
    if size > max_member_bytes():
        return too_large(size)
    return None


class SeqReader:
    """Sequential reads from a binary file object, position counted; :meth:`skip_to` reads and discards."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.pos = fh, 0

    def read(self, n: int) -> bytes:
        data = self.fh.read(min(n, 1 << 24)) if n > 0 else b""
        if 0 < len(data) < n:  # a large member: gathered in one growing buffer, not in pieces then joined
            out = io.BytesIO()  # (which would hold it twice); getvalue() hands the buffer over without a copy
            out.write(data)
            want, data = n - len(data), None
            while want > 0 and (chunk := self.fh.read(min(want, 1 << 24))):
                out.write(chunk)
                want -= len(chunk)
            chunk = None
            data = out.getvalue()
        self.pos += len(data)
        return data

    def skip_to(self, pos: int) -> bool:
        """Advance to ``pos``; False when the data ends first."""
        while self.pos < pos:
            if not self.read(min(pos - self.pos, 1 << 20)):
                return False
        return True


def pread(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes at ``offset`` of ``fd`` (fewer at the end) without moving a shared position where the
    platform has ``os.pread``; elsewhere (Windows) a seek and a read, fine for one thread per process.
    ``fd`` may also be an object with a ``pread(n, offset)`` method (a remote object: :mod:`.remote`)."""
    if not isinstance(fd, int):
        return fd.pread(n, offset)
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while n > 0 and (chunk := os.read(fd, n)):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class PreadReader:
    """Reads of ``size`` bytes from ``base`` in an open file descriptor (a window: a tar inside a tar)."""

    def __init__(self, fd: int, base: int, size: int):
        self.fd, self.base, self.size, self.pos = fd, base, size, 0

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.size - self.pos))
        data = pread(self.fd, n, self.base + self.pos) if n else b""
        self.pos += len(data)
        return data

    def skip_to(self, pos: int) -> bool:
        self.pos = min(pos, self.size)
        return pos <= self.size


class LimitedFile:
    """The next ``size`` bytes of a reader (anything with ``read(n)``: a :class:`SeqReader`, a
    :class:`PreadReader`, an open file), as a read-only file object (a member's data, streamed)."""

    def __init__(self, reader: Any, size: int):
        self.reader, self.left = reader, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.reader.read(n) if n else b""
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str, where: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        if field[0] == 0xFF:
            raise TarError(f"negative {what} in the header at byte {where}")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" \0")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarError(f"corrupt header at byte {where} ({what} field {text[:20]!r} is not a number)") from None


def _checksum_ok(block: bytes, where: int) -> bool:
    stored = _number(block[148:156], "checksum", where)
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored == unsigned:
        return True
    high = sum(1 for b in block[:148] + block[156:] if b > 127)  # old tars summed signed chars
    return stored == unsigned - 256 * high


def _pax(payload: bytes, where: int) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(payload) and payload[pos:pos + 1] not in (b"", b"\0"):
        space = payload.find(b" ", pos, pos + 24)
        try:
            length = int(payload[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        record = payload[space + 1:pos + length]
        if length <= 0 or pos + length > len(payload) or not record.endswith(b"\n") or b"=" not in record:
            raise TarError(f"corrupt pax header at byte {where}")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def iter_entries(reader: SeqReader | PreadReader) -> Iterator[Entry]:
    """Yield the members of the tar stream ``reader`` in archive order; raise :class:`TarError` where it breaks.

    The consumer may read a member's data from ``reader`` (``reader.read(entry.size)``) before asking
    for the next entry; whatever it left unread is skipped.
    """
    pending: dict[str, str] = {}  # pax records / GNU long name for the next member
    while True:
        where = reader.pos
        block = reader.read(BLOCK)
        if len(block) < BLOCK:
            if block.strip(b"\0"):
                raise TarError(f"truncated header at byte {where}")
            return  # end of the data without end-of-archive blocks: accepted, as tar does
        if block == _ZERO:
            return
        if not _checksum_ok(block, where):
            raise TarError(f"corrupt header at byte {where} (checksum mismatch)")
        size = _number(block[124:136], "size", where)
        typeflag = block[156:157]
        if typeflag == b"S":  # old GNU sparse: extension blocks come before the data
            more = block[482]
            while more:
                extension = reader.read(BLOCK)
                if len(extension) < BLOCK:
                    raise TarError(f"truncated sparse header at byte {where}")
                more = extension[504]
        if typeflag in (b"x", b"g", b"L", b"K"):
            if size > MAX_HEADER_BYTES:
                raise TarError(f"a member header of {size} bytes at byte {where} (over {MAX_HEADER_BYTES}); refused")
            payload = reader.read(size)
            if len(payload) < size:
                raise TarError(f"truncated member header at byte {where}")
            reader.skip_to(reader.pos + (-size % BLOCK))
            if typeflag == b"x":
                pending.update(_pax(payload, where))
            elif typeflag == b"L":
                pending["path"] = _text(payload)
            elif typeflag == b"g":
                _pax(payload, where)  # global records: checked, not used (they hold no member data)
            continue
        name = _text(block[0:100])
        if block[257:263] == b"ustar\0" and block[345:500].strip(b"\0"):
            name = _text(block[345:500]) + "/" + name
        if "size" in pending:
            try:
                size = int(pending["size"])
            except ValueError:
                raise TarError(f"corrupt pax size {pending['size'][:20]!r} at byte {where}") from None
            if size < 0:
                raise TarError(f"negative pax size at byte {where}")
        name = pending.get("GNU.sparse.name", pending.get("path", name))  # pax sparse: the real name, not
        # the placeholder (./GNUSparseFile.N/...) that tar writes in the header for readers without sparse support
        kind = "sparse" if any(k.startswith("GNU.sparse") for k in pending) else (
            "file" if typeflag in _FILE_TYPES else _KINDS.get(typeflag, "other"))
        pending = {}
        if typeflag in _NO_DATA:
            size = 0  # links, folders, devices and FIFOs hold no data (as tarfile reads them)
        start = reader.pos
        if start + size > getattr(reader, "size", start + size):  # known length: fail before the member is used
            raise TarError(f"truncated: member {name!r} needs {size} bytes from byte {start}, past the end")
        yield Entry(name, start, size, kind)
        if not reader.skip_to(start + size):
            raise TarError(f"truncated: member {name!r} needs {size} bytes from byte {start}, past the end")
        reader.skip_to(start + size + (-size % BLOCK))  # the padding of the very last block may be missing


def compression_of(head: bytes) -> str | None:
    """``"gz"``, ``"bz2"`` or ``"xz"`` from the first bytes of a file, or None (uncompressed)."""
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def open_decompressed(fh: BinaryIO, kind: str | None) -> BinaryIO:
    """A read-only stream of the decompressed bytes of ``fh`` (``kind`` from :func:`compression_of`)."""
    if kind is None:
        return fh
    opener = {"gz": gzip.GzipFile, "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}[kind]
    return opener(fileobj=fh, mode="rb") if kind == "gz" else opener(fh, mode="rb")
