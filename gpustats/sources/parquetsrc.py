"""Parquet files with one encoded image per row (Hugging Face datasets' layout), read with pyarrow.

The image column is a ``binary`` column or a struct with a binary ``bytes`` field (the Hugging
Face ``Image`` feature: ``{"bytes": ..., "path": ...}``). :func:`inspect` finds it: the column
named by ``column=`` (``--column``), else the only candidate, else the only struct candidate; any
other case is a one-line error naming the candidates. Row groups are the unit of work (decode
workers read one each, ``torchrun`` ranks share them) and rows are read a batch at a time, so a
row group never has to fit in memory. pyarrow is an optional extra: ``pip install 'gpustats[parquet]'``.

A row without image bytes (null, or a struct holding only a ``path``) is a bad item with that
reason; a row group that pyarrow cannot read makes each of its rows bad with pyarrow's message.

Memory is bounded by bytes (:func:`~.tarindex.worker_memory`): a row group whose image column is
larger uncompressed than half the per-worker budget (256 MiB by default; the metadata states it) is
refused unread, row by row; pyarrow decodes at most that many bytes of rows at a time (a value of a
dictionary-encoded column repeated in many rows is decoded row by row, not all at once:
:func:`_rows_per_read`), and the columns kept for random access are read as dictionaries (each
distinct value held once); a value over that size is refused from its length before it is copied;
and values are handed on in batches of at most that many bytes.

>>> import os, tempfile
>>> import pyarrow as pa, pyarrow.parquet as pq
>>> path = os.path.join(tempfile.mkdtemp(), "d.parquet")
>>> image = pa.array([{"bytes": b"1", "path": "a.png"}, {"bytes": None, "path": "b.png"}],
...                  pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
>>> pq.write_table(pa.table({"image": image, "label": [0, 1]}), path)
>>> layout = inspect(path)
>>> layout.column, layout.struct, layout.row_groups
('image', True, (2,))
>>> [v for chunk in iter_values(path, layout, 0, batch_rows=8) for v in chunk]
[(b'1', None), (None, "no image bytes in the row (only the path 'b.png', which is not read)")]
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Iterator, NamedTuple

from .errors import SourceError
from .tarindex import max_member_bytes, too_large

__all__ = ["ParquetLayout", "inspect", "iter_values", "read_rows", "rechunk", "require_pyarrow"]

Value = tuple  # (bytes | None, reason | None)


class ParquetLayout(NamedTuple):
    """Where the images are: the column, whether it is a struct, and the rows of each row group."""

    column: str
    struct: bool
    row_groups: tuple[int, ...]


def require_pyarrow() -> Any:
    """``pyarrow.parquet``, or a :class:`SourceError` saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SourceError(f"reading Parquet files needs pyarrow ({exc}); install it: pip install 'gpustats[parquet]'"
                          ) from None
    return pq


def _kind(field_type: Any) -> str | None:
    import pyarrow as pa

    def binary(t):
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or str(t) == "binary_view"

    if binary(field_type):
        return "binary"
    if pa.types.is_struct(field_type):
        index = field_type.get_field_index("bytes")
        if index >= 0 and binary(field_type.field(index).type):
            return "struct"
    return None


def _source(path: str) -> Any:
    """What pyarrow opens: the path, or for a remote URL a :class:`~.remote.RemoteFile` of its own (byte
    ranges, retried; one per ``ParquetFile``, as a file object has a position)."""
    if "://" not in path:
        return path
    from .remote import RemoteFile
    from .storelist import random_file

    return RemoteFile(path, random_file(path).size)


def _reraise_remote(exc: BaseException) -> None:
    """A network failure (``RemoteReadError``, possibly re-raised by pyarrow) stops the run: never a bad row."""
    from .remote import RemoteReadError

    if isinstance(exc, RemoteReadError):
        raise exc
    if isinstance(exc.__context__, RemoteReadError):
        raise exc.__context__


def inspect(path: str, column: str | None = None, label: str | None = None) -> ParquetLayout:
    """The image column and row groups of the Parquet file at ``path`` (a path or a remote URL; ``label``:
    its name in messages); :class:`SourceError` if there is none."""
    pq = require_pyarrow()
    source, path = path, path if label is None else label
    try:
        parquet = pq.ParquetFile(_source(source))
        schema = parquet.schema_arrow
        groups = tuple(parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups))
    except Exception as exc:  # ArrowInvalid, OSError, ...: a damaged or foreign file
        from .remote import RemoteReadError

        cause = exc if isinstance(exc, RemoteReadError) else exc.__context__
        if isinstance(cause, RemoteReadError):  # the store failed (its message names the object)
            raise SourceError(str(cause)) from None
        raise SourceError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    kinds = {f.name: _kind(f.type) for f in schema}
    names = ", ".join(f"{f.name} ({f.type})" for f in schema)
    if column is not None:
        if column not in kinds:
            raise SourceError(f"{path}: no column {column!r}; its columns: {names}")
        if kinds[column] is None:
            raise SourceError(f"{path}: column {column!r} is {schema.field(column).type}, not encoded images "
                              "(binary, or a struct with a binary 'bytes' field)")
        return ParquetLayout(column, kinds[column] == "struct", groups)
    candidates = [name for name, kind in kinds.items() if kind]
    structs = [name for name in candidates if kinds[name] == "struct"]
    if len(candidates) == 1 or len(structs) == 1:
        chosen = candidates[0] if len(candidates) == 1 else structs[0]
        return ParquetLayout(chosen, kinds[chosen] == "struct", groups)
    if not candidates:
        raise SourceError(f"{path}: no image column (binary, or a struct with a binary 'bytes' field); its "
                          f"columns: {names}")
    raise SourceError(f"{path}: several columns may hold images ({', '.join(candidates)}); pass --column NAME "
                      "(column= in Python)")


