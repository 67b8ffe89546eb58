"""What a remote path names (:mod:`.remote` reads it): the objects of a brace pattern, the image files
under a prefix walked like a folder, or one object; each with its size and ETag as the store lists
them (a checkpoint's identity of it). Every request is retried as :mod:`.remote` says; a missing
object is a :class:`~.errors.SourceNotFoundError`, a denied one a one-line :class:`~.errors.SourceError`.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, NamedTuple

from .errors import SourceError, SourceNotFoundError
from .remote import (RemoteFile, RemoteReadError, _filesystem, _protocol, _URL, is_url, prefetch, read_range, redact,
                     retrying)

__all__ = ["RemoteObject", "RemotePath", "identity", "list_remote", "listing_error", "random_file", "read_object",
           "read_url"]


class RemoteObject(NamedTuple):
    """An object found by listing: the URL as given (it may hold credentials: read with it, show ``label``),
    its size and, where the store gives one, its ETag (part of a checkpoint's identity)."""

    url: str
    size: int
    etag: str | None

    @property
    def label(self) -> str:
        return redact(self.url)

    @property
    def name(self) -> str:
        return self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class RemotePath(str):
    """A remote image file as a unit: the ``str`` is its redacted URL (what reports show); ``url``,
    ``size`` and ``etag`` say how to read it."""

    url: str
    size: int
    etag: str | None

    def __new__(cls, obj: RemoteObject) -> "RemotePath":
        self = super().__new__(cls, obj.label)
        self.url, self.size, self.etag = obj.url, obj.size, obj.etag
        return self

    def __reduce__(self):
        return RemotePath, (RemoteObject(self.url, self.size, self.etag),)


#: what listing learnt of each object (URL -> (size, ETag)): the identity checkpoints compare
_known: dict[str, tuple[int, str | None]] = {}


def identity(url: str) -> str:
    """What a checkpoint compares for the object ``url``: its redacted URL, size and ETag as listed."""
    size, etag = _known.get(url, (-1, None))
    return f"{redact(url)}\0{size}\0{etag or ''}"


def read_object(path: "RemotePath") -> bytes:
    """The whole object of a listed remote file (its size is known: a short read is retried)."""
    return read_range(path.url, 0, path.size, path.size, str(path))



# ------------------------------------------------------------------------------------ listing
def listing_error(exc: RemoteReadError, label: str) -> SourceError:
    if exc.kind == "missing":
        return SourceNotFoundError(label)
    return SourceError(str(exc))


def _info(url: str) -> dict:
    """The store's ``info`` of ``url``, retried; a missing object raises :class:`SourceNotFoundError`, a
    denied one a :class:`SourceError` saying so."""
    fs, path = _filesystem(url)
    label = redact(url)
    try:
        return retrying(label, "looking it up", lambda: fs.info(path))
    except RemoteReadError as exc:
        if exc.kind == "missing" and _protocol(url) in ("http", "https"):
            # fsspec's HTTP info reports any failure as missing: ask for one byte to learn the status
            try:
                retrying(label, "reading it", lambda: fs.cat_file(path, start=0, end=1))
            except RemoteReadError as why:
                raise listing_error(why, label) from None
        raise listing_error(exc, label) from None


def _object(url: str, info: dict) -> RemoteObject:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    size = int(info.get("size") or 0)
    _known[url] = (size, None if etag is None else str(etag))
    return RemoteObject(url, size, None if etag is None else str(etag))


def _with_protocol(url: str, found: str) -> str:
    """A listed path as a URL of the same protocol (s3fs lists ``bucket/key``)."""
    if is_url(found):
        return found
    return f"{_URL.match(url).group(0)}{found.lstrip('/')}"


def list_remote(text: str, hints: list[str], is_archive: Callable[[str], bool] = lambda name: False,
                extensions: tuple[str, ...] | None = None, skipped: dict | None = None
                ) -> list[RemoteObject | RemotePath]:
    """What the remote path ``text`` names, in order: objects (an archive or an image file, ``RemoteObject``)
    or, for a prefix, its image files (``RemotePath``, by ``extensions``: ImageFolder's by default, as for a
    folder); brace patterns expanded. ``hints`` receives a line when a prefix holds archives (names
    ``is_archive`` accepts) but no images; ``skipped`` counts the other files of a prefix per extension."""
    from .braces import expand_braces, has_braces
    from .listing import IMAGE_EXTENSIONS, is_image_name, suffix_of
    from .tarindex import is_hidden

    if has_braces(text):
        names = expand_braces(text)
        found = list(prefetch([lambda n=n: _try_info(n) for n in names]))
        missing = [n for n, info in zip(names, found) if isinstance(info, SourceNotFoundError)]
        for info in found:
            if isinstance(info, SourceError) and not isinstance(info, SourceNotFoundError):
                raise info
        if missing:
            raise SourceNotFoundError(redact(missing[0])) if len(names) == 1 else SourceError(
                f"{len(missing)} of the {len(names)} objects of the pattern {redact(text)!r} do not exist (first: "
                f"{redact(missing[0])!r})")
        return [_object(n, info) for n, info in zip(names, found)]
    info = _info(text)
    if info.get("type") != "directory" and not text.endswith("/"):
        return [_object(text, info)]
    fs, path = _filesystem(text)
    label = redact(text)
    try:
        entries = retrying(label, "listing it", lambda: fs.find(path, detail=True))
    except RemoteReadError as exc:
        raise listing_error(exc, label) from None
    base = path.rstrip("/") + "/"
    files, archives = [], []
    for found, entry in entries.items():
        if entry.get("type") == "directory":
            continue
        relative = found[len(base):] if found.startswith(base) else found.rsplit("/", 1)[-1]
        if is_hidden(relative):
            continue
        if is_image_name(relative, extensions or IMAGE_EXTENSIONS):
            files.append((relative, entry, found))
        else:
            if is_archive(relative):
                archives.append(relative)
            if skipped is not None:
                key = suffix_of(relative)
                skipped[key] = skipped.get(key, 0) + 1
    if not files and archives:
        hints.append(f"; archives under a prefix are not opened: name them, e.g. {label.rstrip('/')}/"
                     f"{sorted(archives)[0]!r}, or a brace pattern such as 'shard-{{000000..000099}}.tar'")
    return [RemotePath(_object(_with_protocol(text, found), entry)) for _, entry, found in sorted(files)]


def _try_info(url: str) -> dict | SourceError:
    try:
        return _info(url)
    except SourceError as exc:
        return exc


_files: dict[tuple[str, int], RemoteFile] = {}


_files_lock = threading.Lock()


def random_file(url: str) -> RemoteFile:
    """This process's :class:`RemoteFile` of ``url`` (its size as listed, else looked up once)."""
    key = (url, os.getpid())
    handle = _files.get(key)
    if handle is None:
        size = _known.get(url, (None, None))[0]
        if size is None:  # a worker started fresh (spawn) knows nothing of the listing
            fs, path = _filesystem(url)
            info = retrying(redact(url), "looking it up", lambda: fs.info(path))
            size = _object(url, info).size
        handle = RemoteFile(url, size)
        with _files_lock:  # the request threads of a task may ask at once
            if len(_files) >= 256:
                _files.pop(next(iter(_files)))
            _files[key] = handle
    return handle


def read_url(url: str) -> bytes:
    """The whole object at ``url`` (looked up first: its size bounds the read; a short read is retried)."""
    info = _info(url)
    obj = _object(url, info)
    return read_range(url, 0, obj.size, obj.size, obj.label)
