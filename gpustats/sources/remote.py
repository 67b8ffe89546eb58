"""Datasets where they live: object stores (``s3://``, ``gs://``), HTTP(S) servers and any other fsspec
protocol, read by byte range with bounded retries. Nothing is downloaded to disk.

A path with a scheme (``s3://bucket/train/``, ``https://host/shards/train-{0000..0099}.tar``) is read
through `fsspec <https://filesystem-spec.readthedocs.io>`_ and the store's own package, installed by
an extra: ``pip install 'gpustats[s3]'`` (s3fs), ``'gpustats[gcs]'`` (gcsfs), ``'gpustats[http]'``
(aiohttp). Credentials, endpoints and regions come from each store's usual environment variables
and configuration files (``AWS_PROFILE``, ``~/.aws/credentials``, ``AWS_ENDPOINT_URL_S3``,
``GOOGLE_APPLICATION_CREDENTIALS``, fsspec's own ``~/.config/fsspec/``); gpustats never prints,
logs or writes them: every name shown or saved (reports, bad items, checkpoints, error messages)
is :func:`redact`\\ ed -- ``user:password@`` and the values of a query string (``?X-Amz-Signature=``,
``?token=``) become ``***`` -- and the values of the usual credential variables are scrubbed from
messages of the store's client.

What is read, and how (:mod:`.storelist` lists what a path names, :mod:`.units` makes the units):

* a prefix (``s3://bucket/train/``, or any path the store calls a directory) is walked like a
  folder: the images under it, in the order of their relative paths, hidden names skipped,
  archives under it not opened (name them, or give a brace pattern);
* a brace pattern is expanded by gpustats (:mod:`.braces`) and every object must exist;
* zip archives and Parquet files are read at random, by byte range (their directory and footer
  first: a few requests), exactly as local ones;
* tars and TFRecord shards are read from start to end (their members are found only by walking
  them: an index would cost one request per member): :class:`RemoteStream` asks for
  :data:`CHUNK` bytes at a time, :data:`AHEAD` requests in flight; with two shards or more per
  decode worker each worker reads whole shards, else the members go to the workers as the bytes
  arrive (:mod:`.streamed`);
* image files are read whole, the items of one task concurrently (:func:`prefetch`).

Faults of a network: each request (a byte range, an object, a listing) is tried up to
:func:`attempts` times (5; ``GPUSTATS_REMOTE_ATTEMPTS``) when it fails in a way that may pass --
a connection refused, reset or dropped mid-response, a timeout, fewer bytes than asked, HTTP 408,
429 and 5xx, S3's ``SlowDown`` -- waiting 0.5 s, 1 s, 2 s, 4 s between tries (doubling from
``GPUSTATS_REMOTE_BACKOFF`` seconds, at most 8 s, each shortened at random by up to half so that
workers do not retry in step). A range that failed is asked again from its first byte: the reader
gets every byte once, in order, so nothing is counted twice and nothing is missed. The store's
client library is made to try each request once (s3fs: ``retries = 1``), so these numbers are the
whole story. A missing object, a denied bucket or credentials refused are not retried: they are
one line naming the object. A read that still fails stops the run (never is an image skipped for
it) with :class:`RemoteReadError`; the engine then saves the checkpoint, and rerunning resumes.

>>> redact("https://user:pw@host/a.tar?X-Amz-Signature=abc&x=1")
'https://***@host/a.tar?X-Amz-Signature=***&x=***'
>>> is_url("s3://bucket/train/"), is_url("/data/train"), is_url("C:\\\\data")
(True, False, False)
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import random
import re
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from ..tuning import REMOTE_AHEAD as AHEAD  # requests in flight per stream (why: gpustats.tuning)
from ..tuning import REMOTE_CHUNK as CHUNK  # bytes one request of a sequential read asks for
from .errors import SourceError

__all__ = ["AHEAD", "CHUNK", "RemoteFile", "RemoteReadError", "RemoteStream", "attempts", "is_url", "message_of",
           "prefetch", "read_range", "redact", "retrying", "shown_path"]

#: bytes a small random read (a zip directory, a Parquet footer) reads ahead
_READAHEAD = 1 << 16
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_IN_TEXT = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/\s@'\"<>]+@)?([^\s?#'\"<>]*)(\?[^\s#'\"<>]*)?")
_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                         "GOOGLE_OAUTH_ACCESS_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AZURE_STORAGE_KEY",
                         "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}


class RemoteReadError(Exception):
    """A remote read failed for good during a run (after its retries, or a missing or denied object).

    Deliberately neither an ``OSError`` nor a ``ValueError``: the archive readers turn those into bad
    items, and a network failure must stop the run instead (the engine saves the checkpoint).
    ``kind``: "missing", "denied", "transient" (retries exhausted) or "error"."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):
        return type(self), (self.args[0] if self.args else "", self.kind)


