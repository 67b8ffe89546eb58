"""Real servers for the remote-source tests, on ephemeral loopback ports, each with faults to inject.

* :class:`HttpServer`: Python's ``http.server`` serving a folder, with byte ranges (``Range: bytes=a-b``,
  ``a-``, ``-n``: 206 and ``Content-Range``; ``SimpleHTTPRequestHandler`` has none), ``HEAD``,
  keep-alive, a folder ``/denied/`` answered 403, and a folder ``/private/`` that needs HTTP basic auth
  (``user:secret``).
* :class:`S3Server`: moto's S3 (the WSGI app its ``moto_server`` runs, served by werkzeug in a thread).

Both log every request (method, path, query, ``Range``) and share :class:`Faults`: ``drop(match, after,
times)`` makes the next ``times`` GETs whose path contains ``match`` send their headers (with the full
``Content-Length``) and ``after`` bytes of the body, then shut the connection down -- what a client sees
when a connection is reset mid-object.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["Faults", "HttpServer", "S3Server"]


class Faults:
    """Connection drops to inject, and the log of requests seen (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[list] = []  # [match, after, times left, range start]
        self.log: list[tuple[str, str, str, str | None]] = []  # (method, path, query, range)
        self.dropped: list[tuple[str, str | None, int]] = []  # (path, range, bytes sent)

    def drop(self, match: str, after: int, times: int = 1, start: int | None = None) -> None:
        """The next ``times`` GETs of a path containing ``match`` (and, when ``start`` is given, whose
        ``Range`` starts at byte ``start``) send ``after`` bytes of their body, then the connection drops."""
        with self.lock:
            self.rules.append([match, after, times, start])

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.log.clear()
            self.dropped.clear()

    def seen(self, method: str, path: str, query: str, byte_range: str | None) -> int | None:
        """Log a request; the bytes to send before dropping it, or None."""
        with self.lock:
            self.log.append((method, path, query, byte_range))
            if method != "GET":
                return None
            for rule in self.rules:
                starts = rule[3] is None or (byte_range or "").startswith(f"bytes={rule[3]}-")
                if rule[0] in path and rule[2] > 0 and starts:
                    rule[2] -= 1
                    return rule[1]
        return None

    def gets(self, match: str) -> list[str | None]:
        """The ``Range`` headers of the GETs of paths containing ``match``, in order."""
        with self.lock:
            return [r for m, p, _, r in self.log if m == "GET" and match in p]


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _span(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a single byte range, or None for the whole object."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    if not match.group(1):  # the last n bytes
        return max(0, size - int(match.group(2))), size
    start = int(match.group(1))
    stop = size if not match.group(2) else min(size, int(match.group(2)) + 1)
    return start, stop


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as object stores and CDNs answer

    def log_message(self, *args) -> None:  # quiet
        pass

    def _target(self) -> tuple[Path | None, int]:
        parts = urlsplit(self.path)
        rel = unquote(parts.path).lstrip("/")
        if rel.startswith("denied/"):
            return None, 403
        if rel.startswith("private/"):
            expected = "Basic " + base64.b64encode(b"user:secret").decode()
            if self.headers.get("Authorization") != expected:
                return None, 401
        path = (self.server.root / rel).resolve()
        if self.server.root not in path.parents or not path.is_file():
            return None, 404
        return path, 200

    def _answer(self, with_body: bool) -> None:
        parts = urlsplit(self.path)
        byte_range = self.headers.get("Range")
        drop_after = self.server.faults.seen(self.command, parts.path, parts.query, byte_range)
        path, status = self._target()
        if path is None:
            body = {401: b"unauthorized", 403: b"forbidden", 404: b"not found"}[status]
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)
            return
        data = path.read_bytes()
        span = _span(byte_range, len(data))
        if span is not None and span[0] >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if span is None:
            self.send_response(200)
            body = data
        else:
            self.send_response(206)
            body = data[span[0]:span[1]]
            self.send_header("Content-Range", f"bytes {span[0]}-{span[1] - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", f'"{len(data)}-{int(path.stat().st_mtime_ns)}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not with_body:
            return
        if drop_after is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:drop_after])
        self.wfile.flush()
        self.server.faults.dropped.append((parts.path, byte_range, min(drop_after, len(body))))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up early (after a 403, a cut body) is normal here: not printed. socketserver
        would print its traceback to ``sys.stderr``, which a test reading the command's one-line errors
        captures too (seen under load)."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class HttpServer:
    """``http://127.0.0.1:PORT/`` serving ``root`` (see the module docstring); a context manager."""

    def __init__(self, root: str | os.PathLike[str]):
        self.faults = Faults()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.root = Path(root).resolve()
        self.httpd.faults = self.faults
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HttpServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _FaultyApp:
    """WSGI middleware: logs requests and cuts the body of the GETs :class:`Faults` picks."""

    def __init__(self, app, faults: Faults):
        self.app, self.faults = app, faults

    def __call__(self, environ, start_response):
        path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        drop_after = self.faults.seen(environ["REQUEST_METHOD"], path, query, environ.get("HTTP_RANGE"))
        body = self.app(environ, start_response)
        if drop_after is None:
            return body
        return self._cut(body, drop_after, environ, path)

    def _cut(self, body, after: int, environ, path: str):
        sent = 0
        try:
            for chunk in body:
                if sent + len(chunk) >= after:
                    yield chunk[:after - sent]
                    sent = after
                    break
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
        self.faults.dropped.append((path, environ.get("HTTP_RANGE"), sent))
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise ConnectionAbortedError("fault injected: connection dropped mid-object")


class S3Server:
    """moto's S3 at ``http://127.0.0.1:PORT`` with :class:`Faults`; a context manager.

    ``env``: the variables a client needs (endpoint, region, test credentials)."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log(self, *args) -> None:
                pass

        self.faults = Faults()
        app = _FaultyApp(DomainDispatcherApplication(create_backend_app), self.faults)
        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.env = {"AWS_ENDPOINT_URL_S3": self.url, "AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def client(self, service: str = "s3"):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def enforce_iam(self, user: str, buckets: list[str]) -> dict[str, str]:
        """Make moto check every request's credentials and permissions (from now on, in this process), with
        a user allowed ``s3:*`` on ``buckets`` only; returns the client environment with the user's keys."""
        import json

        import moto.settings

        iam = self.client("iam")
        iam.create_user(UserName=user)
        resources = [f"arn:aws:s3:::{b}{tail}" for b in buckets for tail in ("", "/*")]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}]}
        iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._saved_auth = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        return dict(self.env, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])

    def __enter__(self) -> "S3Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if hasattr(self, "_saved_auth"):
            import moto.settings

            moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = self._saved_auth
        self.server.shutdown()
        self.server.server_close()
