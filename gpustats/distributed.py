"""Merge :class:`~gpustats.stats.ChannelStats` across ``torch.distributed`` ranks (NCCL or gloo).

Each rank reduces its own shard; :func:`all_reduce_stats` gathers every rank's state and merges
them in rank order (rank 0 first), so every rank ends with the same state, equal to a
single-process run over all the data: bitwise for integer data (integer merges are exact sums),
within float64 rounding (~1e-15 relative) for float data and for the per-image aggregates.

Wire format (no pickle, ever):

1. A fixed-size int64 **header** per rank (:data:`HEADER_FIELDS`): dtype family, channel count,
   scale, histogram/covariance/per-image flags, histogram bins and range,
   and the byte length of the payload. Every rank gathers every header first and checks that
   the non-empty ranks agree; when they do not, every rank raises the same :class:`StatsError`
   naming the difference ("rank 1 has 4 channels, rank 0 has 3") instead of hanging in a
   mismatched collective or failing on one rank only. Empty ranks (``ChannelStats.empty()``,
   a rank whose shard had no data) are left out of the comparison.
2. The **payload**: each state's exact JSON text (:meth:`ChannelStats.to_json`, floats as
   ``float.hex`` strings, unbounded integer totals as decimal strings) encoded as UTF-8 in a
   uint8 tensor, zero-padded to the longest payload (known from the headers). JSON text is not
   pickle: it is data, parsed by ``json.loads``, never executed. It is chosen over packing
   fields into int64 limbs / float64 tensors because it is the one exact, versioned round trip
   the state already has and tests (checkpoints use it too), it carries the unbounded Python-int
   totals (``isum``/``isumsq``/``icross``) without a limb codec, and it follows any field added
   to the state later with no change here. A state is small (kilobytes: C means, a 256-bin
   histogram per channel, a C x C co-moment matrix), so its size on the wire does not matter;
   the cost is two small ``all_gather`` calls.

Tensors live on the rank's current CUDA device when the group's backend is NCCL (NCCL moves
only CUDA tensors) and on the CPU otherwise (gloo, MPI).

>>> from gpustats.stats import ChannelStats
>>> all_reduce_stats(ChannelStats.empty()).is_empty   # no process group: the state comes back as is
True
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .stats import FLOAT_DTYPES, INTEGER_DTYPES, ChannelStats, StatsError

if TYPE_CHECKING:  # torch loads when a process group is used: a single-process CPU run never imports it
    import torch

__all__ = [
    "all_reduce_stats",
    "agree_on_failure",
    "gather_run_totals",
    "init_from_env",
    "shutdown",
    "rank_and_world",
    "is_main_process",
    "HEADER_FIELDS",
    "DEFAULT_RENDEZVOUS_TIMEOUT",
]

#: Names of the int64 header slots every rank sends before its payload (see the module docstring).
HEADER_FIELDS = (
    "magic", "family", "dtype", "channels", "scale_bits", "has_hist", "hist_bins", "hist_lo_bits",
    "hist_hi_bits", "has_comoment", "has_images", "payload_bytes",
)
_MAGIC = 0x67707374_0001  # "gpst", wire version 1: a rank running other code is caught here
_FAMILY_CODES = {"empty": 0, "int": 1, "float": 2}
_FAMILY_NAMES = {0: "empty", 1: "integer", 2: "float"}
_DTYPES = (None,) + INTEGER_DTYPES + FLOAT_DTYPES

_created_group = False  # True when init_from_env made the default group (shutdown() destroys only that)


# ---------------------------------------------------------------------------------- helpers
def _dist():
    import torch.distributed as dist

    return dist


def _group_ready() -> bool:
    if "torch" not in sys.modules:  # no group can exist before torch is imported
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` of ``group`` (default group), or ``(0, 1)`` without a process group."""
    if not _group_ready():
        return 0, 1
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


def is_main_process(group: Any = None) -> bool:
    """True on rank 0 (and in a plain single process): the rank that prints and writes files."""
    return rank_and_world(group)[0] == 0


def _bits(value: float) -> int:
    return int(np.array(value, dtype=np.float64).view(np.int64))


def _from_bits(bits: int) -> float:
    return float(np.array(bits, dtype=np.int64).view(np.float64))


