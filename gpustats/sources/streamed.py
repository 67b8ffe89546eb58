"""Compressed tars (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): read once, from start to end.

A compressed tar has no random access, and listing its members would mean decompressing it
twice. So this process decompresses it once, member after member, and hands ``batch_size``
members at a time (their encoded bytes: small beside the pixels), and never more than half the
per-worker budget of bytes (:func:`~.tarindex.worker_memory`, 512 MiB by default, so 256 MiB a batch:
:func:`byte_capped`), to decode workers, which decode and reduce them
(:func:`~gpustats.sources.reduce_tasks.reduce_records`) and send back exact states. Results come back in
member order, at most ``2 * workers`` batches in flight (one at a time with ``workers=0``), so what is
held is bounded by bytes, not by member counts: at most the budget per worker. Tars inside it are read as nested archives, in place (:data:`~.tarindex.MAX_DEPTH`).

Items are counted as they stream: the n-th image member (or refused member, or problem) is item
``first + n``. A resumed run re-reads the members before its checkpoint without decoding them.

Many streams one after another (WebDataset shards, in a store or compressed; at least two per
worker) go to the workers whole instead (:func:`reduce_stream`, :meth:`.plan.Plan.shard_results`):
each worker reads, decodes and reduces a shard and sends back its batches' states, so this process
neither parses the shards nor copies their bytes to the workers; the results are merged in order.

>>> import io, os, tarfile, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "s.tar.gz")
>>> with tarfile.open(path, "w:gz") as tar:
...     for name in ["a.jpg", "a.cls"]:
...         info = tarfile.TarInfo(name); info.size = 3; tar.addfile(info, io.BytesIO(b"abc"))
>>> from gpustats.sources.units import list_units
>>> (unit,) = list_units([path])
>>> [(name[len(path):], data, reason) for name, data, reason in iter_stream(unit)]
[(':a.jpg', b'abc', None)]
"""

from __future__ import annotations

import collections
import lzma
import multiprocessing
import signal
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from .listing import is_image_name
from .reduce_tasks import BatchResult, _start_method, prefer_forksafe_threads, reduce_records
from .tarindex import (MAX_DEPTH, LimitedFile, SeqReader, TarError, compression_of, is_hidden, is_tar_name,
                       iter_entries, max_member_bytes, open_decompressed, refusal)
from .units import StreamUnit, is_zip_or_parquet

__all__ = ["StreamPool", "byte_capped", "iter_stream", "iter_stream_results", "reduce_stream"]

Member = tuple  # (name, bytes | None, reason | None)
#: bytes read after a compressed tar's end-of-archive blocks, to reach the stream's own checksum
_DRAIN_LIMIT = 1 << 20


class _Prepended:
    """``head`` followed by the rest of ``fh`` (the first bytes were read to sniff the compression)."""

    def __init__(self, head: bytes, fh: Any):
        self.head, self.fh = head, fh

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data = self.head if n is None or n < 0 or n >= len(self.head) else self.head[:n]
            self.head = self.head[len(data):]
            if n is None or n < 0:
                return data + self.fh.read()
            return data if len(data) == n else data + self.fh.read(n - len(data))
        return self.fh.read(n)

    def readable(self) -> bool:
        return True


def iter_stream(unit: StreamUnit, inner_archives: list | None = None) -> Iterator[Member]:
    """``(name, bytes, None)`` for each image member of the compressed tar, ``(name, None, reason)`` for a
    refused member or a problem (named after the archive; what follows it is not read), in order;
    ``inner_archives`` receives ``(archive, member)`` of each zip or Parquet file inside it (not read).
    A remote tar (any compression) and TFRecord shards (:mod:`.tfrecord`) are streams too; a remote
    stream that cannot be read raises :class:`~.remote.RemoteReadError` (never a bad item). An iterable of
    samples (:mod:`.samples`) gives its samples' images."""
    if hasattr(unit, "samples"):
        yield from unit.samples()
        return
    if "://" in unit.container:  # sources.remote: byte ranges in order, the compression found from the data
        from .remote import RemoteStream

        stream = RemoteStream(unit.container, unit.base, unit.base + unit.size, unit.label)
        try:
            head = stream.read(8)
            yield from _stream_unit(_Prepended(head, stream), compression_of(head), unit, inner_archives)
        finally:
            stream.close()
        return
    try:
        fh = open(unit.container, "rb")
    except OSError as exc:
        yield unit.label, None, f"unreadable archive: {exc.strerror or exc}"
        return
    with fh:
        fh.seek(unit.base)
        yield from _stream_unit(LimitedFile(fh, unit.size), unit.compression, unit, inner_archives)


def _stream_unit(fileobj: Any, compression: str | None, unit: StreamUnit, inner_archives: list | None) -> Iterator[Member]:
    feature = getattr(unit, "feature", False)
    if feature is False:
        yield from _stream_tar(fileobj, compression, unit.label, unit.depth, unit.extensions, inner_archives)
        return
    from .tfrecord import iter_records

    try:
        yield from iter_records(SeqReader(open_decompressed(fileobj, compression)), unit.label, feature)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        yield unit.label, None, (f"corrupt or truncated compressed data ({type(exc).__name__}: {exc}); the rest of "
                                 "this shard is not read")


