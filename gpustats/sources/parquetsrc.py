"""Parquet files with one encoded image per row (Hugging Face datasets' layout), read with pyarrow.

The image column is a ``binary`` column or a struct with a binary ``bytes`` field (the Hugging
Face ``Image`` feature: ``{"bytes": ..., "path": ...}``). :func:`inspect` finds it: the column
named by ``column=`` (``--column``), else the only candidate, else the only struct candidate; any
other case is a one-line error naming the candidates. Row groups are the unit of work (decode
workers read one each, ``torchrun`` ranks share them) and rows are read a batch at a time, so a
row group never has to fit in memory. pyarrow is an optional extra: ``pip install 'gpustats[parquet]'``.

A row without image bytes (null, or a struct holding only a ``path``) is a bad item with that
reason; a row group that pyarrow cannot read makes each of its rows bad with pyarrow's message.

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
from typing import Any, Iterator, NamedTuple

from .errors import SourceError
from .tarindex import MAX_MEMBER_BYTES

__all__ = ["ParquetLayout", "inspect", "iter_values", "read_rows", "require_pyarrow"]

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


def _open(path: str) -> Any:
    """One ``ParquetFile`` per file and process (decode workers keep theirs; a forked one opens its own)."""
    return _open_in(path, os.getpid())


@functools.lru_cache(maxsize=8)
def _open_in(path: str, pid: int) -> Any:
    return require_pyarrow().ParquetFile(_source(path))


@functools.lru_cache(maxsize=2)
def _group_column(path: str, column: str, group: int, pid: int) -> Any:
    """One row group's image column (random access reads rows of the same group one after another)."""
    table_column = _open(path).read_row_group(group, columns=[column], use_threads=False).column(0)
    return table_column.combine_chunks() if hasattr(table_column, "combine_chunks") else table_column


def _values(table_column: Any, struct: bool) -> list[Value]:
    if not struct:
        return [(v, None) if v is not None else (None, "no image bytes in the row (null)")
                for v in table_column.to_pylist()]
    data = table_column.field("bytes").to_pylist()
    paths = (table_column.field("path").to_pylist() if table_column.type.get_field_index("path") >= 0
             else [None] * len(data))
    valid = table_column.is_valid().to_pylist()
    out = []
    for v, p, ok in zip(data, paths, valid):
        if ok and v is not None:
            out.append((v, None))
        elif ok and p is not None:
            out.append((None, f"no image bytes in the row (only the path {p!r}, which is not read)"))
        else:
            out.append((None, "no image bytes in the row (null)"))
    return out


def _checked(values: list[Value]) -> list[Value]:
    return [(None, f"too large: value of {len(v)} bytes > {MAX_MEMBER_BYTES} bytes; refused")
            if v is not None and len(v) > MAX_MEMBER_BYTES else (v, r) for v, r in values]


def iter_values(path: str, layout: ParquetLayout, group: int, *, batch_rows: int) -> Iterator[list[Value]]:
    """The image values of row group ``group``, ``batch_rows`` rows at a time: ``(bytes, None)`` or
    ``(None, reason)`` per row. A read error makes every row not yet returned bad, with pyarrow's message."""
    rows, done = layout.row_groups[group], 0
    try:
        batches = _open(path).iter_batches(batch_size=batch_rows, row_groups=[group], columns=[layout.column],
                                           use_threads=False)
        for batch in batches:
            values = _checked(_values(batch.column(0), layout.struct))
            done += len(values)
            yield values
    except Exception as exc:  # a damaged page: the rest of the group is bad, nothing half-counted
        _reraise_remote(exc)
        reason = f"unreadable Parquet row group {group} ({type(exc).__name__}: {str(exc)[:200]})"
        while done < rows:
            n = min(batch_rows, rows - done)
            done += n
            yield [(None, reason)] * n


def read_rows(path: str, layout: ParquetLayout, group: int, rows: list[int]) -> list[Value]:
    """The values of some rows of one row group (random access: the last two groups' columns are kept)."""
    try:
        column = _group_column(path, layout.column, group, os.getpid())
        return _checked(_values(column.take(rows), layout.struct))
    except Exception as exc:
        _reraise_remote(exc)
        return [(None, f"unreadable Parquet row group {group} ({type(exc).__name__}: {str(exc)[:200]})")] * len(rows)
