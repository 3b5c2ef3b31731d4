"""Opening a remote store by URL: the one place that knows which backend
serves which scheme (the contract and the shared helpers are in
:mod:`._remote`, which the backends import; keeping the dispatch here keeps
the import graph free of cycles)."""

from __future__ import annotations

from ._remote import RemoteError, RemoteStore, strip_credentials

_SCHEMES = ("http", "https", "redis", "rediss", "s3")


def open_remote(url: str, *, connect_timeout: float, timeout: float) -> RemoteStore:
    """The store ``url`` names: ``http(s)://host[:port]/base`` (the Bazel
    HTTP cache layout under ``base``), ``redis(s)://host[:port][/db][/prefix]``,
    or ``s3://bucket[/prefix][?endpoint_url=...&region=...]``.

    ``connect_timeout`` bounds making a connection; ``timeout`` every wait
    for the server after that (seconds, > 0).  Opening reads credentials
    and builds the client but does not connect.

    Raises ``RemoteError("bad-url")`` for an unsupported or malformed URL,
    ``RemoteError("client-missing")`` when the scheme's client library is
    not installed.
    """
    if not isinstance(url, str):
        raise RemoteError("bad-url", f"a remote URL must be a string, not {type(url).__name__}")
    for value, what in ((connect_timeout, "connect_timeout"), (timeout, "timeout")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise RemoteError("bad-url", f"remote {strip_credentials(url)}: {what} must be a positive number")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise RemoteError(
            "bad-url",
            f"unsupported remote URL {strip_credentials(url)!r}: use http(s)://, redis(s):// or s3://",
        )
    # Each backend is imported only when its scheme is used: the HTTP one
    # brings http.client and ssl, the others their client libraries.
    if scheme in ("http", "https"):
        from . import _remote_http as backend
    elif scheme in ("redis", "rediss"):
        from . import _remote_redis as backend  # type: ignore[no-redef]
    else:
        from . import _remote_s3 as backend  # type: ignore[no-redef]
    return backend.open_store(url, connect_timeout=float(connect_timeout), timeout=float(timeout))