def _stream_tar(fileobj: Any, compression: str | None, label: str, depth: int,
                extensions: tuple[str, ...], inner_archives: list | None = None) -> Iterator[Member]:
    try:
        reader = SeqReader(open_decompressed(fileobj, compression))
        for entry in iter_entries(reader):
            name = f"{label}:{entry.name}"
            if is_hidden(entry.name):
                continue
            if is_tar_name(entry.name) and entry.kind == "file":
                reason = refusal(entry.name, entry.kind, 0)
                if reason is None and depth >= MAX_DEPTH:
                    reason = f"archive nested more than {MAX_DEPTH} levels deep; refused"
                if reason is not None:
                    yield name, None, reason
                    continue
                member = LimitedFile(reader, entry.size)
                head = member.read(8)
                yield from _stream_tar(_Prepended(head, member), compression_of(head), name, depth + 1, extensions,
                                       inner_archives)
            elif is_image_name(entry.name, extensions):
                reason = refusal(entry.name, entry.kind, entry.size)
                if reason is not None:
                    yield name, None, reason
                    continue
                data = reader.read(entry.size)
                if len(data) < entry.size:
                    yield name, None, f"truncated archive: {len(data)} of the member's {entry.size} bytes are there"
                    return
                yield name, data, None
                data = None  # not held while the next member is read (memory is bounded by bytes)
            elif inner_archives is not None and entry.kind == "file" and is_zip_or_parquet(entry.name):
                inner_archives.append((label, entry.name))  # a zip or Parquet file inside a tar: said, not read
        if compression is not None:  # read to the end of the compressed stream: its checksum is checked there
            left = _DRAIN_LIMIT
            while left > 0 and (chunk := reader.read(min(left, 1 << 16))):
                left -= len(chunk)
    except TarError as exc:
        yield label, None, f"{exc}; the rest of this archive is not read"
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        yield label, None, (f"corrupt or truncated compressed data ({type(exc).__name__}: {exc}); the rest of this "
                            "archive is not read")


def _worker_init() -> None:
    """Decode workers: Ctrl-C is the main process's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StreamPool:
    """Decode worker processes fed with bytes, results in order (``workers=0``: this process)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            prefer_forksafe_threads()
            context = multiprocessing.get_context(_start_method())
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init)
        return self._executor

    def map(self, fn: Callable[..., BatchResult], jobs: Iterator[tuple]) -> Iterator[BatchResult]:
        """``fn(*job)`` for each job, in order; the next jobs are read only as results come back."""
        if self.workers == 0:
            for job in jobs:
                result = fn(*job)
                job = None  # the batch's bytes are not held while the next batch is read
                yield result
            return
        pending: collections.deque = collections.deque()
        try:
            for job in jobs:
                pending.append(self._pool().submit(fn, *job))
                job = None
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def close(self, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None


def reduce_stream(unit: StreamUnit, skip: int, order: int, batch_size: int, extras: dict,
                  decode_opts: dict) -> tuple[list[BatchResult], int, list]:
    """A whole stream read, decoded and reduced in one process (a decode worker given a shard): the
    results of its batches of at most ``batch_size`` items and the per-worker byte budget
    (:func:`byte_capped`) after the first ``skip`` (positions in the stream), its number of items, and
    ``(archive, member)`` of the zip or Parquet files met inside it (not read)."""
    from .errors import BadImage
    from .tarindex import max_member_bytes

    inner_archives: list = []
    count = [0]

    def records() -> Iterator[tuple]:
        for n, (name, data, reason) in enumerate(iter_stream(unit, inner_archives), 1):
            count[0] = n
            if n > skip:
                yield n - 1, name, [order, n - 1], data if reason is None else BadImage(reason)
            data = None

    results = [reduce_records(batch[0][0], batch[-1][0] + 1, batch, extras, decode_opts)
               for batch in byte_capped(records(), batch_size, max_member_bytes())]
    return results, count[0], inner_archives


def iter_stream_results(unit: StreamUnit, *, first: int, skip: int, order: int, pool: StreamPool, batch_size: int,
                        extras: dict, decode_opts: dict, counted: Callable[[int], None],
                        inner_archives: list | None = None) -> Iterator[BatchResult]:
    """The :class:`BatchResult` of every batch of the compressed tar ``unit``, whose first item is ``first``
    in the rank's order; ``skip`` items are read past without decoding (a resumed run); ``counted(n)``
    learns the number of items read so far (the total once the stream ends)."""
    from .errors import BadImage

    def jobs() -> Iterator[tuple]:
        for batch in byte_capped(records(), batch_size, max_member_bytes()):
            job = batch[0][0], batch[-1][0] + 1, batch, extras, decode_opts
            batch = None
            yield job
            job = None  # not held while the next batch is read

    def records() -> Iterator[tuple]:
        n = 0
        for n, (name, data, reason) in enumerate(iter_stream(unit, inner_archives), 1):
            counted(n)
            if n > skip:
                yield first + n - 1, name, [order, n - 1], data if reason is None else BadImage(reason)
            data = None
        counted(n)

    yield from pool.map(reduce_records, jobs())


def byte_capped(records: Iterable[tuple], batch_size: int, cap: int) -> Iterator[list]:
    """``(index, name, order, source)`` records in lists of at most ``batch_size`` records and ``cap`` bytes
    of ``bytes`` sources (a record of more than ``cap`` bytes goes alone): what bounds a batch in flight."""
    batch: list = []
    held = 0
    for record in records:
        size = len(record[3]) if isinstance(record[3], (bytes, bytearray)) else 0
        if batch and held + size > cap:
            yield batch
            batch, held = [], 0
        batch.append(record)
        record = None  # the batch holds it: nothing else keeps a member alive while the next one is read
        held += size
        if len(batch) == batch_size:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch
