"""Find the image files under one or more folders, in a deterministic order.

Rules (each one is tested in ``tests/test_sources.py``):

* Roots are processed in the order given. Inside a folder root, files are sorted by their
  relative POSIX path (plain string order), so the order does not depend on the file system.
* A file given explicitly is always accepted, whatever its extension (the user asked for it).
  Files found by walking a folder are kept only if their name ends with one of
  :data:`IMAGE_EXTENSIONS` (case-insensitive): exactly the files ``torchvision.datasets.ImageFolder``
  reads (its ``IMG_EXTENSIONS``), so the statistics describe what it loads. ``extensions=``
  chooses another set (:func:`extensions_for`: ``all_extensions=True`` adds
  :data:`EXTRA_EXTENSIONS`, other formats Pillow reads). ``skipped={}`` receives the number of
  files a walk left out, per extension (lower case; ``""`` for none; ``.tar.gz`` and the like
  whole), so a report can say what was not counted.
* Names starting with ``'.'`` (hidden files and hidden folders) are skipped while walking;
  a hidden root given explicitly is still walked.
* Symlinked folders are followed, but each real folder is walked at most once (realpaths of
  visited folders are tracked), so symlink loops terminate.
* Duplicates are dropped: a file whose realpath was already listed (same file given twice, a
  root nested in another root, a symlink to a listed file) keeps its first position.
* A path given that is neither a folder nor a regular file (a FIFO, a device, a socket) raises
  :class:`SourceError` without being opened (:func:`refuse_special`); the walk skips such entries.
* A path that does not exist raises :class:`SourceNotFoundError` (a ``FileNotFoundError``);
  an empty result raises :class:`NoImagesFoundError` naming the paths and the extensions.
* Folders that cannot be read (permissions) are skipped; ``unreadable=[]`` collects them as
  ``(path, reason)`` (the folder engine lists them with the bad files), and without it a
  ``warnings.warn`` names each one.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for name in ["b.png", "a/c.JPG", ".hidden.jpg", "notes.txt"]:
...     (root / name).parent.mkdir(parents=True, exist_ok=True)
...     _ = (root / name).write_bytes(b"")
>>> [p.relative_to(root).as_posix() for p in list_images([root])]
['a/c.JPG', 'b.png']
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Sequence

from .errors import NoImagesFoundError, SourceError, SourceNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "EXTRA_EXTENSIONS", "extensions_for", "list_images", "is_image_name", "refuse_special",
           "walk_root", "suffix_of"]

#: Extensions (lower case, with the dot) picked up when walking folders: torchvision's
#: ``torchvision.datasets.folder.IMG_EXTENSIONS``, what ``ImageFolder`` reads (same order).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Also read with ``all_extensions=True`` (``--all-extensions``): formats Pillow decodes that
#: ImageFolder leaves out (GIF, other JPEG and netpbm names).
EXTRA_EXTENSIONS: tuple[str, ...] = (".gif", ".jfif", ".jpe", ".pbm", ".pnm")
_DOUBLE = (".tar.gz", ".tar.bz2", ".tar.xz")  # suffixes reported whole in ``skipped``


def extensions_for(all_extensions: bool) -> tuple[str, ...]:
    """The extensions a run reads: ImageFolder's, plus :data:`EXTRA_EXTENSIONS` when ``all_extensions``."""
    return IMAGE_EXTENSIONS + EXTRA_EXTENSIONS if all_extensions else IMAGE_EXTENSIONS