# ------------------------------------------------------------------------------------ names
def is_url(text: Any) -> bool:
    """True for a path with a scheme other than ``file://`` (``s3://``, ``gs://``, ``https://``, ...)."""
    if not isinstance(text, str) or "://" not in text:
        return False
    match = _URL.match(text)
    return match is not None and match.group(1).lower() != "file"


def _secrets() -> list[str]:
    return [v for v in (os.environ.get(name) for name in _CREDENTIAL_VARIABLES) if v and len(v) >= 6]


def redact(text: str) -> str:
    """``text`` with the credentials a URL may carry replaced by ``***`` (user info, query values), and
    the values of the usual credential variables (``AWS_SECRET_ACCESS_KEY``, ...) scrubbed."""
    def one(match: re.Match) -> str:
        scheme, user, path, query = match.groups()
        out = scheme + ("***@" if user else "") + path
        if query:
            pairs = [p.split("=", 1)[0] + "=***" if p else p for p in query[1:].split("&")]
            out += "?" + "&".join(pairs)
        return out

    text = _IN_TEXT.sub(one, text)
    for value in _secrets():
        text = text.replace(value, "***")
    return text


def _protocol(url: str) -> str:
    return _URL.match(url).group(1).lower()


# ------------------------------------------------------------------------------------ file systems
_filesystems: dict[tuple[str, int], Any] = {}
_lock = threading.Lock()


def _filesystem(url: str) -> tuple[Any, str]:
    """``(file system, path)`` for ``url``: one fsspec instance per protocol and process (a forked decode
    worker makes its own: network clients do not survive a fork)."""
    protocol = _protocol(url)
    key = (protocol, os.getpid())
    fs = _filesystems.get(key)
    if fs is None:
        try:
            import fsspec
        except ImportError:
            raise SourceError(f"reading {protocol}:// paths needs fsspec; install it: pip install "
                              f"'gpustats[{_EXTRAS.get(protocol, 's3')}]'") from None
        with _lock:
            fs = _filesystems.get(key)
            if fs is None:
                try:
                    fs = fsspec.filesystem(protocol, skip_instance_cache=True)
                except (ImportError, ValueError) as exc:
                    extra = _EXTRAS.get(protocol)
                    how = f"pip install 'gpustats[{extra}]'" if extra else "install the fsspec implementation it names"
                    raise SourceError(f"cannot read {protocol}:// paths ({redact(str(exc))}); {how}") from None
                if isinstance(getattr(fs, "retries", None), int):
                    fs.retries = 1  # one layer of retries, ours (see the module docstring)
                _filesystems[key] = fs
    strip = getattr(type(fs), "_strip_protocol", None)
    return fs, (url if protocol in ("http", "https") or strip is None else strip(url))


# ------------------------------------------------------------------------------------ retries
def attempts() -> int:
    """Tries per request (``GPUSTATS_REMOTE_ATTEMPTS``, default 5, at least 1)."""
    try:
        return max(1, int(os.environ.get("GPUSTATS_REMOTE_ATTEMPTS", "5")))
    except ValueError:
        return 5


