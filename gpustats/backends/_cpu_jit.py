"""What every CPU kernel module shares: the cached ``njit`` wrapper, the layout helper and the block size.

Compiled loops are cached on disk in a per-user folder (:func:`cache_dir`), never next to the
installed sources: a read-only install (a container) is warm from its second process on, every
process and decode worker of a machine loads what the first one compiled, and ``pip uninstall``
leaves nothing behind (numba's default would write ``__pycache__/*.nbi`` files into the package
when it can). The cache files are numba's own, keyed by this install's source path and the source
file's contents (an edited or reinstalled file compiles again).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import tempfile
import time

from numba import njit

__all__ = ["BLOCK", "cache_dir", "cache_roots", "cached_jit", "dims"]

from ..tuning import HIST_BLOCK

BLOCK = HIST_BLOCK  # pixels per work item of hist_u8 (a work item is one (row, pixel-block); why: gpustats.tuning)


def cache_roots() -> list[str]:
    """Candidate cache folders, best first: ``NUMBA_CACHE_DIR`` when set (numba's own setting, used
    as is); else ``$XDG_CACHE_HOME/gpustats/numba`` or ``~/.cache/gpustats/numba``, then a private
    ``gpustats-<uid>/numba`` folder in the temporary directory (homeless or read-only-home users)."""
    from numba.core import config

    if config.CACHE_DIR:
        return [config.CACHE_DIR]
    roots = []
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    home = os.path.expanduser("~")
    if os.path.isabs(xdg):
        roots.append(os.path.join(xdg, "gpustats", "numba"))
    elif home != "~" and os.path.isabs(home):
        roots.append(os.path.join(home, ".cache", "gpustats", "numba"))
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    roots.append(os.path.join(tempfile.gettempdir(), f"gpustats-{uid}", "numba"))
    return roots


def _private(folder: str) -> bool:
    """True when ``folder`` (created 0700 if missing) is a real folder owned by this user that no one
    else may write: numba's cache files are code, so a shared temporary folder is used only then."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or not hasattr(os, "getuid"):
        return stat.S_ISDIR(info.st_mode)
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def cache_dir() -> str | None:
    """The first of :func:`cache_roots` that this process can write, or None (then the loops compile
    in memory, once per process). The temporary-folder fallback must be private (:func:`_private`)."""
    roots = cache_roots()
    for i, root in enumerate(roots):
        shared_tmp = i == len(roots) - 1 and len(roots) > 1
        if shared_tmp and not _private(os.path.dirname(root)):
            continue
        try:
            os.makedirs(root, exist_ok=True)
        except OSError:
            continue
        if os.access(root, os.W_OK | os.X_OK):
            return root
    return None


@functools.lru_cache(maxsize=None)
def _cache_class(root: str):
    """numba's function cache class, located under ``root`` only: none of numba's other locators,
    which would fall back to the package's own ``__pycache__``."""
    from numba.core import caching

    base = getattr(caching, "UserProvidedCacheLocator", None) or getattr(caching, "_UserProvidedCacheLocator")

    class Locator(base):
        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.exists(py_file):
                return None
            locator = cls(py_func, py_file)
            try:
                locator.ensure_cache_path()
            except OSError:
                return None
            return locator

    class Impl(caching.CompileResultCacheImpl):
        _locator_classes = [Locator]

    class Cache(caching.FunctionCache):
        _impl_class = Impl

    return Cache


#: the cache folder of this process (found once, at the first loop's definition)
_ROOT: list = []


def cached_jit(**options):
    """``numba.njit(**options)`` with an on-disk cache in :func:`cache_dir`; without one where no
    folder can be written (the loops then compile once per process, silently). With the cache, a
    signature compiles once per machine even when processes ask for it at the same moment
    (:func:`_compile_once_per_machine`)."""

    def compile_with(func):
        dispatcher = njit(**options)(func)
        if not _ROOT:
            _ROOT.append(cache_dir())
        if _ROOT[0] is not None:
            try:
                dispatcher._cache = _cache_class(_ROOT[0])(func)  # what numba's enable_caching() sets
            except RuntimeError:  # "no locator available": the folder cannot be written after all
                pass
            else:
                _compile_once_per_machine(dispatcher)
        return dispatcher

    return compile_with


#: how long a process waits for another one's compile of the same loop before compiling it itself
COMPILE_WAIT_S = 120.0


def _compile_once_per_machine(dispatcher) -> None:
    """Processes that need the same loop at once (ranks, decode workers, test workers) compile it once:
    ``dispatcher.compile`` (what numba calls for new argument types) holds an exclusive lock on a file
    next to the loop's cache files while it loads or compiles, so a second process waits and then loads
    what the first one saved instead of compiling it too. POSIX record locks (``lockf``): a forked child
    never inherits one, and the lock goes with its process. Where locks are unavailable (no ``fcntl``,
    a file system without them) or another process holds one past :data:`COMPILE_WAIT_S`, the loop
    compiles as before: the lock saves time, never correctness (numba writes its cache files whole)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    index = getattr(getattr(dispatcher._cache, "_cache_file", None), "_index_path", None)  # numba's <loop>.nbi
    if not isinstance(index, str):  # pragma: no cover - another numba's layout
        return
    compile_now, path = dispatcher.compile, index + ".lock"

    def compile(sig):
        from numba.core import sigutils

        if tuple(sigutils.normalize_signature(sig)[0]) in dispatcher.overloads:  # this process has it
            return compile_now(sig)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:
            return compile_now(sig)
        try:
            deadline = time.monotonic() + COMPILE_WAIT_S
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                        break  # no locks here, or waited long enough: compile anyway
                    time.sleep(0.02)
            return compile_now(sig)  # loads what a process that held the lock saved
        finally:
            os.close(fd)  # releases the lock

    dispatcher.compile = compile


@njit(inline="always", nogil=True)
def dims(x, cp):  # pragma: no cover - compiled
    """``(rows, channels, length)`` of ``x`` in either layout."""
    if cp:
        return x.shape[0], x.shape[1], x.shape[2]
    return x.shape[0], x.shape[2], x.shape[1]
