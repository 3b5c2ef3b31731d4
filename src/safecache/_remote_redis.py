"""The Redis remote store, through redis-py (``pip install 'safecache[redis]'``).

``redis://[[user]:password@]host[:port][/db][/prefix]`` (``rediss://`` for
TLS): object ``ac/<hex>`` is the string at key ``<prefix>/ac/<hex>``.  The
first path segment is the database number when it is all digits (as in
redis-py's own URLs); the rest of the path is the key prefix.

Credentials, never logged and never in ``display``: the URL's userinfo if
present, else ``SAFECACHE_REMOTE_USER`` (an ACL user; optional) and
``SAFECACHE_REMOTE_PASSWORD`` from the environment.

Redis keeps no size bound of its own: give the server ``maxmemory`` and
``maxmemory-policy allkeys-lru`` so it evicts instead of answering writes
with OOM (which is ``"full"`` here).  A read is ``STRLEN`` then ``GET``:
one extra round trip buys refusing an oversized value without reading any
of it, on any server that speaks the protocol (no scripting needed).

redis-py retries nothing here (``Retry(NoBackoff(), 0)``): retrying is the
tier's decision; its pool still replaces a pooled connection the server
closed while idle before using it.
"""

from __future__ import annotations

import os
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

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")


_AUTH_ERRORS = (
    "AuthenticationError",
    "AuthorizationError",
    "NoPermissionError",
    "AuthenticationWrongNumberOfArgsError",
)


def _client_module() -> Any:
    from importlib import import_module

    try:
        redis: Any = import_module("redis")
        import_module("redis.retry")  # submodules: now attributes of the package
        import_module("redis.backoff")
        return redis
    except ImportError:
        raise RemoteError("client-missing", "the redis remote needs redis-py: pip install 'safecache[redis]'") from None


class RedisStore(RemoteStore):
    kind = "redis"

    def __init__(self, url: str, *, connect_timeout: float, timeout: float) -> None:
        parts = split_url(url)
        if parts.query:
            raise RemoteError("bad-url", f"remote {display_url(parts)}: a redis URL takes no ?query")
        segments = [unquote(s) for s in parts.path.split("/") if s]
        db = 0
        if segments and segments[0].isdigit():
            db = int(segments.pop(0))
        if any(s in (".", "..") for s in segments):
            raise RemoteError("bad-url", f"remote {display_url(parts)}: '.' or '..' in the key prefix")
        self._prefix = "".join(f"{s}/" for s in segments)
        self.display = display_url(parts, parts.path.rstrip("/"))
        if parts.username is not None or parts.password is not None:
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            self._secrets = (password, parts.password or "")
        else:
            user = os.environ.get("SAFECACHE_REMOTE_USER", "")
            password = os.environ.get("SAFECACHE_REMOTE_PASSWORD", "")
            self._secrets = (password,)
        redis = _client_module()
        self._errors = redis.exceptions
        try:
            self._client = redis.Redis(
                host=parts.hostname,
                port=parts.port or 6379,
                db=db,
                username=user or None,
                password=password or None,
                ssl=parts.scheme.lower() == "rediss",
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                health_check_interval=0,
            )
        except Exception as exc:  # noqa: BLE001 - an option this redis-py does not know, a bad value
            raise self._error("bad-url", f"cannot make a redis client: {type(exc).__name__}: {exc}") from None

    def _key(self, name: str) -> str:
        return self._prefix + check_name(name)

    # -- the contract --------------------------------------------------------------------------
    def get(self, name: str, *, max_size: int) -> bytes | None:
        check_max_size(max_size)
        key = self._key(name)
        size = self._call("STRLEN", name, lambda: self._client.strlen(key))
        if not isinstance(size, int):
            raise self._error("protocol", f"STRLEN {name}: a {type(size).__name__}, not a length")
        if size > max_size:
            raise self._error("oversized", f"GET {name}: {size} bytes, over the limit of {max_size}")
        data = self._call("GET", name, lambda: self._client.get(key))
        if data is None:
            return None
        if not isinstance(data, bytes):
            raise self._error("protocol", f"GET {name}: a {type(data).__name__}, not bytes")
        if len(data) > max_size:  # replaced by a larger value between the two commands
            raise self._error("oversized", f"GET {name}: {len(data)} bytes, over the limit of {max_size}")
        return data

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        value = bytes(data)
        self._call("SET", name, lambda: self._client.set(key, value))

    def delete(self, name: str) -> None:
        key = self._key(name)
        self._call("DEL", name, lambda: self._client.delete(key))

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001, S110 - closing sockets: nothing the caller can act on
            pass

    # -- errors --------------------------------------------------------------------------------
    def _call(self, command: str, name: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as exc:  # everything at the boundary: never another type escapes
            raise self._error(self._cause(exc), f"{command} {name}: {describe(exc)}") from exc

    def _cause(self, exc: BaseException) -> str:
        errors = self._errors
        text = str(exc)
        auth = tuple(getattr(errors, n) for n in _AUTH_ERRORS if hasattr(errors, n))
        if isinstance(exc, auth) or text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return "auth"
        if "AUTH" in text and "without any password configured" in text:
            return "auth"  # a password for a server that has none
        if isinstance(exc, errors.TimeoutError):
            return "timeout"
        if isinstance(exc, errors.BusyLoadingError):
            return "server-error"
        if isinstance(exc, errors.ConnectionError):
            return network_cause(exc) or _text_cause(str(exc))
        if isinstance(exc, getattr(errors, "OutOfMemoryError", ())) or text.startswith("OOM"):
            return "full"
        if isinstance(exc, getattr(errors, "ReadOnlyError", ())) or text.startswith("READONLY"):
            return "not-allowed"
        if "exceeds maximum allowed size" in text:  # proto-max-bulk-len: as HTTP's 413
            return "full"
        if isinstance(exc, (errors.InvalidResponse, errors.DataError)) or text.startswith("WRONGTYPE"):
            return "protocol"
        if isinstance(exc, errors.RedisError):
            return "server-error"
        if isinstance(exc, OSError):
            return network_cause(exc) or _text_cause(str(exc))
        return "protocol"


def _text_cause(text: str) -> str:
    text = text.lower()
    if "refused" in text:
        return "refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "dns"
    return "reset"


def open_store(url: str, *, connect_timeout: float, timeout: float) -> RedisStore:
    return RedisStore(url, connect_timeout=connect_timeout, timeout=timeout)