def _comm_device(group: Any) -> torch.device:
    """Where the group's collectives want their tensors: the current GPU for NCCL, else the CPU."""
    import torch

    backend = str(_dist().get_backend(group)).lower()
    uses_nccl = "nccl" in backend
    if uses_nccl and "gloo" not in backend:  # "cpu:gloo,cuda:nccl" still moves CPU tensors with gloo
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _header(state: ChannelStats, payload_bytes: int) -> list[int]:
    lo, hi = state.hist_range if state.hist_range is not None else (0.0, 0.0)
    values = {
        "magic": _MAGIC,
        "family": _FAMILY_CODES[state.family],
        "dtype": _DTYPES.index(state.dtype) if state.dtype in _DTYPES else -1,
        "channels": 0 if state.is_empty else state.channels,
        "scale_bits": _bits(state.scale),
        "has_hist": int(state.hist is not None),
        "hist_bins": 0 if state.hist is None else int(state.hist.shape[1]),
        "hist_lo_bits": _bits(lo),
        "hist_hi_bits": _bits(hi),
        "has_comoment": int(state.comoment is not None),
        "has_images": int(state.images is not None),
        "payload_bytes": payload_bytes,
    }
    return [int(values[name]) for name in HEADER_FIELDS]


def _all_gather(tensor: torch.Tensor, world: int, group: Any) -> list[torch.Tensor]:
    import torch

    out = [torch.empty_like(tensor) for _ in range(world)]
    _dist().all_gather(out, tensor, group=group)
    return out


def _disagreements(headers: Sequence[dict[str, int]]) -> list[str]:
    """Differences between each non-empty rank's header and the first non-empty rank's (same on every rank)."""
    problems: list[str] = []
    for rank, h in enumerate(headers):
        if h["magic"] != _MAGIC:
            problems.append(f"rank {rank} sent a header of another gpustats version (magic {h['magic']:#x}, "
                            f"expected {_MAGIC:#x}); run the same gpustats on every rank")
    if problems:
        return problems
    filled = [(rank, h) for rank, h in enumerate(headers) if h["family"] != _FAMILY_CODES["empty"]]
    if len(filled) < 2:
        return problems
    ref_rank, ref = filled[0]
    for rank, h in filled[1:]:
        if h["channels"] != ref["channels"]:
            problems.append(f"rank {rank} has {h['channels']} channels, rank {ref_rank} has {ref['channels']}")
        if h["family"] != ref["family"]:
            problems.append(f"rank {rank} has {_FAMILY_NAMES[h['family']]} data ({_DTYPES[h['dtype']]}), rank "
                            f"{ref_rank} has {_FAMILY_NAMES[ref['family']]} data ({_DTYPES[ref['dtype']]})")
        if h["scale_bits"] != ref["scale_bits"]:
            problems.append(f"rank {rank} uses scale {_from_bits(h['scale_bits']):g}, rank {ref_rank} uses scale "
                            f"{_from_bits(ref['scale_bits']):g}")
        for flag, what in (("has_hist", "a histogram"), ("has_comoment", "covariance"), ("has_images", "per-image statistics")):
            if h[flag] != ref[flag]:
                with_rank, without_rank = (rank, ref_rank) if h[flag] else (ref_rank, rank)
                problems.append(f"rank {with_rank} has {what}, rank {without_rank} has none")
        if h["has_hist"] and ref["has_hist"]:
            if h["hist_bins"] != ref["hist_bins"]:
                problems.append(f"rank {rank} has {h['hist_bins']} histogram bins, rank {ref_rank} has {ref['hist_bins']}")
            elif (h["hist_lo_bits"], h["hist_hi_bits"]) != (ref["hist_lo_bits"], ref["hist_hi_bits"]):
                problems.append(
                    f"rank {rank} has histogram range [{_from_bits(h['hist_lo_bits']):g}, {_from_bits(h['hist_hi_bits']):g}], "
                    f"rank {ref_rank} has [{_from_bits(ref['hist_lo_bits']):g}, {_from_bits(ref['hist_hi_bits']):g}]")
    return problems


