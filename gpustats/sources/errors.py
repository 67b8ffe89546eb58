"""Errors raised by :mod:`gpustats.sources`.

``SourceError`` is a ``ValueError``: the user pointed gpustats at something it cannot use.
``BadImage`` is not an error the user sees as a crash: decoders raise it for one file, and the
dataset/CLI layers turn it into a "skipped, because <reason>" entry in the report.
"""

from __future__ import annotations

import os

__all__ = ["SourceError", "SourceNotFoundError", "NoImagesFoundError", "BadImage", "RunError", "StrictBadFile"]


class SourceError(ValueError):
    """A path given to gpustats cannot be used as a source of images."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """A path given by the user does not exist (also a ``FileNotFoundError``)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        super().__init__(f"path does not exist: {self.path!r}")
        self.filename = self.path

    def __str__(self) -> str:  # FileNotFoundError would print "[Errno None] None: ..."
        return self.args[0]


class NoImagesFoundError(SourceError):
    """Walking the given paths found no image files."""


class RunError(SourceError):
    """An expected failure of a run (printed by the command as one line, exit status 1)."""


class StrictBadFile(RunError):
    """A bad file under ``strict=True``."""


class BadImage(Exception):
    """One file could not be decoded; ``reason`` is a short human-readable string.

    Examples of reasons: ``"zero-byte file"``, ``"not an image"``,
    ``"truncated or corrupt: image file is truncated"``,
    ``"too large: 40000x40000 > max_pixels=178956970"``.
    """

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None):
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        super().__init__(reason if path is None else f"{self.path}: {reason}")
