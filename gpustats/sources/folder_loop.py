"""The loop of a folder run (:func:`run_loop`): resume from a checkpoint, reduce batch after batch,
save periodically and on an interrupt, and share a rank's expected failure with the other ranks.

What the run has counted so far is a :class:`Tally`; the CPU decode workers' states are merged into
it in file order, or the :class:`~gpustats.Accumulator` that reduces what nvJPEG decodes holds it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable

from .errors import RunError, StrictBadFile
from .folder_plan import RunSetup

__all__ = ["Tally", "run_loop"]


@dataclasses.dataclass
class Tally:
    """What a run has counted: the state (CPU decode), images, bytes, bad files (and each one's order
    among all ranks' items), decoder warnings and decoders, and what a checkpoint brought."""

    state: Any
    images: int = 0
    nbytes: int = 0
    start: int = 0
    bad_files: list = dataclasses.field(default_factory=list)
    bad_order: list = dataclasses.field(default_factory=list)
    seen_warnings: dict = dataclasses.field(default_factory=dict)
    decoders: dict = dataclasses.field(default_factory=dict)  # images per CPU decoder (this run's part)
    prior_elapsed: float = 0.0
    previous: Any = None
    resumed_from: int | None = None
    complete: bool = False

    def current_state(self, setup: RunSetup) -> Any:
        return setup.acc.state() if setup.decode == "gpu" else self.state


def _progress(total: int, initial: int, enabled: bool):
    disable = not enabled or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    if disable:  # tqdm.auto's notebook detection costs a run ~0.2 s of imports: not for a bar never shown
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="img", desc="gpustats", file=sys.stderr, disable=disable,
                dynamic_ncols=True, smoothing=0.1)


def _resume(setup: RunSetup, tally: Tally, ck_path: str, fingerprint: str, note: Callable[[str], None]) -> None:
    """Load the checkpoint at ``ck_path`` into ``tally`` when there is one (refused when made by another run)."""
    from ..checkpoint import check_compatible, read_checkpoint

    plan, opts = setup.plan, setup.opts
    previous = tally.previous = read_checkpoint(ck_path)
    if previous is None:
        return
    check_compatible(ck_path, previous, fingerprint=fingerprint, files_total=plan.total,
                     options=setup.result_options)
    if setup.decode == "gpu":
        setup.acc.load(previous.state)
    else:
        tally.state = previous.state
    tally.images, tally.nbytes, tally.start = previous.images, previous.bytes, previous.next_index
    plan.resume_streams(previous.streams)
    tally.bad_files = list(previous.bad_files)
    position = plan.orders_by_name() if setup.world > 1 and tally.bad_files else {}
    tally.bad_order = [position.get(os.path.realpath(b["path"]), position.get(b["path"], [-1, 0]))
                       for b in tally.bad_files]
    tally.prior_elapsed = previous.elapsed_s
    tally.complete = previous.complete
    tally.resumed_from = tally.start
    if opts["strict"] and tally.bad_files:
        first = tally.bad_files[0]  # a strict rerun stops where a lenient run went on
        raise StrictBadFile(f"bad file {first['path']}: {first['reason']} (strict; recorded by the "
                            f"checkpoint {ck_path})")
    of_total = "" if plan.total is None else f" of {plan.total}"
    note(f"checkpoint {ck_path}: " + ("the run is complete; reporting it" if tally.complete else
                                      f"resuming at item {tally.start}{of_total}"))


def _batches(setup: RunSetup, start: int):
    """``(first, stop, good, bad, nbytes)`` per batch from item ``start``: decoded and reduced by the CPU
    workers (``good``: their result), or decoded by nvJPEG (``good``: the images on the device)."""
    opts = setup.opts
    if setup.decode == "gpu":
        from .gpu import gpu_batches

        return gpu_batches(setup.plan, start, setup.batch_size, setup.acc.device, setup.decode_opts)
    return ((r.start, r.stop, r, r.bad, r.nbytes) for r in
            setup.plan.cpu_results(start, workers=setup.workers, batch_size=setup.batch_size, extras=setup.extras,
                                   small_tasks=opts["batch_size"] is None, decode_opts=setup.decode_opts))


def _count(setup: RunSetup, tally: Tally, good: Any) -> None:
    """Add one batch's good part: the images to the Accumulator (nvJPEG), or the workers' state."""
    from ..stats import ChannelStats

    if setup.decode == "gpu":
        from .gpu import gpu_strip

        if good:  # the whole batch counts, or (on error) none of it
            setup.acc.update(good if setup.opts["per_image"] else gpu_strip(good))
        tally.images += len(good)
        return
    if good.state is not None:
        tally.state = tally.state.merge(ChannelStats.from_dict(good.state))
    tally.images += good.images
    for text, count in good.warnings.items():
        tally.seen_warnings[text] = tally.seen_warnings.get(text, 0) + count
    for name, count in good.decoders.items():
        tally.decoders[name] = tally.decoders.get(name, 0) + count


