"""Compressed tars (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``): read once, from start to end.

A compressed tar has no random access, and listing its members would mean decompressing it
twice. So this process decompresses it once, member after member, and hands ``batch_size``
members at a time (their encoded bytes: small beside the pixels) to decode workers, which decode
and reduce them (:func:`~gpustats.sources.mapside.reduce_records`) and send back exact states.
Results come back in member order, at most ``2 * workers`` batches in flight, so memory stays
bounded. Tars inside it are read as nested archives, in place (:data:`~.tarindex.MAX_DEPTH`).

Items are counted as they stream: the n-th image member (or refused member, or problem) is item
``first + n``. A resumed run re-reads the members before its checkpoint without decoding them.

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
from typing import Any, Callable, Iterator

from .listing import is_image_name
from .mapside import BatchResult, _start_method, prefer_forksafe_threads, reduce_records
from .tarindex import (MAX_DEPTH, LimitedFile, SeqReader, TarError, compression_of, is_hidden, is_tar_name,
                       iter_entries, open_decompressed, refusal)
from .units import StreamUnit

__all__ = ["StreamPool", "iter_stream", "iter_stream_results"]

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


def iter_stream(unit: StreamUnit) -> Iterator[Member]:
    """``(name, bytes, None)`` for each image member of the compressed tar, ``(name, None, reason)`` for a
    refused member or a problem (named after the archive; what follows it is not read), in order."""
    try:
        fh = open(unit.container, "rb")
    except OSError as exc:
        yield unit.label, None, f"unreadable archive: {exc.strerror or exc}"
        return
    with fh:
        fh.seek(unit.base)
        yield from _stream_tar(LimitedFile(fh, unit.size), unit.compression, unit.label, unit.depth)


def _stream_tar(fileobj: Any, compression: str | None, label: str, depth: int) -> Iterator[Member]:
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
                yield from _stream_tar(_Prepended(head, member), compression_of(head), name, depth + 1)
            elif is_image_name(entry.name):
                reason = refusal(entry.name, entry.kind, entry.size)
                if reason is not None:
                    yield name, None, reason
                    continue
                data = reader.read(entry.size)
                if len(data) < entry.size:
                    yield name, None, f"truncated archive: {len(data)} of the member's {entry.size} bytes are there"
                    return
                yield name, data, None
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
                yield fn(*job)
            return
        pending: collections.deque = collections.deque()
        try:
            for job in jobs:
                pending.append(self._pool().submit(fn, *job))
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


def iter_stream_results(unit: StreamUnit, *, first: int, skip: int, order: int, pool: StreamPool, batch_size: int,
                        extras: dict, decode_opts: dict, counted: Callable[[int], None]) -> Iterator[BatchResult]:
    """The :class:`BatchResult` of every batch of the compressed tar ``unit``, whose first item is ``first``
    in the rank's order; ``skip`` items are read past without decoding (a resumed run); ``counted(n)``
    learns the number of items read so far (the total once the stream ends)."""
    def jobs() -> Iterator[tuple]:
        batch: list = []
        n = 0
        for n, (name, data, reason) in enumerate(iter_stream(unit), 1):
            counted(n)
            if n <= skip:
                continue
            from .errors import BadImage

            index = first + n - 1
            batch.append((index, name, [order, n - 1], data if reason is None else BadImage(reason)))
            if len(batch) == batch_size:
                yield batch[0][0], index + 1, batch, extras, decode_opts
                batch = []
        counted(n)
        if batch:
            yield batch[0][0], batch[-1][0] + 1, batch, extras, decode_opts

    yield from pool.map(reduce_records, jobs())
