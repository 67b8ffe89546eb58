"""Resumable runs for ``gpustats stats --checkpoint FILE``: atomic JSON snapshots of a run.

A checkpoint holds the exact accumulated :class:`~gpustats.stats.ChannelStats` (its exact JSON
form, floats as hex strings), the position in the sorted file list where the run goes on
(``next_index``), a fingerprint of that file list, the options that change the result, and the
bad files met so far. It is written atomically (temporary file in the same folder, flush,
``os.fsync``, ``os.replace``, then an fsync of the folder where the platform allows it), so a
run killed at any moment, even with SIGKILL, leaves either the previous checkpoint or the new
one, never a torn file.

Resuming loads the state into the accumulator and continues with the next file batch. File
batches are cut at ``start + k * batch_size`` and a checkpoint is only ever written after a whole
batch, so a resumed run reduces the same batches in the same order as an uninterrupted run: for
8-bit images (exact integer sums) the result is bitwise identical; the per-image aggregates
(``--per-image``, merged in float64) are too, because the batch size is part of the fingerprinted
options when they are asked for.

>>> import tempfile, os
>>> from gpustats.stats import ChannelStats
>>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
>>> ck = Checkpoint(state=ChannelStats.empty(), next_index=0, files_total=2, fingerprint="abc",
...                 options={"mode": "RGB"})
>>> write_checkpoint(path, ck)
>>> read_checkpoint(path).fingerprint
'abc'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Any, Sequence

from .stats import ChannelStats, StatsError

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "file_list_fingerprint",
           "rank_path", "read_checkpoint", "write_checkpoint", "check_compatible"]

CHECKPOINT_FORMAT = "gpustats.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run (other options/files, unreadable, not ours)."""


@dataclasses.dataclass
class Checkpoint:
    """Everything needed to go on with a run (and to refuse a run it does not belong to)."""

    state: ChannelStats
    next_index: int
    files_total: int
    fingerprint: str
    options: dict[str, Any]
    bad_files: list[dict[str, str]] = dataclasses.field(default_factory=list)
    images: int = 0  # good images reduced so far
    bytes: int = 0  # file bytes read so far (for MB/s)
    elapsed_s: float = 0.0  # processing time summed over the runs that made this checkpoint
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "complete": self.complete,
            "next_index": self.next_index,
            "files_total": self.files_total,
            "fingerprint": self.fingerprint,
            "options": self.options,
            "images": self.images,
            "bytes": self.bytes,
            "elapsed_s": self.elapsed_s,
            "bad_files": self.bad_files,
            "state": self.state.to_dict(),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Checkpoint":
        if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise CheckpointError(f"not a gpustats checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
        try:
            return Checkpoint(
                state=ChannelStats.from_dict(d["state"]), next_index=int(d["next_index"]),
                files_total=int(d["files_total"]), fingerprint=str(d["fingerprint"]), options=dict(d["options"]),
                bad_files=[{"path": str(b["path"]), "reason": str(b["reason"])} for b in d.get("bad_files", [])],
                images=int(d.get("images", 0)), bytes=int(d.get("bytes", 0)),
                elapsed_s=float(d.get("elapsed_s", 0.0)), complete=bool(d.get("complete", False)),
            )
        except (KeyError, TypeError, ValueError, StatsError) as exc:
            raise CheckpointError(f"damaged checkpoint ({type(exc).__name__}: {exc})") from None


def file_list_fingerprint(files: Sequence[str | os.PathLike[str]]) -> str:
    """sha256 over each listed path (as listed) and its size in bytes, in order."""
    digest = hashlib.sha256()
    for path in files:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        digest.update(os.fspath(path).encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
        digest.update(str(size).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def rank_path(path: str | os.PathLike[str], rank: int, world: int) -> str:
    """The checkpoint file of one rank: ``FILE.rank{r}`` when ``world > 1``, else ``FILE``."""
    path = os.fspath(path)
    return f"{path}.rank{rank}" if world > 1 else path


def _atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same folder, flush, fsync, replace."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); harmless to skip elsewhere
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a reader sees the old or the new file, never a mix)."""
    _atomic_write_text(path, json.dumps(checkpoint.to_dict(), separators=(",", ":")))


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or ``None`` when there is none; :class:`CheckpointError` if unusable."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path!r} is not valid JSON ({exc}); delete it to start over") from None
    try:
        return Checkpoint.from_dict(data)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path!r}: {exc}; delete it to start over") from None


def check_compatible(path: str, checkpoint: Checkpoint, *, fingerprint: str, files_total: int,
                     options: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint`` was made by this very run."""
    fix = f"delete {path!r} to start over, or rerun with the same paths and options"
    if checkpoint.options != options:
        diffs = []
        for key in sorted(set(checkpoint.options) | set(options)):
            old, new = checkpoint.options.get(key, "<unset>"), options.get(key, "<unset>")
            if old != new:
                diffs.append(f"{key}: checkpoint {old!r}, now {new!r}")
        raise CheckpointError(f"checkpoint {path!r} was made with other options ({'; '.join(diffs)}); {fix}")
    if checkpoint.files_total != files_total or checkpoint.fingerprint != fingerprint:
        raise CheckpointError(
            f"checkpoint {path!r} was made for another file list ({checkpoint.files_total} files then, "
            f"{files_total} now, or names/sizes changed); {fix}")
    if not 0 <= checkpoint.next_index <= files_total:
        raise CheckpointError(f"checkpoint {path!r} is damaged (next_index {checkpoint.next_index} of "
                              f"{files_total} files); delete it to start over")
