"""What every CPU kernel module shares: the cached ``njit`` wrapper, the layout helper and the block size."""

from __future__ import annotations

from numba import njit

_BLOCK = 1 << 16  # pixels per work item of hist_u8 (a work item is one (row, pixel-block))


def _jit(**options):
    """``numba.njit(cache=True, **options)``, or without the on-disk cache where numba has nowhere to
    write one (it raises "no locator available" when this file's folder and the user-wide cache
    folder are both read-only): the kernels then compile once per process, silently."""

    def compile_with(func):
        try:
            return njit(cache=True, **options)(func)
        except RuntimeError as exc:
            if "no locator available" not in str(exc):
                raise
            return njit(**options)(func)

    return compile_with


@njit(inline="always", nogil=True)
def _dims(x, cp):  # pragma: no cover - compiled
    """``(rows, channels, length)`` of ``x`` in either layout."""
    if cp:
        return x.shape[0], x.shape[1], x.shape[2]
    return x.shape[0], x.shape[2], x.shape[1]