# ---------------------------------------------------------------------------------- public
def all_reduce_stats(state: ChannelStats, group: Any = None) -> ChannelStats:
    """Merge ``state`` across every rank of ``group`` (default group); every rank gets the same result.

    The result equals a single-process reduction of all ranks' data: bitwise for integer data,
    within float64 rounding for float data (states are merged in rank order with Chan's
    formula). A rank whose shard was empty passes ``ChannelStats.empty()``. Without an
    initialized process group the state is returned unchanged. Collective: every rank of the
    group must call it. Ranks whose states cannot be merged (different channel counts, integer
    vs float data, scales, histogram/covariance/per-image options) all raise the same
    :class:`~gpustats.stats.StatsError` naming the difference.

    Args:
        state: this rank's state.
        group: a ``torch.distributed`` process group (``None``: the default group).
    """
    if not _group_ready():
        return state
    import torch

    dist = _dist()
    world = dist.get_world_size(group)
    device = _comm_device(group)

    payload = b"" if state.is_empty else state.to_json().encode("utf-8")
    header = torch.tensor(_header(state, len(payload)), dtype=torch.int64, device=device)
    headers = [dict(zip(HEADER_FIELDS, t.cpu().tolist())) for t in _all_gather(header, world, group)]
    problems = _disagreements(headers)
    if problems:
        raise StatsError(
            "cannot merge statistics across ranks: " + "; ".join(problems)
            + ". Every rank must reduce the same kind of data (channels, integer or float dtype, scale) "
            "with the same options (histogram, hist_bins/hist_range, covariance, per_image)"
        )

    lengths = [h["payload_bytes"] for h in headers]
    if max(lengths) == 0:  # every rank is empty
        return ChannelStats.empty()
    merged = ChannelStats.empty()
    for data in _gather_bytes(payload, lengths, world, group, device):  # rank order: same sequence everywhere
        if data:
            merged = merged.merge(ChannelStats.from_json(data.decode("utf-8")))
    return merged


