"""One rank's share of a run over :mod:`.units`: what the engine iterates, names and checkpoints.

``torchrun`` ranks share units (``units[rank::world]``: files, archives and the tars inside them,
Parquet row groups, compressed tars). A rank's items are numbered in order (the index a checkpoint
stores); runs of units with known items form :class:`~.segment.Segment`\\ s (decoded by
DataLoader workers that read what they decode: :mod:`.reduce_tasks`), and each compressed tar is read
by this process and decoded by a pool (:mod:`.streamed`). Both give
:class:`~.reduce_tasks.BatchResult`\\ s in item order; :meth:`Plan.byte_batches` gives the items'
bytes for the GPU decoder instead.

A run of files only is identified by :func:`~gpustats.checkpoint.file_list_fingerprint`; a run with
archives by :func:`~.fingerprint.unit_fingerprint` of each unit (both record sizes and modification times).

>>> import tempfile
>>> from gpustats.sources.synthetic import make_tiny_folder
>>> from gpustats.sources.units import list_units
>>> root = tempfile.mkdtemp()
>>> _ = make_tiny_folder(root, 3)
>>> plan = Plan(list_units([root]))
>>> plan.total, plan.files_only, [(r.start, r.stop, r.images) for r in plan.cpu_results(
...     0, workers=0, batch_size=2, extras={"histogram": False, "covariance": False, "per_image": False},
...     decode_opts={"mode": "RGB"})]
(3, True, [(0, 2, 2), (2, 3, 1)])
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterator, Sequence

from .errors import BadImage
from .reduce_tasks import BatchResult, iter_reduced
from .segment import Segment
from .fingerprint import unit_fingerprint
from .units import StreamUnit, Unit, unit_count

__all__ = ["Plan"]


class Plan:
    """The units of rank ``rank`` of ``world`` (all of them for one process), cut into segments."""

    def __init__(self, units: Sequence[Unit], rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.units = list(units[rank::world])
        self.segments: list[Any] = []  # Segment | (order, StreamUnit)
        first = 0  # the rank's unit k is unit rank + k * world of the run: its order
        for k, unit in enumerate(self.units + [None]):
            if unit is None or isinstance(unit, StreamUnit):
                if k > first:
                    self.segments.append(Segment(self.units[first:k], range(rank + first * world, rank + k * world,
                                                                            world)))
                if unit is not None:
                    self.segments.append((rank + k * world, unit))
                first = k + 1
        self.streamed: dict[int, int] = {}  # segment number -> items of a compressed tar counted so far
        self.done: set[int] = set()  # segments read to their end
        self.counted: dict[int, int] = {}  # streams read to their end by an earlier run (a checkpoint's)
        self.known = sum(len(s) for s in self.segments if isinstance(s, Segment))
        self.all_known = sum(unit_count(u) or 0 for u in units)
        self.has_streams = any(isinstance(u, StreamUnit) for u in units)
        self.inner_archives: list[tuple[str, str]] = []  # (compressed tar, zip/Parquet member) met while streaming

    @property
    def files_only(self) -> bool:
        """Only image files (a folder run, as before archives were read)."""
        return all(isinstance(u, (str, os.PathLike)) for u in self.units)

    @property
    def files(self) -> list[str]:
        return [os.fspath(u) for u in self.units if isinstance(u, (str, os.PathLike))]

    @property
    def total(self) -> int | None:
        """This rank's items, or None while a compressed tar has not been read to its end."""
        streams = [k for k, s in enumerate(self.segments) if not isinstance(s, Segment)]
        return None if any(k not in self.done for k in streams) else self.known + sum(self.streamed.values())

    @property
    def items_so_far(self) -> int:
        """Items known so far (every known item plus those of compressed tars met so far)."""
        return self.known + sum(self.streamed.values())

    def tasks_at_most(self, batch_size: int) -> int | None:
        """The most tasks a CPU run of this plan hands to decode workers (``batch_size`` items, or a Parquet row
        group, a task), or None while compressed tars make it unknown."""
        if self.has_streams:
            return None
        return sum(len(s.tasks(0, None, batch_size)) for s in self.segments if isinstance(s, Segment))

    def fingerprint(self) -> str:
        """Identity of this rank's items for checkpoints (resolved paths or redacted URLs, sizes, modification
        times or ETags, member names)."""
        if self.files_only and not any(hasattr(u, "url") for u in self.units):  # remote files: below
            from ..checkpoint import file_list_fingerprint

            return file_list_fingerprint(self.files)
        digest = hashlib.sha256()
        for unit in self.units:
            unit_fingerprint(unit, digest)
        return "a2:" + digest.hexdigest()  # a1 (before modification times were recorded) is refused

    def orders_by_name(self) -> dict[str, list[int]]:
        """Name (files: realpath) -> order, for the bad items a checkpoint recorded (known items only)."""
        out: dict[str, list[int]] = {}
        for seg in (s for s in self.segments if isinstance(s, Segment)):
            for pos in range(len(seg)):
                name = seg.name(pos)
                is_file = isinstance(seg.units[seg.locate(pos)[0]], (str, os.PathLike))
                out[os.path.realpath(name) if is_file else name] = seg.order(pos)
        return out

    # -------------------------------------------------------------------------------- iteration
    def _walk(self, start: int) -> Iterator[tuple[int, Any, int]]:
        """``(segment number, segment, its first index)`` from the segment holding ``start`` on."""
        self.done: set[int] = set()
        pos = 0
        for k, seg in enumerate(self.segments):
            if isinstance(seg, Segment):
                seg.offset = pos
                if start < pos + len(seg):
                    yield k, seg, pos
                pos += len(seg)
            elif k in self.counted and pos + self.counted[k] <= start:
                self.streamed[k] = self.counted[k]  # counted by the run that saved the checkpoint: not read again
                pos += self.counted[k]
            else:
                yield k, seg, pos  # a stream is read (and counted) even when start lies beyond it
                pos += self.streamed.get(k, 0)
            self.done.add(k)

    def streams_read(self) -> dict[str, int]:
        """Items of each stream read to its end (segment number -> count), for a checkpoint: a resumed run
        does not read them again (:meth:`resume_streams`)."""
        return {str(k): n for k, n in sorted(self.streamed.items()) if k in self.done}

    def resume_streams(self, counts: dict[str, int]) -> None:
        """Take the stream counts a checkpoint recorded (:meth:`streams_read`)."""
        streams = {k for k, s in enumerate(self.segments) if not isinstance(s, Segment)}
        self.counted = {int(k): n for k, n in counts.items() if int(k) in streams}
        self.streamed.update(self.counted)

    def cpu_results(self, start: int, *, workers: int, batch_size: int, extras: dict,
                    decode_opts: dict, small_tasks: bool = False) -> Iterator[BatchResult]:
        """The :class:`BatchResult` of every task from item ``start`` on, in item order (CPU decoding);
        ``small_tasks``: folder segments of small images go at least 256 files a task (see reduce_tasks)."""
        from .streamed import StreamPool, iter_stream_results

        pool = StreamPool(workers) if self.has_streams else None
        by_workers: set[int] = set()  # streams already read by shard_results
        try:
            for k, seg, first in self._walk(start):
                if isinstance(seg, Segment):
                    yield from iter_reduced(seg, workers=workers, batch_size=batch_size, start=max(0, start - first),
                                            small_tasks=small_tasks,
                                            **extras, **decode_opts)
                    continue
                if k in by_workers:
                    continue
                run = self._shard_run(k, workers)
                if run:
                    yield from self.shard_results(run, first, start, pool, batch_size, extras, decode_opts)
                    by_workers.update(run)
                    continue
                order, unit = seg
                yield from iter_stream_results(unit, first=first, skip=max(0, start - first), order=order, pool=pool,
                                               batch_size=batch_size, extras=extras, decode_opts=decode_opts,
                                               counted=lambda n, k=k: self.streamed.__setitem__(k, n),
                                               inner_archives=self.inner_archives)
        finally:
            if pool is not None:
                pool.close()

    def _shard_run(self, k: int, workers: int) -> list[int]:
        """The streams from segment ``k`` on, one after another, when there are at least ``2 * workers`` of
        them (shards: each worker then reads and decodes whole shards); else [] (one stream at a time, read
        here and decoded by the workers)."""
        run = []
        for j in range(k, len(self.segments)):
            seg = self.segments[j]
            if isinstance(seg, Segment) or hasattr(seg[1], "samples"):  # an iterable cannot go to a worker
                break
            run.append(j)
        return run if workers > 0 and len(run) >= 2 * workers else []

    def shard_results(self, run: list[int], first: int, start: int, pool: Any, batch_size: int, extras: dict,
                      decode_opts: dict) -> Iterator[BatchResult]:
        """The results of the streams ``run`` (segment numbers), each read and reduced whole by a decode
        worker (:func:`~.streamed.reduce_stream`: no bytes cross processes, this process only merges), in
        order; the first begins at item ``first``.

        ``start`` (a resumed run) lies inside the first: a checkpoint counts every stream whose results
        were all taken before its last batch (each is marked done here when the next result is asked for),
        so only the stream of that batch can be uncounted before ``start``; the others start at 0."""
        from .streamed import reduce_stream

        jobs = ((self.segments[k][1], max(0, start - first) if i == 0 else 0, self.segments[k][0], batch_size, extras,
                 decode_opts) for i, k in enumerate(run))
        pos = first
        for k, (results, n, found) in zip(run, pool.map(reduce_stream, jobs)):
            self.streamed[k] = n
            self.inner_archives.extend(found)
            for r in results:  # positions in the shard -> in the rank's order
                yield r._replace(start=r.start + pos, stop=r.stop + pos,
                                 bad=[b._replace(index=b.index + pos) for b in r.bad])
            self.done.add(k)  # its results all taken: a checkpoint may count it (streams_read)
            pos += n

    def byte_batches(self, start: int, batch_size: int) -> Iterator[tuple[int, int, list[tuple]]]:
        """``(first, stop, records)`` of ``batch_size`` items from ``start`` on, read in this process;
        a record is ``(index, name, order, source)`` with ``source`` a file path, the bytes or a BadImage."""
        from .streamed import byte_capped, iter_stream
        from .tarindex import max_member_bytes

        cap = max_member_bytes()  # items' bytes held at once, as for a CPU decode worker
        for k, seg, first in self._walk(start):
            if isinstance(seg, Segment):
                for task in seg.tasks(max(0, start - first), None, batch_size, rowgroups=False):
                    records = ((first + p, seg.name(p), seg.order(p), seg.source(p)) for p in range(*task[:2]))
                    for batch in byte_capped(records, batch_size, cap):
                        yield batch[0][0], batch[-1][0] + 1, batch
                continue
            order, unit = seg

            def stream(k=k, first=first, order=order, unit=unit) -> Iterator[tuple]:
                n = 0
                for n, (name, data, reason) in enumerate(iter_stream(unit, self.inner_archives), 1):
                    self.streamed[k] = n
                    if first + n - 1 >= start:
                        yield first + n - 1, name, [order, n - 1], data if reason is None else BadImage(reason)
                self.streamed[k] = n

            for batch in byte_capped(stream(), batch_size, cap):
                yield batch[0][0], batch[-1][0] + 1, batch
