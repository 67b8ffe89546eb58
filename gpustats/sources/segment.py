"""A run of units whose items are known (files, archive members, Parquet rows): positions, names,
the order of bad items across ranks, reading one item, and the cut into tasks.

A :class:`Segment` numbers its items ``0 .. len-1``; ``offset`` places them in the rank's order
(``offset + position`` is the index a checkpoint stores). Tasks, what one decode worker does at a
time, are cut from the start position (a run's first position, or where a checkpoint resumes):

* items of files and archive members: every ``batch_size`` items from the start (a task may span
  units: a batch of a folder spans its sub-folders too);
* a Parquet row group: one task (its image column is read once, ``batch_size`` rows at a time),
  from the start position when that lies inside it.

So a resumed run cuts exactly the tasks the uninterrupted run would have cut after that point
(a checkpoint is written only between tasks).

>>> seg = Segment.of_files(["a.png", "b.png", "c.png"])
>>> [tuple(t) for t in seg.tasks(1, None, 2)]
[(1, 3, False)]
>>> seg.name(2), seg.order(2)
('c.png', [2, 0])
"""

from __future__ import annotations

import array
import bisect
import itertools
import os
from typing import Any, NamedTuple, Sequence

from .errors import BadImage
from .units import MemberUnit, RowGroupUnit, Unit, read_item, unit_count

__all__ = ["Segment", "Task"]


class Task(NamedTuple):
    """Positions ``first .. stop-1`` of a segment; ``rowgroup``: they are (part of) one Parquet row group."""

    first: int
    stop: int
    rowgroup: bool


class Segment:
    """Units with known item counts, one after another; ``orders[k]`` is unit ``k``'s index among all
    units of the run (every rank's), which orders bad items across ranks as one process lists them."""

    def __init__(self, units: Sequence[Unit], orders: Sequence[int], offset: int = 0):
        self.units, self.orders, self.offset = list(units), orders, offset
        counts = [unit_count(unit) for unit in self.units]
        self.has_rowgroups = any(isinstance(unit, RowGroupUnit) for unit in self.units)
        self.files_only = all(n == 1 for n in counts)
        if self.files_only:  # files: unit k is item k (a folder of a million files stays small)
            self.starts: Sequence[int] = range(len(counts))
        else:
            self.starts = array.array("q", itertools.accumulate([0] + counts[:-1]))
        self.total = sum(counts)
        # units of a remote store (sources.remote): a task's items are fetched concurrently (records())
        self.remote = any("://" in (unit if isinstance(unit, str) else getattr(unit, "container", ""))
                          for unit in self.units)

    @classmethod
    def of_files(cls, files: Sequence[str | os.PathLike[str]], offset: int = 0) -> "Segment":
        return cls([os.fspath(f) for f in files], range(len(files)), offset)

    def __len__(self) -> int:
        return self.total

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("remote", False)

    def locate(self, pos: int) -> tuple[int, int]:
        """(unit number, position inside the unit) of ``pos``."""
        if self.files_only:
            return pos, 0
        k = bisect.bisect_right(self.starts, pos) - 1
        return k, pos - self.starts[k]

    def name(self, pos: int) -> str:
        k, local = self.locate(pos)
        unit = self.units[k]
        return unit if isinstance(unit, str) else os.fspath(unit) if isinstance(unit, os.PathLike) else \
            unit.item_name(local)

    def order(self, pos: int) -> list[int]:
        k, local = self.locate(pos)
        return [self.orders[k], local]

    def record(self, pos: int) -> tuple[str, list[int], Any]:
        """``(name, order, source)`` of ``pos``: :meth:`name`, :meth:`order` and :meth:`source` in one lookup."""
        k, local = self.locate(pos)
        unit = self.units[k]
        if isinstance(unit, str) and not hasattr(unit, "url"):
            return unit, [self.orders[k], local], unit
        return self.name(pos), [self.orders[k], local], self.source(pos)

    def records(self, first: int, stop: int) -> Any:
        """:meth:`record` of positions ``first .. stop-1`` in order; a remote store's items are fetched
        concurrently (one request's latency per task, not per item), local ones read as they are asked."""
        if not self.remote:
            return (self.record(pos) for pos in range(first, stop))
        from .remote import prefetch

        return prefetch([lambda pos=pos: self.record(pos) for pos in range(first, stop)])

    def source(self, pos: int) -> Any:
        """What decoding reads: a file path (``str``), the item's ``bytes``, or a :class:`BadImage`."""
        k, local = self.locate(pos)
        unit = self.units[k]
        if hasattr(unit, "url"):  # a remote image file (sources.remote.RemotePath): its bytes
            from .storelist import read_object

            return read_object(unit)
        if isinstance(unit, (str, os.PathLike)):
            return os.fspath(unit)
        try:
            if isinstance(unit, MemberUnit):
                return read_item(unit, local)
            from .parquetsrc import read_rows

            ((value, reason),) = read_rows(unit.container, unit.layout, unit.group, [local])
            return value if reason is None else BadImage(reason)
        except BadImage as exc:
            return exc

    def rowgroup(self, pos: int) -> tuple[RowGroupUnit, int] | None:
        k, local = self.locate(pos)
        unit = self.units[k]
        return (unit, local) if isinstance(unit, RowGroupUnit) else None

    def tasks(self, start: int, stop: int | None, batch_size: int, rowgroups: bool = True) -> list[Task]:
        """The tasks of positions ``start .. stop-1`` (module docstring); ``rowgroups=False`` cuts Parquet
        rows like any items (the GPU decoder reads each task's rows in this process)."""
        stop = self.total if stop is None else min(stop, self.total)
        tasks, pos = [], start
        while pos < stop:
            k, local = self.locate(pos)
            unit = self.units[k]
            if rowgroups and isinstance(unit, RowGroupUnit):
                end = min(stop, self.starts[k] + unit.count)
                tasks.append(Task(pos, end, True))
                pos = end
                continue
            end = min(stop, pos + batch_size)
            if rowgroups and self.has_rowgroups:  # an item run ends where a row group begins
                while k + 1 < len(self.units) and self.starts[k + 1] < end:
                    k += 1
                    if isinstance(self.units[k], RowGroupUnit):
                        end = self.starts[k]
                        break
            tasks.append(Task(pos, end, False))
            pos = end
        return tasks