def _first_wait() -> float:
    try:
        return max(0.0, float(os.environ.get("GPUSTATS_REMOTE_BACKOFF", "0.5")))
    except ValueError:
        return 0.5


def _wait(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: doubling from the first wait, at most 8 s, minus up to half at random."""
    full = min(8.0, _first_wait() * 2 ** (attempt - 1))
    return full * random.uniform(0.5, 1.0)


class _ShortRead(Exception):
    """Fewer bytes came than were asked for (a connection closed early without an error)."""


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        try:
            return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        except (TypeError, ValueError):
            return None
    return None


def _classify(exc: BaseException) -> str:
    """"missing", "denied", "transient" (worth another try) or "error"."""
    if isinstance(exc, _ShortRead):
        return "transient"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return "missing"
    if isinstance(exc, PermissionError):
        return "denied"
    status = _status(exc)
    if status is not None:
        if status in (401, 403):
            return "denied"
        if status in (404, 410):
            return "missing"
        if status in (408, 425, 429) or status >= 500:
            return "transient"
        return "error"
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if isinstance(
        getattr(exc, "response", None), dict) else ""
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken"):
        return "denied"
    if code in ("NoSuchKey", "NoSuchBucket"):
        return "missing"
    if code in ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"):
        return "transient"
    if isinstance(exc, (ConnectionError, TimeoutError, OSError, EOFError)):
        return "transient"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ClientError", "ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError",
                "HTTPClientError", "ConnectionClosedError", "EndpointConnectionError", "ReadTimeoutError",
                "IncompleteRead", "FSTimeoutError", "ResponseParserError", "IncompleteReadError",
                "ContentLengthError", "TransferEncodingError"}:
        return "transient" if "ClientResponseError" not in names else "error"
    return "error"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return redact(text[:300])


def retrying(label: str, what: str, call: Callable[[], Any]) -> Any:
    """``call()``, tried again after transient failures (module docstring); :class:`RemoteReadError` else."""
    tries = attempts()
    started = time.monotonic()
    for attempt in range(1, tries + 1):
        try:
            return call()
        except RemoteReadError:
            raise
        except Exception as exc:  # classified: a network error has many types
            kind = _classify(exc)
            if kind == "transient" and attempt < tries:
                time.sleep(_wait(attempt))
                continue
            if kind == "missing":
                message = f"{label}: no such object"
            elif kind == "denied":
                message = (f"{label}: access denied ({_reason(exc)}); check the credentials the store's client "
                           "finds (environment variables, profile, config file) and their permissions")
            elif kind == "transient":
                message = (f"{label}: {what} failed {tries} times over {time.monotonic() - started:.1f} s "
                           f"(last: {_reason(exc)})")
            else:
                message = f"{label}: {what} failed ({_reason(exc)})"
            raise RemoteReadError(message, kind) from None
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ reading
def read_range(url: str, start: int, stop: int, size: int | None = None, label: str | None = None) -> bytes:
    """Bytes ``start .. stop-1`` of the object (fewer only past its end, when ``size`` says where that is)."""
    label = label or redact(url)
    if size is not None:
        stop = min(stop, size)
    if stop <= start:
        return b""
    fs, path = _filesystem(url)

    def once() -> bytes:
        data = fs.cat_file(path, start=start, end=stop)
        if len(data) > stop - start and size is not None and len(data) == size:
            data = data[start:stop]  # a server that ignored the Range header sent it all
        if len(data) != stop - start:
            raise _ShortRead(f"{len(data)} of the {stop - start} bytes asked for came")
        return data

    return retrying(label, f"reading bytes {start}-{stop - 1}", once)


class RemoteFile:
    """Random access to one object: ``pread(n, offset)`` (what :func:`.tarindex.pread` calls for a
    non-descriptor), and ``read``/``seek``/``tell`` for ``zipfile`` and pyarrow, with a small read-ahead
    for their small reads. Each request retried (:func:`retrying`)."""

    def __init__(self, url: str, size: int, label: str | None = None):
        self.url, self.size, self.label = url, size, label or redact(url)
        self.pos = 0
        self.closed = False
        self._block_start, self._block = 0, b""

    def pread(self, n: int, offset: int) -> bytes:
        return read_range(self.url, offset, offset + n, self.size, self.label)

    # file object
    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = max(0, min(n, self.size - self.pos))
        if n == 0:
            return b""
        block_end = self._block_start + len(self._block)
        if self._block_start <= self.pos and self.pos + n <= block_end:
            data = self._block[self.pos - self._block_start:self.pos - self._block_start + n]
        elif n < _READAHEAD:
            start = self.pos
            self._block = read_range(self.url, start, start + _READAHEAD, self.size, self.label)
            self._block_start = start
            data = self._block[:n]
        else:
            data = read_range(self.url, self.pos, self.pos + n, self.size, self.label)
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "RemoteFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemoteStream:
    """Sequential reads of bytes ``start .. stop-1`` of an object: ranges of :data:`CHUNK` bytes, up to
    :data:`AHEAD` requests in flight, each retried from its first byte (the reader sees each byte once)."""

    def __init__(self, url: str, start: int, stop: int, label: str | None = None, chunk: int | None = None):
        self.url, self.stop, self.label = url, stop, label or redact(url)
        self.chunk = chunk or _chunk()
        self._next = start
        self._pending: collections.deque = collections.deque()
        self._buffer, self._at = b"", 0

    def _fill(self) -> None:
        pool = _pool()
        while len(self._pending) < AHEAD and self._next < self.stop:
            end = min(self._next + self.chunk, self.stop)
            self._pending.append(pool.submit(read_range, self.url, self._next, end, None, self.label))
            self._next = end

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = float("inf") if n is None or n < 0 else n
        while want > 0:
            if self._at >= len(self._buffer):
                self._fill()
                if not self._pending:
                    break
                self._buffer, self._at = self._pending.popleft().result(), 0
                self._fill()
            take = self._buffer[self._at:self._at + int(min(want, len(self._buffer) - self._at))]
            self._at += len(take)
            want -= len(take)
            parts.append(take)
        return b"".join(parts)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()

    def __enter__(self) -> "RemoteStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunk() -> int:
    try:
        return max(1, int(os.environ.get("GPUSTATS_REMOTE_CHUNK", CHUNK)))
    except ValueError:
        return CHUNK


_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """This process's threads for requests (16; a forked worker makes its own)."""
    pool = _pools.get(os.getpid())
    if pool is None:
        with _lock:
            pool = _pools.get(os.getpid())
            if pool is None:
                pool = _pools[os.getpid()] = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="gpustats-io")
    return pool


def prefetch(calls: Sequence[Callable[[], Any]]) -> Iterator[Any]:
    """The results of ``calls`` in order, run concurrently on this process's request threads (a task's
    remote items: a request's latency is paid once per task, not once per item)."""
    futures = [_pool().submit(call) for call in calls]
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()


def message_of(exc: RemoteReadError) -> str:
    """The one-line message of ``exc``, also when a DataLoader re-raised it from a worker (its message is
    then "Caught RemoteReadError in DataLoader worker ..." and the worker's traceback)."""
    text = str(exc)
    marker = f"{RemoteReadError.__module__}.{RemoteReadError.__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(marker)]
    return redact(lines[-1][len(marker):] if lines else text.splitlines()[0] if text else "remote read failed")


def shown_path(path: Any) -> str:
    """A path as a checkpoint records it: local ones absolute, remote ones redacted."""
    text = os.fspath(path)
    return redact(text) if is_url(text) else os.path.abspath(text)