def _reduce_all(setup: RunSetup, tally: Tally, ck_path: str | None, save: Callable[[int, bool], None],
                note: Callable[[str], None]) -> None:
    """Every batch from ``tally.start`` on, counted; checkpoints every ``checkpoint_every`` seconds, on an
    interrupt, on a store's or a worker's failure (each one line), and at the end."""
    from .remote import RemoteReadError, message_of

    opts, start = setup.opts, tally.start
    next_index = start
    bar = _progress(setup.plan.total, start, opts["progress"])
    last_save = time.monotonic()
    run_bytes = 0
    batches = _batches(setup, start)
    try:
        for first, stop, good, bad, batch_bytes in batches:
            batch_bad = []  # kept apart until the batch counts: an interrupt must not list them twice
            for item in bad:
                if opts["strict"]:
                    raise StrictBadFile(f"bad file {item.name}: {item.reason} (strict)")
                batch_bad.append(({"path": item.name, "reason": item.reason}, item.order))
            _count(setup, tally, good)
            tally.bad_files.extend(b for b, _ in batch_bad)
            tally.bad_order.extend(order for _, order in batch_bad)  # positions in the full list
            tally.nbytes += batch_bytes
            run_bytes += batch_bytes
            next_index = stop
            bar.update(stop - first)
            if not bar.disable:
                bar.set_postfix_str(f"{run_bytes / 1e6 / max(bar.format_dict['elapsed'], 1e-9):.1f} MB/s",
                                    refresh=False)
            if ck_path and time.monotonic() - last_save >= opts["checkpoint_every"]:
                save(next_index, False)
                last_save = time.monotonic()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the command makes it one)
        bar.close()
        if ck_path:
            save(next_index, False)
            note(f"progress saved in {ck_path} (rerun the same command to resume)")
        raise
    except RemoteReadError as exc:  # a store failed past its retries (sources.remote): one line
        bar.close()
        saved = "; rerun with --checkpoint FILE (checkpoint= in Python) to resume after such a failure"
        if ck_path:
            save(next_index, False)
            saved = f"; progress saved in {ck_path} (rerun the same command to resume)"
        raise RunError(f"{message_of(exc)}{saved}") from None
    except RuntimeError as exc:
        from concurrent.futures.process import BrokenProcessPool

        if "DataLoader worker" not in str(exc) and not isinstance(exc, BrokenProcessPool):
            raise
        _worker_died(exc, bar, ck_path, lambda: save(next_index, False), note)
    bar.close()
    if ck_path:
        save(next_index, True)


def _worker_died(exc: RuntimeError, bar: Any, ck_path: str | None, save: Callable[[], None],
                 note: Callable[[str], None]) -> None:
    """A decode worker died (the OOM killer, a signal): one line, progress kept; a SIGTERM/SIGINT sent to
    the whole process group is an interrupt."""
    bar.close()
    if "signal: Terminated" in str(exc) or "signal: Interrupt" in str(exc):
        # SIGTERM/SIGINT sent to the whole process group (a scheduler, a terminal): an interrupt
        if ck_path:
            save()
            note(f"progress saved in {ck_path} (rerun the same command to resume)")
        interrupt = KeyboardInterrupt()
        interrupt.signum = 15 if "Terminated" in str(exc) else 2  # SIGTERM / SIGINT: the exit status
        raise interrupt from None
    saved = ""
    if ck_path:
        save()
        saved = f"; progress saved in {ck_path} (rerun to resume)"
    raise RunError(f"a decode worker process died ({str(exc).splitlines()[0].rstrip('. ')}; out of "
                   f"memory?){saved}; try fewer --workers or a smaller --batch-size") from None


def run_loop(setup: RunSetup, note: Callable[[str], None], expected: tuple[type[BaseException], ...]) -> Tally:
    """Resume, list the unreadable folders (rank 0), reduce every batch; under ``torchrun`` an ``expected``
    failure of one rank is shared with all (:func:`gpustats.distributed.agree_on_failure`)."""
    from ..checkpoint import Checkpoint, rank_path, write_checkpoint
    from ..distributed import agree_on_failure
    from ..stats import ChannelStats

    opts, plan, rank, world = setup.opts, setup.plan, setup.rank, setup.world
    tally = Tally(state=ChannelStats.empty())  # CPU decode: the workers' states, merged here in file order
    failure: BaseException | None = None  # a rank's expected failure, shared with the others below
    try:
        ck_path = None if opts["checkpoint"] is None else rank_path(opts["checkpoint"], rank, world)
        fingerprint = plan.fingerprint() if ck_path else ""
        if ck_path:
            _resume(setup, tally, ck_path, fingerprint, note)

        def save(next_index: int, done: bool) -> None:
            if ck_path:
                write_checkpoint(ck_path, Checkpoint(
                    state=tally.current_state(setup), next_index=next_index, fingerprint=fingerprint,
                    files_total=plan.total if plan.total is not None else plan.items_so_far,
                    options=setup.result_options, bad_files=tally.bad_files, images=tally.images,
                    bytes=tally.nbytes, elapsed_s=tally.prior_elapsed + time.perf_counter() - setup.t0,
                    complete=done, streams=plan.streams_read()))

        if rank == 0 and tally.resumed_from is None:
            for folder, reason in setup.unreadable:  # listed like bad files (rank 0: once per run)
                if opts["strict"]:
                    raise StrictBadFile(f"{folder}: {reason} (strict)")
                tally.bad_files.append({"path": folder, "reason": reason})
                tally.bad_order.append([-1, 0])  # before every file
        if not tally.complete:
            _reduce_all(setup, tally, ck_path, save, note)
    except expected as exc:
        if world == 1:
            raise
        failure = exc
    if world > 1:
        agree_on_failure(failure, RunError)
    return tally