def _gather_bytes(payload: bytes, lengths: Sequence[int], world: int, group: Any, device: torch.device) -> list[bytes]:
    """Every rank's ``payload`` (``lengths`` already gathered), padded to the longest in one uint8 all_gather."""
    import torch

    buffer = np.zeros(max(max(lengths), 1), dtype=np.uint8)
    buffer[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    gathered = _all_gather(torch.from_numpy(buffer).to(device), world, group)
    return [t[:n].cpu().numpy().tobytes() for t, n in zip(gathered, lengths)]


def all_gather_json(value: Any, group: Any = None) -> list[Any]:
    """Every rank's JSON-serializable ``value``, in rank order (JSON text in uint8 tensors: no pickle).

    Without an initialized process group: ``[value]``. Collective: every rank must call it.
    """
    if not _group_ready():
        return [value]
    import torch

    dist = _dist()
    world = dist.get_world_size(group)
    device = _comm_device(group)
    payload = json.dumps(value).encode("utf-8")
    sizes = _all_gather(torch.tensor([len(payload)], dtype=torch.int64, device=device), world, group)
    lengths = [int(t.item()) for t in sizes]
    return [json.loads(data.decode("utf-8")) for data in _gather_bytes(payload, lengths, world, group, device)]


#: seconds a rank waits for the others to join the process group (``--rendezvous-timeout``)
DEFAULT_RENDEZVOUS_TIMEOUT = 300.0


def _env_int(name: str, problems: list[str]) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        problems.append(f"{name}={text!r} is not an integer")
        return None


def _checked_env(world: int) -> tuple[int, str, int]:
    """``(RANK, MASTER_ADDR, MASTER_PORT)`` of a ``WORLD_SIZE`` > 1 environment, or one :class:`StatsError`
    line naming everything missing or out of range and what to do."""
    problems: list[str] = []
    rank = _env_int("RANK", problems)
    port = _env_int("MASTER_PORT", problems)
    local_rank = _env_int("LOCAL_RANK", problems)
    local_world = _env_int("LOCAL_WORLD_SIZE", problems)
    addr = os.environ.get("MASTER_ADDR", "")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        problems.insert(0, f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
    if rank is not None and not 0 <= rank < world:
        problems.append(f"RANK={rank} is outside 0..{world - 1}")
    if port is not None and not 0 < port < 65536:
        problems.append(f"MASTER_PORT={port} is not a port (1..65535)")
    if local_world is not None and local_world < 1:
        problems.append(f"LOCAL_WORLD_SIZE={local_world} is not positive")
    if local_rank is not None and (local_rank < 0 or (local_world is not None and local_rank >= local_world)):
        problems.append(f"LOCAL_RANK={local_rank} is outside 0..{(local_world or 1) - 1}")
    if problems:
        raise StatsError(f"WORLD_SIZE={world} asks for {world} processes, but {'; '.join(problems)}: start gpustats "
                         f"with a launcher (torchrun --nproc-per-node {world} -m gpustats stats ...), which sets them, "
                         "or unset WORLD_SIZE to run in one process")
    return int(rank), addr, int(port)  # type: ignore[arg-type]


class _stderr_held:
    """Hold what is written to file descriptor 2 (C++ logs too) in a temporary file; on leaving, copy it
    back to stderr when ``keep`` was set, else drop it (the caller says what went wrong in one line)."""

    keep = False

    def __enter__(self) -> "_stderr_held":
        import tempfile

        self.saved = None
        try:
            sys.stderr.flush()
            self.file = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.file.fileno(), 2)
        except (OSError, ValueError, AttributeError):  # no fd 2 (a closed stderr): nothing to hold
            if self.saved is not None:
                os.close(self.saved)
            self.saved = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is None:
            return
        os.dup2(self.saved, 2)
        os.close(self.saved)
        with self.file:
            if self.keep:
                self.file.seek(0)
                text = self.file.read()
                if text:
                    os.write(2, text)


def init_from_env(backend: str | None = None, timeout: timedelta | None = None,
                  rendezvous_timeout: float = DEFAULT_RENDEZVOUS_TIMEOUT) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment; return ``(rank, world)``.

    With ``WORLD_SIZE`` > 1 in the environment (torchrun sets it, with ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``) and no group yet, initializes the default group:
    ``backend``, or NCCL when every local rank can have a GPU of its own (CUDA available and
    ``LOCAL_WORLD_SIZE`` <= the GPU count; rank r uses GPU ``LOCAL_RANK``), else gloo: NCCL refuses
    two ranks on one GPU. An existing group is used as is. Otherwise (a plain single process)
    returns ``(0, 1)``.

    The variables are checked first (one :class:`StatsError` line says what is missing or out of
    range), and a rank waits at most ``rendezvous_timeout`` seconds (default
    :data:`DEFAULT_RENDEZVOUS_TIMEOUT`) for the others to join, then raises a :class:`StatsError`
    instead of waiting for torch's 30-minute default. ``timeout`` bounds each collective afterwards
    (torch's default when None): a rank that finishes early waits that long for the slowest.
    """
    global _created_group
    if _group_ready():
        return rank_and_world()
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise StatsError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None
    if world <= 1:
        return 0, 1
    if not (isinstance(rendezvous_timeout, (int, float)) and 0 < rendezvous_timeout < float("inf")):
        raise ValueError(f"rendezvous_timeout must be a positive number of seconds, got {rendezvous_timeout!r}")
    rank, addr, port = _checked_env(world)
    import torch

    dist = _dist()
    if not dist.is_available():
        raise StatsError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    if backend is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        own_gpu = torch.cuda.is_available() and local_world <= torch.cuda.device_count()
        backend = "nccl" if own_gpu and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    from torch.distributed import rendezvous
    from torch.distributed.constants import default_pg_timeout

    try:  # the rendezvous alone is bounded by rendezvous_timeout; the collectives by `timeout`
        with _stderr_held() as held:  # torch's C++ retry logs and stacks: shown on success, replaced by one line
            store, rank, world = next(rendezvous("env://", rank, world,
                                                 timeout=timedelta(seconds=float(rendezvous_timeout))))
            held.keep = True
    except Exception as exc:  # DistStoreError (timed out), DistNetworkError, ValueError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StatsError(f"rank {rank} of {world} could not meet the other ranks at {addr}:{port} within "
                         f"{rendezvous_timeout:g} s ({first[:200]}); start every rank (torchrun does), check "
                         "MASTER_ADDR and MASTER_PORT, or wait longer with --rendezvous-timeout "
                         "(rendezvous_timeout=)") from None
    store.set_timeout(timeout if timeout is not None else default_pg_timeout)
    kwargs: dict[str, Any] = {"backend": backend, "store": store, "rank": rank, "world_size": world}
    if timeout is not None:
        kwargs["timeout"] = timeout
    dist.init_process_group(**kwargs)
    _created_group = True
    return rank_and_world()


def agree_on_failure(failure: BaseException | None, error: type[Exception] = StatsError) -> None:
    """Every rank learns whether any rank failed (a collective), so none waits forever in a merge.

    The failing rank re-raises its own error; the others raise ``error`` naming that rank and its error.
    """
    statuses = all_gather_json(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    for rank, message in enumerate(statuses):
        if message is not None:
            raise error(f"rank {rank} failed: {message}")


def gather_run_totals(images: int, nbytes: int, bad_files: list, elapsed: float):
    """A folder run's totals over ranks: ``(images, bytes, bad files in list order, slowest elapsed)``.

    ``bad_files``: ``(position in the full file list, {path, reason})`` pairs of this rank.
    """
    gathered = all_gather_json([images, nbytes, [list(b) for b in bad_files], elapsed])
    ordered = sorted((b for _, _, rank_bad, _ in gathered for b in rank_bad), key=lambda item: item[0])
    bad = [b for _, b in ordered]  # in file-list order, as a single process lists them
    return (sum(g[0] for g in gathered), sum(g[1] for g in gathered), bad, max(g[3] for g in gathered))


def shutdown() -> None:
    """Destroy the process group if :func:`init_from_env` created it (a no-op otherwise)."""
    global _created_group
    if _created_group and _group_ready():
        _dist().destroy_process_group()
    _created_group = False
