"""What a run reads: the *units* listed from the paths given, and how one item's bytes are read.

A unit is what ``torchrun`` ranks share (``units[rank::world]``) and holds the *items* (images):

* an image file: a ``Path`` (a unit of one item), exactly as :func:`~gpustats.sources.list_images` lists it;
* :class:`MemberUnit`: members of an archive read in place -- a run of a tar's own members
  between the tars it holds, each tar inside it (the ILSVRC layout: one unit per class tar), a zip;
* :class:`RowGroupUnit`: one row group of a Parquet file (one image per row);
* :class:`StreamUnit`: a compressed tar (``.tar.gz`` ...), whose members are known only by reading
  it from start to end (no random access: items are counted as they stream, see :mod:`.streamed`).

The order is deterministic and documented: paths in the order given (a brace pattern in its
expansion order); folders as ``list_images`` walks them (archives in a folder are not opened:
name them); tar members in archive order, a nested tar's members in its place; zip members in
central-directory order; Parquet rows by row group, then row. Archive members and rows are
picked by the image extensions of folders (:data:`~gpustats.sources.IMAGE_EXTENSIONS`, or the
``extensions`` given); other
members (``.cls``, ``.json``, ``.txt``, as WebDataset pairs them) are ignored (zip and Parquet files
inside a tar too, but the run says so: only tars are read inside tars), and so are hidden
ones (a name component starting with ``.``, e.g. ``__MACOSX/._a.jpg``), as in folders. An item's name,
used for bad files and checkpoints, is ``archive.tar:member/path`` (``outer.tar:inner.tar:x.JPEG``
when nested, ``data.parquet:ROW`` for Parquet rows); a problem with an archive itself (a corrupt
header, a truncated file) is an item named after the archive, with the reason.

>>> import io, os, tarfile, tempfile
>>> from PIL import Image
>>> folder = tempfile.mkdtemp()
>>> with tarfile.open(os.path.join(folder, "shard.tar"), "w") as tar:
...     for name in ["a.png", "a.cls", "../b.png"]:
...         buf = io.BytesIO(); Image.new("RGB", (2, 2)).save(buf, format="PNG")
...         info = tarfile.TarInfo(name); info.size = buf.tell(); _ = buf.seek(0); tar.addfile(info, buf)
>>> (unit,) = list_units([os.path.join(folder, "shard.tar")])
>>> [unit.item_name(i)[len(folder) + 1:] for i in range(unit.count)]
['shard.tar:a.png', 'shard.tar:../b.png']
>>> unit.refused.get(1)
"unsafe member name (a '..' component); refused"
>>> read_item(unit, 0)[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import array
import os
from pathlib import Path
from typing import Any, Sequence

from .braces import expand_braces, has_braces, letter_range
from .errors import BadImage, NoImagesFoundError, SourceError, SourceNotFoundError
from .listing import IMAGE_EXTENSIONS, is_image_name, refuse_special, walk_root
from .tarindex import (MAX_DEPTH, PreadReader, TarError, compression_of, is_hidden, is_tar_name, iter_entries,
                       pread, refusal)

__all__ = ["ARCHIVE_SUFFIXES", "MemberUnit", "RowGroupUnit", "StreamUnit", "TFRecordStream", "TFRecordUnit", "Unit",
           "expand_paths", "list_units", "read_item", "remote_units", "unit_count",
           "is_archive_name"]

#: names opened as archives (any case); everything else given explicitly is an image file
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".zip", ".parquet")
_MAX_OPEN = 256  # file descriptors a process keeps open for reading members


def is_zip_or_parquet(name: str) -> bool:
    """True for the archive names not read inside a tar (``.zip``, ``.parquet``; any case)."""
    return name.lower().endswith((".zip", ".parquet"))


def is_archive_name(name: str) -> bool:
    """True for the names read as archives (:data:`ARCHIVE_SUFFIXES`, any case, and TFRecord shards)."""
    from .tfrecord import is_tfrecord_name

    return name.lower().endswith(ARCHIVE_SUFFIXES) or is_tfrecord_name(name)


class MemberUnit:
    """Members of one archive read in place. ``container``: the file on disk; ``label``: the name
    members are reported under; per item a name, a data offset and size (tar) or a
    :class:`~gpustats.sources.ziplist.ZipMember` (zip); ``refused``: item -> reason (not read)."""

    __slots__ = ("container", "label", "kind", "names", "offsets", "sizes", "zip_members", "refused")

    def __init__(self, container: str, label: str, kind: str):
        self.container, self.label, self.kind = container, label, kind
        self.names: list[str] = []
        self.offsets, self.sizes = array.array("q"), array.array("q")
        self.zip_members: list = []
        self.refused: dict[int, str] = {}

    def __getstate__(self):  # every slot, a subclass's too
        return {name: getattr(self, name) for cls in type(self).__mro__ for name in getattr(cls, "__slots__", ())}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    @property
    def count(self) -> int:
        return len(self.names)

    def add(self, name: str, offset: int = 0, size: int = 0, refused: str | None = None, member: Any = None) -> None:
        if refused is not None:
            self.refused[len(self.names)] = refused
        self.names.append(name)
        self.offsets.append(offset)
        self.sizes.append(size)
        if member is not None:
            self.zip_members.append(member)

    def item_name(self, i: int) -> str:
        return f"{self.label}:{self.names[i]}" if self.names[i] else self.label

    def __repr__(self) -> str:
        return f"MemberUnit({self.label!r}, {self.kind}, {self.count} items)"


class RowGroupUnit:
    """One row group of a Parquet file: rows ``first_row .. first_row + count - 1`` of ``path``."""

    __slots__ = ("container", "label", "layout", "group", "first_row", "count")

    def __init__(self, container: str, label: str, layout: Any, group: int, first_row: int):
        self.container, self.label, self.layout, self.group = container, label, layout, group
        self.first_row, self.count = first_row, layout.row_groups[group]

    def __getstate__(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    def item_name(self, i: int) -> str:
        return f"{self.label}:{self.first_row + i}"

    def __repr__(self) -> str:
        return f"RowGroupUnit({self.label!r}, group {self.group}, {self.count} rows)"


class StreamUnit:
    """A compressed tar: ``size`` bytes from ``base`` of ``container`` (a window when nested), read in order."""

    __slots__ = ("container", "label", "base", "size", "compression", "depth", "extensions")

    def __init__(self, container: str, label: str, base: int, size: int, compression: str, depth: int,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
        self.container, self.label, self.base, self.size = container, label, base, size
        self.compression, self.depth, self.extensions = compression, depth, extensions

    def __getstate__(self):  # every slot, a subclass's too
        return {name: getattr(self, name) for cls in type(self).__mro__ for name in getattr(cls, "__slots__", ())}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"StreamUnit({self.label!r}, {self.compression})"


class TFRecordUnit(MemberUnit):
    """The records of a local uncompressed TFRecord shard (kind ``"tfrecord"``, :mod:`.tfrecord`): per record
    its header's offset and its data's length; ``feature``: the ``column`` asked for, or None."""

    __slots__ = ("feature",)

    def __init__(self, container: str, label: str, feature: str | None):
        super().__init__(container, label, "tfrecord")
        self.feature = feature


class TFRecordStream(StreamUnit):
    """A TFRecord shard read from start to end (gzip-compressed, or remote); ``compression`` "" when it is
    found from the first bytes as they are read (a remote one)."""

    __slots__ = ("feature",)

    def __init__(self, container: str, label: str, size: int, compression: str | None, feature: str | None):
        super().__init__(container, label, 0, size, compression, 1)
        self.feature = feature

    def __repr__(self) -> str:
        return f"TFRecordStream({self.label!r})"


Unit = Any  # Path | MemberUnit | RowGroupUnit | StreamUnit (and their TFRecord kinds) | remote.RemotePath


def unit_count(unit: Unit) -> int | None:
    """Items of ``unit`` (None for a stream: unknown until read)."""
    if isinstance(unit, StreamUnit):
        return None
    return 1 if isinstance(unit, (str, os.PathLike)) else unit.count


# ------------------------------------------------------------------------------------------ listing
def expand_paths(paths: Sequence[str | os.PathLike[str]], hints: list[str] | None = None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS, skipped: dict | None = None) -> list[Any]:
    """The paths given, each brace pattern that names no existing path expanded; every result must exist.
    A remote path (``s3://``, ``https://``, ...) gives what :func:`.remote.list_remote` lists there
    (``hints`` receives its notes; ``extensions`` and ``skipped`` as for a folder, :func:`list_units`)."""
    out: list[Any] = []
    for path in paths:
        text = os.fspath(path)
        if isinstance(text, str) and "://" in text:
            from .remote import is_url
            from .storelist import list_remote

            if is_url(text):
                out.extend(list_remote(text, hints if hints is not None else [], is_archive_name, extensions, skipped))
                continue
            text = path = text.split("://", 1)[1] if text.lower().startswith("file://") else text
        if not os.path.exists(text) and has_braces(text):
            names = expand_braces(text)
            missing = [n for n in names if not os.path.exists(n)]
            if missing:
                _letters_not_expanded(missing[0])
                raise SourceNotFoundError(missing[0]) if len(names) == 1 else SourceError(
                    f"{len(missing)} of the {len(names)} paths of the pattern {text!r} do not exist (first: "
                    f"{missing[0]!r})")
            out.extend(Path(n) for n in names)
        elif not os.path.exists(text):
            raise SourceNotFoundError(text)
        else:
            out.append(Path(text))
    for root in out:
        if isinstance(root, Path):  # objects in a store are no local files
            refuse_special(root)
    return out


def _letters_not_expanded(missing: str) -> None:
    """A missing path holding ``{a..c}``: say that letter ranges are not expanded, not just "does not exist"."""
    group = letter_range(missing)
    if group is not None:
        first, last = sorted((ord(group[1]), ord(group[4])))
        letters = ",".join(chr(c) for c in range(first, last + 1)) if last - first < 26 else f"{chr(first)},..."
        raise SourceError(f"path does not exist: {missing!r}; letter ranges such as {group} are not expanded "
                          f"(integer ranges like {{0..9}} and lists are): write the letters as a list, {{{letters}}}")


def list_units(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, unreadable: list | None = None,
               column: str | None = None, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
               skipped: dict | None = None, inner_archives: list | None = None) -> list[Unit]:
    """The units under ``paths`` (folders, image files, archives, brace patterns), in order (module docstring).

    ``unreadable`` receives ``(folder, reason)`` of unreadable folders (as in ``list_images``);
    ``column`` names the image column of Parquet files (else it is found); ``extensions``: the
    names read in folders and archives (ImageFolder's by default); ``skipped`` receives the files
    that walking a folder left out, per extension (archives inside a folder among them: they are
    not opened); ``inner_archives`` receives ``(archive, member)`` of each zip or Parquet file inside
    a tar, which is not read (only tars inside tars are). Raises :class:`SourceNotFoundError`,
    :class:`NoImagesFoundError` and
    :class:`SourceError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    hints: list[str] = []
    roots = expand_paths(paths, hints, extensions, skipped)
    visited_dirs: set[str] = set()
    seen: set[str] = set()
    units: list[Unit] = []
    parquet_seen = False
    for root in roots:
        if not isinstance(root, Path):  # a remote object or file (sources.remote)
            if root.url not in seen:
                seen.add(root.url)
                units.extend(found := remote_units(root, column, extensions))
                parquet_seen |= any(isinstance(u, (RowGroupUnit, TFRecordStream)) for u in found)
            continue
        if os.path.isdir(root) or not is_archive_name(root.name):
            units.extend(walk_root(root, visited_dirs, seen, unreadable, extensions, skipped))
            continue
        real = os.path.realpath(root)
        if real in seen:
            continue
        seen.add(real)
        name = root.name.lower()
        if name.endswith(".zip"):
            units.append(zip_unit(os.fspath(root), os.fspath(root), extensions=extensions))
        elif name.endswith(".parquet"):
            parquet_seen = True
            units.extend(parquet_units(os.fspath(root), os.fspath(root), column))
        elif not is_tar_name(name):  # a TFRecord shard (sources.tfrecord)
            parquet_seen = True
            units.extend(_tfrecord_units(root, column))
        else:
            units.extend(_tar_units(root, extensions, inner_archives))
    if column is not None and not parquet_seen:
        raise SourceError(f"column={column!r} (--column) names the image column of Parquet files (or the image "
                          "feature of TFRecord shards), and no .parquet file was given, nor a TFRecord shard; drop it")
    units = [u for u in units if unit_count(u) != 0]  # an archive without images adds nothing
    if not units:
        where = ", ".join(repr(os.fspath(p)) for p in paths) or "(no paths given)"
        raise NoImagesFoundError(
            f"no images found under {where}; accepted extensions (any case, also for archive members): "
            f"{', '.join(extensions)}; hidden files and folders (leading '.') are skipped"
            + (hints[0] if hints else _archives_in_folders([r for r in roots if isinstance(r, Path)])))
    return units


def _archives_in_folders(roots: list[Path]) -> str:
    """A hint when a folder given holds archives, which walking a folder does not open."""
    for root in roots:
        try:
            names = sorted(e.name for e in os.scandir(root) if is_archive_name(e.name)) if root.is_dir() else []
        except OSError:
            continue
        if names:
            return (f"; archives inside a folder are not opened: name them, e.g. {os.fspath(root / names[0])!r} or a "
                    "brace pattern such as 'shard-{000000..000099}.tar'")
    return ""


def zip_unit(container: str, label: str, opened: Any = None, *,
             extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> MemberUnit:
    """The image members of the zip ``container`` (``opened``: a file object of it, e.g. a remote one)."""
    from .ziplist import ZipListError, list_zip

    unit = MemberUnit(container, label, "zip")
    try:
        members = list_zip(container, opened)
    except ZipListError as exc:
        unit.add("", refused=str(exc))
        return unit
    for member in members:
        if is_image_name(member.name, extensions) and not is_hidden(member.name):
            unit.add(member.name, member.header_offset, member.compressed, member.refused, member)
    return unit


def parquet_units(container: str, label: str, column: str | None) -> list[RowGroupUnit]:
    """The row groups of the Parquet file ``container`` (a path or a remote URL), named ``label``."""
    from .parquetsrc import inspect

    layout = inspect(container, column, label)
    units, first = [], 0
    for group, rows in enumerate(layout.row_groups):
        if rows:
            units.append(RowGroupUnit(container, label, layout, group, first))
        first += rows
    return units


def remote_units(obj: Any, column: str | None, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Unit]:
    """The units of one object listed in a store (:mod:`.remote`), as for a local file: a zip's members and
    a Parquet file's row groups (read at random, by byte range), a tar or a TFRecord shard as a stream (its
    compression found from its first bytes as it is read), an image file (``RemotePath``) as itself."""
    from .remote import RemoteReadError
    from .storelist import RemotePath, listing_error, random_file
    from .tfrecord import is_tfrecord_name, require_crc32c

    if isinstance(obj, RemotePath):
        return [obj]
    name = obj.name.lower()
    try:
        if name.endswith(".zip"):
            return [zip_unit(obj.url, obj.label, random_file(obj.url), extensions=extensions)]
        if name.endswith(".parquet"):
            return parquet_units(obj.url, obj.label, column)
    except RemoteReadError as exc:  # its directory or footer could not be read: one line, before the run
        raise listing_error(exc, obj.label) from None
    if is_tar_name(name):
        return [StreamUnit(obj.url, obj.label, 0, obj.size, "", 1, extensions)]
    if is_tfrecord_name(name):
        require_crc32c()
        return [TFRecordStream(obj.url, obj.label, obj.size, "", column)]
    return [RemotePath(obj)]


def _tfrecord_units(path: Path, column: str | None) -> list[Unit]:
    from .tfrecord import index_shard, require_crc32c

    require_crc32c()
    label = os.fspath(path)
    unit = TFRecordUnit(label, label, column)
    try:
        fd = os.open(label, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        unit.add("", refused=f"unreadable file: {exc.strerror or exc}")
        return [unit]
    try:
        size = os.fstat(fd).st_size
        compression = compression_of(pread(fd, 8, 0))
        if compression is not None:
            return [TFRecordStream(label, label, size, compression, column)]
        index_shard(fd, unit, size)
    except OSError as exc:
        unit.add("", refused=f"unreadable file: {exc.strerror or exc}; the rest of it is not read")
    finally:
        os.close(fd)
    return [unit]


def _tar_units(path: Path, extensions: tuple[str, ...], inner_archives: list | None = None) -> list[Unit]:
    label = os.fspath(path)
    try:
        fd = os.open(label, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        unit = MemberUnit(label, label, "tar")
        unit.add("", refused=f"unreadable archive: {exc.strerror or exc}")
        return [unit]
    try:
        size = os.fstat(fd).st_size
        compression = compression_of(pread(fd, 8, 0))
        if compression is not None:
            return [StreamUnit(label, label, 0, size, compression, 1, extensions)]
        units: list[Unit] = []
        _walk_tar(fd, label, 0, size, label, 1, units, extensions, inner_archives)
        return units
    finally:
        os.close(fd)


def _walk_tar(fd: int, container: str, base: int, size: int, label: str, depth: int, out: list[Unit],
              extensions: tuple[str, ...], inner_archives: list | None = None) -> None:
    """Units of the uncompressed tar at ``base``: runs of its own image members, split by the tars it holds."""
    run = MemberUnit(container, label, "tar")
    try:
        for entry in iter_entries(PreadReader(fd, base, size)):
            if is_tar_name(entry.name) and entry.kind == "file" and not is_hidden(entry.name):
                reason = refusal(entry.name, entry.kind, 0)
                if reason is None and depth >= MAX_DEPTH:
                    reason = f"archive nested more than {MAX_DEPTH} levels deep; refused"
                if reason is not None:
                    run.add(entry.name, refused=reason)
                    continue
                if run.count:
                    out.append(run)
                    run = MemberUnit(container, label, "tar")
                inner = f"{label}:{entry.name}"
                compression = compression_of(pread(fd, 8, base + entry.offset))
                if compression is not None:
                    out.append(StreamUnit(container, inner, base + entry.offset, entry.size, compression, depth + 1,
                                          extensions))
                else:
                    _walk_tar(fd, container, base + entry.offset, entry.size, inner, depth + 1, out, extensions,
                              inner_archives)
            elif is_image_name(entry.name, extensions) and not is_hidden(entry.name):
                run.add(entry.name, base + entry.offset, entry.size, refusal(entry.name, entry.kind, entry.size))
            elif inner_archives is not None and entry.kind == "file" and is_zip_or_parquet(entry.name) \
                    and not is_hidden(entry.name):
                inner_archives.append((label, entry.name))  # a zip or Parquet file inside a tar: said, not read
    except TarError as exc:
        run.add("", refused=f"{exc}; the rest of this archive is not read")
    except OSError as exc:
        run.add("", refused=f"unreadable archive: {exc.strerror or exc}; the rest of it is not read")
    if run.count:
        out.append(run)


# ------------------------------------------------------------------------------------------ reading
_fds: dict[str, int] = {}


def _fd(path: str) -> int:
    """An open descriptor of ``path``, kept per process (``pread`` needs no position: safe after fork)."""
    fd = _fds.get(path)
    if fd is None:
        if len(_fds) >= _MAX_OPEN:
            os.close(_fds.pop(next(iter(_fds))))
        fd = _fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    return fd


def read_item(unit: MemberUnit, i: int) -> bytes:
    """The bytes of item ``i`` of an archive unit; :class:`BadImage` (with the reason) when it cannot be read."""
    reason = unit.refused.get(i)
    if reason is not None:
        raise BadImage(reason)
    try:
        if "://" in unit.container:
            from .storelist import random_file

            fd = random_file(unit.container)
        else:
            fd = _fd(unit.container)
        if unit.kind == "zip":
            from .ziplist import read_member

            return read_member(fd, unit.zip_members[i])
        if unit.kind == "tfrecord":
            from .tfrecord import read_record

            return read_record(fd, unit, i)
        size = unit.sizes[i]
        data = pread(fd, size, unit.offsets[i])
    except OSError as exc:
        raise BadImage(f"unreadable archive: {exc.strerror or exc}") from None
    if len(data) < size:
        raise BadImage(f"truncated archive: {len(data)} of the member's {size} bytes are there")
    return data
