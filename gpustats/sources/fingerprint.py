"""A checkpoint's identity of the units a run reads (:func:`unit_fingerprint`): what must not have changed
for a resumed run to reuse what it counted (docs/cli.md, "Checkpoints", says what is checked)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .units import MemberUnit, RowGroupUnit, Unit

__all__ = ["unit_fingerprint"]


def unit_fingerprint(unit: Unit, digest: Any) -> None:
    """Feed ``unit``'s identity into ``digest`` (hashlib): the archive resolved, its size and modification time
    (``st_mtime_ns``), each item's name and size, so that a checkpoint resumes only the same, unchanged items.
    Files: resolved path, size and modification time."""
    def stat_of(path: str) -> str:
        try:
            info = os.stat(path)
        except OSError:
            return "-1\0-1"
        return f"{info.st_size}\0{info.st_mtime_ns}"

    identity = getattr(unit, "identity", None)
    if callable(identity):  # an iterable of samples (sources.samples)
        digest.update(f"{type(unit).__name__}\0{identity()}\n".encode("utf-8", "surrogateescape"))
        return
    remote = getattr(unit, "url", None) if isinstance(unit, str) else unit.container if "://" in getattr(
        unit, "container", "") else None
    if remote is not None:  # an object of a store: its redacted URL, size and ETag (sources.remote)
        from .remote import redact
        from .storelist import identity

        real, size, shown = identity(remote), "", len(redact(remote))
    elif isinstance(unit, (str, os.PathLike)):
        text = os.path.realpath(unit)
        digest.update(f"f\0{text}\0{stat_of(text)}\n".encode("utf-8", "surrogateescape"))
        return
    else:
        real = os.path.realpath(unit.container)
        size, shown = stat_of(real), len(unit.container)
    if isinstance(unit, str):
        digest.update(f"f\0{real}\n".encode("utf-8", "surrogateescape"))
        return
    head = f"{type(unit).__name__}\0{real}\0{size}\0{unit.label[shown:]}\0"
    if isinstance(unit, MemberUnit):
        names = "\0".join(unit.names).encode("utf-8", "surrogateescape")
        digest.update(head.encode("utf-8", "surrogateescape") + hashlib.sha256(names).digest()
                      + unit.sizes.tobytes() + repr(sorted(unit.refused)).encode() + b"\n")
    elif isinstance(unit, RowGroupUnit):
        digest.update(f"{head}{unit.layout.column}\0{unit.group}\0{unit.count}\n".encode("utf-8", "surrogateescape"))
    else:
        digest.update(f"{head}{unit.base}\0{unit.size}\n".encode("utf-8", "surrogateescape"))
