"""Compiled CUDA kernels cached across processes (a cubin per kernel, in a per-user folder).

numba-cuda compiles a kernel in every process that launches it: 0.5-4 s each on an H200 box, for
every worker and every run. The fixed-cost launch path (:mod:`._launch`) compiles a kernel once per
machine instead: the first process stores the cubin, later ones load it (``cuLibraryLoadData``
through cuda.core) without running numba's compiler at all.

Where: ``$NUMBA_CACHE_DIR/gpustats/cuda`` when ``NUMBA_CACHE_DIR`` is set, else
``$XDG_CACHE_HOME/gpustats/cuda``, else ``~/.cache/gpustats/cuda``; never inside the installed
package (a folder there is refused). ``GPUSTATS_CUDA_CACHE=0`` turns the cache off. A folder that
cannot be written costs the compile, nothing else: every failure to read or write is silent and
falls back to compiling.

Key (:func:`kernel_key`): everything that changes the machine code -- the kernel factory and its
arguments, the argument types, the compute capability, a digest of every source file of
``gpustats.kernels`` (device functions and intrinsics live in other files than the kernels),
the gpustats, numba-cuda, numba and llvmlite versions, and this file format. A file holds a
header line, the key, the kernel's entry name and the cubin; a file whose header or key does not
match is ignored (and replaced at the next store). Files are written to a temporary name and
renamed, so concurrent processes (decode workers) never read half a file. Processes that need the
same kernel at the same moment (torchrun ranks of one machine on a cold cache) compile it once: the
compile holds a lock (:func:`compiling`) that the others wait on, then they load the stored cubin.

numba-cuda's own ``cuda.jit(cache=True)`` is not used: its cache sits next to the source file
(inside the installed package) unless ``NUMBA_CACHE_DIR`` is set, its key hashes the kernel's own
bytecode and pickles its closure (the factories' device-function dispatchers) at every lookup, and
a hit still goes through numba's dispatcher, whose launch is the cost :mod:`._launch` avoids.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

__all__ = ["cache_dir", "compiling", "kernel_key", "load", "store", "FORMAT", "COMPILE_WAIT_S"]

#: bump when the file layout or the key's meaning changes
FORMAT = "gpustats-cubin/1"
_HEADER = FORMAT.encode() + b"\n"
_PACKAGE = Path(__file__).resolve().parent


def cache_dir(environ=None) -> Path | None:
    """The folder compiled kernels go to (see the module docstring), or None when caching is off."""
    env = os.environ if environ is None else environ
    if env.get("GPUSTATS_CUDA_CACHE", "").strip() == "0":
        return None
    if env.get("NUMBA_CACHE_DIR"):
        base = Path(env["NUMBA_CACHE_DIR"]).expanduser() / "gpustats"
    elif env.get("XDG_CACHE_HOME"):
        base = Path(env["XDG_CACHE_HOME"]).expanduser() / "gpustats"
    else:
        base = Path(env.get("HOME") or Path.home()).expanduser() / ".cache" / "gpustats"
    folder = (base / "cuda").absolute()
    if _inside_package(folder):
        return None
    return folder


def _inside_package(folder: Path) -> bool:
    """Whether ``folder`` lies in the installed package (``gpustats.kernels`` or ``gpustats``)."""
    packages = [_PACKAGE] + [p for p in (_PACKAGE.parent, _PACKAGE.parent / "gpustats") if (p / "__init__.py").exists()]
    resolved = folder.resolve()
    for package in packages:
        try:
            resolved.relative_to(package)
            return True
        except ValueError:
            continue
    return False


@functools.lru_cache(maxsize=1)
def sources_digest() -> str:
    """sha256 over the kernels' source files (names and contents, sorted)."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("gpustats", "numba-cuda", "numba", "llvmlite"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def kernel_key(parts: dict, signature, cc) -> str:
    """The cache key of one compiled kernel: ``parts`` (factory name and arguments), ``signature``
    (argument types, as strings), ``cc`` (compute capability) and everything in the module docstring."""
    payload = {"format": FORMAT, "kernel": {k: repr(v) for k, v in sorted(parts.items())},
               "signature": [str(t) for t in signature], "cc": list(cc), "sources": sources_digest(),
               "versions": _versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]


def _path(key: str, folder: Path) -> Path:
    return folder / f"{key}.cubin"


def load(key: str, folder: Path | None = None) -> tuple[str, bytes] | None:
    """``(entry name, cubin)`` stored under ``key``, or None (absent, unreadable, another format)."""
    folder = cache_dir() if folder is None else folder
    if folder is None:
        return None
    try:
        data = _path(key, folder).read_bytes()
    except OSError:
        return None
    if not data.startswith(_HEADER):
        return None
    try:
        stored_key, entry, cubin = data[len(_HEADER):].split(b"\n", 2)
    except ValueError:
        return None
    if stored_key.decode(errors="replace") != key or not entry or not cubin:
        return None
    return entry.decode(), cubin


def store(key: str, entry: str, cubin: bytes, folder: Path | None = None) -> bool:
    """Write ``cubin`` under ``key`` (atomically: a temporary file renamed); False when it could not."""
    folder = cache_dir() if folder is None else folder
    if folder is None or "\n" in entry:
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_HEADER + key.encode() + b"\n" + entry.encode() + b"\n" + bytes(cubin))
            os.replace(tmp, _path(key, folder))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        return False
    return True


#: seconds a process waits for another one's compile of the same kernel before compiling it itself
COMPILE_WAIT_S = 300.0


@contextlib.contextmanager
def compiling(key: str, folder: Path | None = None, wait_s: float | None = None):
    """Held while this process compiles kernel ``key``, so that processes of one machine needing it at
    once compile it once: the others wait here and then :func:`load` what the first one stored.

    An exclusive POSIX record lock (``lockf``) on ``<key>.lock`` in the cache folder: locks belong to
    their process (a forked child never inherits one; a process that dies releases its own). Where
    there is no cache folder, no ``fcntl``, no lock support, or the wait passes ``wait_s`` (default
    :data:`COMPILE_WAIT_S`), it goes on without the lock: the lock saves compiles, it never decides
    what is loaded (files are written whole, and a stored cubin is checked against its key)."""
    folder = cache_dir() if folder is None else folder
    fd = None
    try:
        import fcntl

        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except (ImportError, OSError):
        fd = None
    try:
        if fd is not None:
            deadline = time.monotonic() + (COMPILE_WAIT_S if wait_s is None else wait_s)
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                        break  # no locks on this file system, or waited long enough: compile anyway
                    time.sleep(0.05)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