def _leaf(layout: ParquetLayout) -> str:
    """The Parquet leaf column holding the image bytes (``image`` or ``image.bytes``)."""
    return f"{layout.column}.bytes" if layout.struct else layout.column


def _chunk_size(path: str, layout: ParquetLayout, group: int) -> int:
    """Uncompressed bytes of row group ``group``'s image column, from the metadata."""
    meta = _open(path).metadata.row_group(group)
    leaf = _leaf(layout)
    for i in range(meta.num_columns):
        column = meta.column(i)
        if column.path_in_schema == leaf:
            return int(column.total_uncompressed_size)
    return 0


def group_refusal(path: str, layout: ParquetLayout, group: int) -> str | None:
    """Why row group ``group`` is not read (None: it is): its image column, as the metadata states it, is
    larger uncompressed than :func:`~.tarindex.max_member_bytes` (pyarrow holds a row group's column whole,
    2-3 times that while reading it)."""
    try:
        size = _chunk_size(path, layout, group)
    except Exception:  # unreadable metadata: reading the group says why
        return None
    if size > max_member_bytes():
        return too_large(size, f"row group {group}'s image column (uncompressed)")
    return None


def _open(path: str) -> Any:
    """One ``ParquetFile`` per file and process (decode workers keep theirs; a forked one opens its own)."""
    return _open_in(path, os.getpid())


@functools.lru_cache(maxsize=8)
def _open_in(path: str, pid: int, dictionary: str | None = None) -> Any:
    """``dictionary``: a leaf column read as a dictionary (each distinct value held once)."""
    if dictionary is None:
        return require_pyarrow().ParquetFile(_source(path))
    return require_pyarrow().ParquetFile(_source(path), read_dictionary=[dictionary])


