"""The HTTP remote store: the Bazel HTTP cache layout, standard library only.

``http(s)://host[:port]/base`` keeps object ``ac/<hex>`` at
``{base}/ac/<hex>``: ``GET`` to read (404, and 204 from nginx, mean not
found), ``PUT`` with ``Content-Length`` to write (200, 201, 202 or 204),
``DELETE`` to remove.  bazel-remote serves it as is; so does an nginx
location with ``dav_methods PUT DELETE; create_full_put_path on;``.

Credentials, never logged and never in ``display``: userinfo in the URL
(``https://user:password@host/...``) if present, else a bearer token from
``SAFECACHE_REMOTE_TOKEN``, else basic auth from ``SAFECACHE_REMOTE_USER``
and ``SAFECACHE_REMOTE_PASSWORD``.  Redirects are not followed (they could
carry credentials elsewhere): a 3xx is a ``"protocol"`` failure.

Connections are kept alive in a small pool, one in use per thread at a
time.  A request on a pooled connection that the server closed while idle
(an ordinary keep-alive timeout) is sent again once on a new connection;
nothing else is retried: retrying is the tier's decision.  ``timeout`` is
the socket timeout of every wait after connecting (DNS resolution is not
covered by any timeout: the OS's resolver decides).
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import threading
from urllib.parse import unquote

from ._remote import (
    RemoteError,
    RemoteStore,
    check_max_size,
    check_name,
    describe,
    display_url,
    network_cause,
    split_url,
)

_CHUNK = 256 * 1024
_POOL = 8  # idle connections kept: more threads than this open more, then close the extra
_DRAIN = 64 * 1024  # an error body longer than this costs the connection, not the time to read it
#: Other 4xx are "protocol" (a 3xx too: a redirect could carry credentials elsewhere), 5xx "server-error".
#: 409: a WebDAV server (Apache mod_dav) answers it to a PUT whose parent collection is missing
#: (nginx without create_full_put_path answers 500, which says nothing more).
_STATUS_CAUSES = {401: "auth", 403: "auth", 405: "not-allowed", 409: "not-allowed", 501: "not-allowed"}
_STATUS_CAUSES.update({413: "full", 507: "full"})
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class HTTPStore(RemoteStore):
    kind = "http"

    def __init__(self, url: str, *, connect_timeout: float, timeout: float) -> None:
        parts = split_url(url)
        if parts.query:
            raise RemoteError("bad-url", f"remote {display_url(parts)}: an http URL takes no ?query")
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self.display = display_url(parts, self._base)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._headers: dict[str, str] = {}
        self._secrets = ()
        env = os.environ
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        if parts.username is None and env.get("SAFECACHE_REMOTE_TOKEN"):
            token = env["SAFECACHE_REMOTE_TOKEN"].strip()
            self._secrets = (token,)
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            if parts.username is None:
                user = env.get("SAFECACHE_REMOTE_USER", "")
                password = env.get("SAFECACHE_REMOTE_PASSWORD", "")
            if user or password:
                basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
                self._secrets = (password, parts.password or "", basic)
                self._headers["Authorization"] = f"Basic {basic}"
        if any(c in value for value in self._headers.values() for c in "\r\n\0"):
            raise self._error("auth", "the credentials contain a line break or NUL")
        self._context = ssl.create_default_context() if self._https else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- the contract --------------------------------------------------------------------------
    def get(self, name: str, *, max_size: int) -> bytes | None:
        check_max_size(max_size)
        return self._request("GET", check_name(name), None, max_size)

    def put(self, name: str, data: bytes) -> None:
        self._request("PUT", check_name(name), bytes(data), 0)

    def delete(self, name: str) -> None:
        self._request("DELETE", check_name(name), None, 0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- one request ---------------------------------------------------------------------------
    def _request(self, method: str, name: str, body: bytes | None, max_size: int) -> bytes | None:
        path = f"{self._base}/{name}"
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn: http.client.HTTPConnection | None = None
        response: http.client.HTTPResponse | None = None
        try:
            conn, reused = self._take()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
            except _STALE:
                if not reused:
                    raise
                # The server closed this idle keep-alive connection: once more, afresh.
                conn.close()
                conn = self._connect()
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
            result = self._answer(method, name, response, max_size)
        except Exception as exc:  # everything at the boundary: never another type escapes
            _discard(conn, response)
            if isinstance(exc, RemoteError):
                raise
            raise self._error(_cause(exc), f"{method} {name}: {describe(exc)}") from exc
        self._give(conn, response)
        return result

    def _answer(self, method: str, name: str, response: http.client.HTTPResponse, max_size: int) -> bytes | None:
        status = response.status
        if method == "GET" and status == 200:
            return self._read_body(name, response, max_size)
        if method == "GET" and status in (404, 204):
            _drain(response)
            return None
        if method == "PUT" and status in (200, 201, 202, 204):
            _drain(response)
            return None
        if method == "DELETE" and status in (200, 202, 204, 404):
            _drain(response)
            return None
        cause = _STATUS_CAUSES.get(status) or ("server-error" if status >= 500 else "protocol")
        reason = " ".join(str(response.reason).split())[:80]
        hint = " (a WebDAV server that does not create directories?)" if status == 409 else ""
        raise self._error(cause, f"{method} {name}: HTTP {status} {reason}{hint}")

    def _read_body(self, name: str, response: http.client.HTTPResponse, max_size: int) -> bytes:
        if response.length is None and not response.chunked:
            # Every cache server says where the body ends.  Without either, only the
            # server closing would; and a connection cut inside the headers looks
            # exactly like that (http.client takes the cut for their end).
            raise self._error("protocol", f"GET {name}: a body with neither Content-Length nor chunked encoding")
        if response.length is not None and response.length > max_size:
            raise self._error("oversized", f"GET {name}: {response.length} bytes, over the limit of {max_size}")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read(min(_CHUNK, max_size + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_size:
                raise self._error("oversized", f"GET {name}: more than the limit of {max_size} bytes")
        # read(amt) ends quietly where the server closed; only the length says it was short.
        if response.length:
            raise self._error("protocol", f"GET {name}: the body ended {response.length} bytes short")
        return b"".join(chunks)

    # -- connections ---------------------------------------------------------------------------
    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise self._error("protocol", "used after close()")
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        """Back to the pool if the answer was read to its end and the server
        keeps the connection open; else closed."""
        if response.isclosed() and not response.will_close:
            with self._lock:
                if not self._closed and len(self._idle) < _POOL:
                    self._idle.append(conn)
                    return
        _discard(conn, response)

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._context is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        conn.connect()  # under the connect timeout (TLS handshake included)
        if conn.sock is not None:
            conn.sock.settimeout(self._timeout)
        return conn


def _discard(conn: http.client.HTTPConnection | None, response: http.client.HTTPResponse | None) -> None:
    """Close both: the response holds its own reference to the socket (its
    ``makefile``), so closing the connection alone leaves the socket open."""
    if response is not None:
        response.close()
    if conn is not None:
        conn.close()


def _drain(response: http.client.HTTPResponse) -> None:
    """Read a small body to keep the connection; a large one is left, and
    :meth:`HTTPStore._give` closes the connection instead."""
    length = response.length
    if length is not None and length <= _DRAIN:
        response.read()


def _cause(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):  # a certificate that does not verify, a TLS handshake failure
        return "protocol"
    return network_cause(exc) or ("reset" if isinstance(exc, OSError) else "protocol")


def open_store(url: str, *, connect_timeout: float, timeout: float) -> HTTPStore:
    return HTTPStore(url, connect_timeout=connect_timeout, timeout=timeout)