def is_image_name(name: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """True when ``name`` ends with one of ``extensions`` (any case), as ImageFolder decides."""
    return name.lower().endswith(extensions)


def suffix_of(name: str) -> str:
    """The extension ``skipped`` counts ``name`` under: lower case, ``.tar.gz`` whole, ``""`` for none."""
    lower = name.lower()
    double = [s for s in _DOUBLE if lower.endswith(s)]
    return double[0] if double else os.path.splitext(lower)[1]


def _walk_folder(root: str | os.PathLike[str], visited_dirs: set[str], unreadable: list | None,
                 extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                 skipped: dict | None = None) -> list[tuple[str, str, str]]:
    """(relative POSIX path, path, realpath) of the image files under ``root``, unsorted; plain strings
    (a ``Path`` per file would cost more than the walk itself: ~10 us each).

    A file's realpath is its folder's (resolved once per folder) joined with its name, unless the
    entry is a symlink: ``os.path.realpath`` per file costs an ``lstat`` per path component."""
    found: list[tuple[str, str, str]] = []
    # Explicit stack of (folder path, relative prefix); entries sorted so that the choice of
    # which alias of a doubly reachable folder gets walked is deterministic.
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        folder, prefix = stack.pop()
        real = os.path.realpath(folder)
        if real in visited_dirs:
            continue  # a symlink loop, or a folder already walked through another path
        visited_dirs.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if unreadable is None:
                warnings.warn(f"gpustats: skipping unreadable folder {folder!r}: {exc}", stacklevel=3)
            else:
                unreadable.append((folder, f"unreadable folder: {exc.strerror or exc}"))
            continue
        subdirs: list[tuple[str, str]] = []
        real_dir = real + os.sep if real != os.sep else real
        for entry in entries:
            name = entry.name
            if name[0] == ".":
                continue
            try:
                if entry.is_dir():  # follows symlinks
                    subdirs.append((entry.path, prefix + name + "/"))
                elif is_image_name(name, extensions) and entry.is_file():
                    file_real = os.path.realpath(entry.path) if entry.is_symlink() else real_dir + name
                    found.append((prefix + name, entry.path, file_real))
                elif skipped is not None and entry.is_file():
                    key = suffix_of(name)
                    skipped[key] = skipped.get(key, 0) + 1
            except OSError:
                continue  # vanished or unreadable entry: not listed
        stack.extend(reversed(subdirs))  # depth-first in name order
    return found


_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def refuse_special(path: str | os.PathLike[str]) -> None:
    """Raise :class:`SourceError` when ``path`` (named explicitly) is neither a folder nor a regular file:
    reading a FIFO or a device could block forever or never end, so it is refused unopened (the walk
    of a folder skips such entries anyway)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: reported where it is opened
    for test, kind in _SPECIAL:
        if test(mode):
            raise SourceError(f"{os.fspath(path)!r} is {kind}, not a regular file; gpustats reads image files, "
                              "folders and archives (refused without opening it)")


def list_images(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
                unreadable: list | None = None, *, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                skipped: dict | None = None) -> list[Path]:
    """List the image files under ``paths`` (folders or files) in a deterministic order.

    See the module docstring for the exact rules. Returns paths as found (under the given
    roots, not resolved), so reports show what the user typed. ``unreadable``: a list that
    receives ``(folder, reason)`` for each folder that could not be read (else a warning);
    ``extensions``: the names a walk keeps; ``skipped``: a dict that receives what it left out.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    roots = [Path(p) for p in paths]
    for root in roots:
        if not os.path.exists(root):
            raise SourceNotFoundError(root)
        refuse_special(root)

    visited_dirs: set[str] = set()
    seen_files: set[str] = set()
    result: list[Path] = []
    for root in roots:
        result.extend(Path(p) for p in walk_root(root, visited_dirs, seen_files, unreadable, extensions, skipped))

    if not result:
        where = ", ".join(repr(str(r)) for r in roots) or "(no paths given)"
        raise NoImagesFoundError(
            f"no images found under {where}; accepted extensions (any case): "
            f"{', '.join(extensions)}; hidden files and folders (leading '.') are skipped"
        )
    return result


def walk_root(root: Path, visited_dirs: set[str], seen_files: set[str], unreadable: list | None,
              extensions: tuple[str, ...] = IMAGE_EXTENSIONS, skipped: dict | None = None) -> list[str]:
    """The files of one root (a folder walked and sorted, or a file), minus those in ``seen_files``
    (realpaths, updated), as strings: :func:`list_images`' rules, one root at a time (``sources.units``
    lists archives between roots)."""
    if os.path.isdir(root):
        candidates = [(p, real) for _, p, real in sorted(_walk_folder(root, visited_dirs, unreadable, extensions,
                                                                       skipped), key=lambda item: item[0])]
    else:
        candidates = [(os.fspath(root), os.path.realpath(root))]
    result = []
    for path, real in candidates:
        if real in seen_files:
            continue
        seen_files.add(real)
        result.append(path)
    return result