def _rows_per_read(path: str, layout: ParquetLayout, group: int, batch_rows: int) -> int:
    """Rows pyarrow may decode at once in row group ``group`` so that they hold at most
    :func:`~.tarindex.max_member_bytes`: no value is larger than the image column's uncompressed size U
    (a dictionary-encoded value is in the dictionary page, a plain one in its data page), so
    ``cap // U`` rows at most. (A column of 12 rows repeating one 150 MiB dictionary value decodes to
    1.8 GB at once; one row at a time it holds 150 MiB.)"""
    return max(1, min(batch_rows, max_member_bytes() // max(_chunk_size(path, layout, group), 1)))


@functools.lru_cache(maxsize=2)
def _group_column(path: str, layout: ParquetLayout, group: int, pid: int) -> Any:
    """One row group's image column (random access reads rows of the same group one after another)."""
    # kept for the next rows, so read as a dictionary: a value repeated in many rows is held once (about
    # the column's uncompressed size, which group_refusal bounds); sequential reads (iter_values) need not
    table_column = _open_in(path, pid, _leaf(layout)).read_row_group(group, columns=[layout.column],
                                                                    use_threads=False).column(0)
    return table_column.combine_chunks() if hasattr(table_column, "combine_chunks") else table_column


def _lengths(array: Any) -> list:
    """Each row's byte length (None where null) of a binary or dictionary array, without copying a value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(array.type):
        return pc.binary_length(array.dictionary).take(array.indices).to_pylist()
    return pc.binary_length(array).to_pylist()


#: values up to this size are copied out of Arrow all at once (faster); larger ones one at a time
_SMALL_VALUE = 1 << 20


def _is_plain(array: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)


def _getter(array: Any) -> Any:
    """``row -> bytes`` for a binary (or dictionary of binary) array, copying each value once out of Arrow's
    buffers (``Scalar.as_py()`` holds a value twice on the way)."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_dictionary(array.type):
        values, indices = _getter(array.dictionary), array.indices.fill_null(0).to_numpy()
        return lambda i: values(int(indices[i]))
    large = pa.types.is_large_binary(array.type)
    if not (large or pa.types.is_binary(array.type)):
        return lambda i: array[i].as_py()
    _, offsets, data = array.buffers()[:3]
    offsets = np.frombuffer(offsets, np.int64 if large else np.int32)[array.offset:array.offset + len(array) + 1]
    view = memoryview(data if data is not None else b"")
    return lambda i: bytes(view[offsets[i]:offsets[i + 1]])


def _rows(table_column: Any, struct: bool) -> Iterator[tuple[int, Any, str | None]]:
    """Each row's ``(bytes it will hold, make, path)``: ``make()`` gives its ``(bytes, None)`` or ``(None,
    reason)``, so that a caller can cut batches by bytes before any value is copied out of Arrow; ``path``
    is the Hugging Face ``path`` field (None without one). A value over
    :func:`~.tarindex.max_member_bytes` is refused from its length."""
    limit = max_member_bytes()
    if not struct:
        data, paths, valid = table_column, None, None
    else:
        data = table_column.field("bytes")
        paths = (table_column.field("path").to_pylist() if table_column.type.get_field_index("path") >= 0
                 else None)
        valid = table_column.is_valid().to_pylist()
    lengths = _lengths(data)
    if _is_plain(data) and all(n is None or n <= _SMALL_VALUE for n in lengths):
        listed = data.to_pylist()  # one C loop: cheaper for small values (to_pylist holds each twice a moment)
        value = listed.__getitem__
    else:  # a dictionary (each value decoded only when asked for), or a value to refuse
        value = _getter(data)
    for i, length in enumerate(lengths):
        ok = valid is None or valid[i]
        path = paths[i] if ok and paths is not None else None
        if ok and length is not None and length <= limit:
            yield length, lambda i=i: (value(i), None), path
        elif ok and length is not None:
            yield 0, lambda length=length: (None, too_large(length, "value")), path
        elif path is not None:
            yield 0, lambda p=path: (None, f"no image bytes in the row (only the path {p!r}, which is not read)"), None
        else:
            yield 0, lambda: (None, "no image bytes in the row (null)"), None


def _values(table_column: Any, struct: bool) -> list[Value]:
    return [make() for _, make, _ in _rows(table_column, struct)]


def iter_values(path: str, layout: ParquetLayout, group: int, *, batch_rows: int,
                paths: bool = False) -> Iterator[list[Value]]:
    """The image values of row group ``group``, at most ``batch_rows`` rows and half the per-worker budget of
    bytes at a time (:func:`~.tarindex.max_member_bytes`): ``(bytes, None)`` or ``(None, reason)`` per row
    (``paths=True``: a third element, the row's Hugging Face ``path`` or None, to name a bad row by it).
    A row group whose image column is too large is refused unread (:func:`group_refusal`); a read error
    makes every row not yet returned bad, with pyarrow's message."""
    rows, done = layout.row_groups[group], 0
    refused = group_refusal(path, layout, group)
    if refused is not None:
        while done < rows:
            n = min(batch_rows, rows - done)
            done += n
            yield [(None, refused, None) if paths else (None, refused)] * n
        return
    cap = max_member_bytes()
    try:
        batches = _open(path).iter_batches(batch_size=_rows_per_read(path, layout, group, batch_rows),
                                           row_groups=[group], columns=[layout.column], use_threads=False)
        for batch in batches:
            chunk: list[Value] = []
            held = 0
            for size, make, row_path in _rows(batch.column(0), layout.struct):
                if chunk and held + size > cap:  # cut before the value is copied out
                    done += len(chunk)
                    yield chunk
                    chunk, held = [], 0
                chunk.append((*make(), row_path) if paths else make())
                held += size
            done += len(chunk)
            if chunk:
                yield chunk
            chunk = batch = None
    except Exception as exc:  # a damaged page: the rest of the group is bad, nothing half-counted
        _reraise_remote(exc)
        reason = f"unreadable Parquet row group {group} ({type(exc).__name__}: {str(exc)[:200]})"
        while done < rows:
            n = min(batch_rows, rows - done)
            done += n
            yield [(None, reason, None) if paths else (None, reason)] * n


def read_rows(path: str, layout: ParquetLayout, group: int, rows: list[int]) -> list[Value]:
    """The values of some rows of one row group (random access: the last two groups' columns are kept)."""
    refused = group_refusal(path, layout, group)
    if refused is not None:
        return [(None, refused)] * len(rows)
    try:
        column = _group_column(path, layout, group, os.getpid())
        return _values(column.take(rows), layout.struct)
    except Exception as exc:
        _reraise_remote(exc)
        return [(None, f"unreadable Parquet row group {group} ({type(exc).__name__}: {str(exc)[:200]})")] * len(rows)


def rechunk(chunks: Iterable[list], skip: int, take: int, size: int, cap: int | None = None) -> Iterator[list]:
    """Lists of ``size`` ``(bytes | None, reason)`` values (fewer at the end, or where ``cap`` bytes would be
    passed: a value over ``cap`` goes alone) after dropping ``skip`` and keeping ``take``."""
    pending: list = []
    held = 0
    for chunk in chunks:
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        chunk = chunk[:take]
        take -= len(chunk)
        for value in chunk:
            nbytes = 0 if value[0] is None else len(value[0])
            if pending and cap is not None and held + nbytes > cap:
                yield pending
                pending, held = [], 0
            pending.append(value)
            value = None
            held += nbytes
            if len(pending) == size:
                yield pending
                pending, held = [], 0
        chunk = None
        if take <= 0:
            break
    if pending:
        yield pending
