"""Remote stores: the small contract the remote tier talks to, and the URL
that picks one.

A remote store keeps opaque objects under names in the Bazel HTTP cache
layout (``ac/<hex>`` for entries, ``cas/<hex>`` for tree archives) on a
server we do not own: an HTTP/WebDAV cache (nginx, bazel-remote), Redis, or
S3 and the stores that speak its API.  Three methods and ``close``, as Go's
``Cache`` interface and httpx's transport are a handful of methods; the
tier above (local first, verification, uploads, signing, the breaker,
counters) is written once over them.

Every failure of a store is a :class:`RemoteError` with a short, stable
``cause``: the one exception the tier catches.  Its message is one line and
never carries a credential (the stores scrub theirs from every message they
build, and never put one in ``display``).

A store's methods may be called from several threads at once.

``open_remote(url)`` picks the store by scheme and imports its client
library only then (``redis``, ``boto3``): importing safecache never pays
for them, and a missing one is a ``RemoteError("client-missing")`` that
says which extra to install.
"""

from __future__ import annotations

import errno as _errno
import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from urllib.parse import SplitResult

#: The causes, for the tier's counters and messages.  A store raises no other.
CAUSES = (
    "timeout",  # no answer within the connect or per-request timeout
    "refused",  # nothing listens there, or no route to it
    "reset",  # the connection broke mid-request
    "dns",  # the host name does not resolve
    "auth",  # credentials missing, wrong or not permitted
    "not-allowed",  # the server does not allow the method (a read-only location, a replica)
    "full",  # the server is out of space or memory, or refuses a body that large
    "server-error",  # the server failed (HTTP 5xx, Redis busy or failing, S3 InternalError)
    "protocol",  # an answer we cannot understand (garbage, truncated, an unexpected status)
    "oversized",  # an object over the caller's max_size, refused before reading it all
    "client-missing",  # the client library (redis, boto3) is not installed
    "bad-url",  # an unsupported or malformed URL
)

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
_UNREACHABLE = {_errno.EHOSTUNREACH, _errno.ENETUNREACH, _errno.EADDRNOTAVAIL}
_SECRET_MIN = 4  # shorter "secrets" would scrub ordinary words out of messages


class RemoteError(Exception):
    """A remote store failed.  ``cause`` is one of :data:`CAUSES`; ``str()``
    is one line naming the store (credentials removed) and what happened.
    Survives pickling."""

    def __init__(self, cause: str, message: str = "") -> None:
        text = " ".join((message or cause).split())  # one line, whatever the server sent
        super().__init__(text)
        self.cause = cause
        self.message = text

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return type(self), (self.cause, self.message)

    def __str__(self) -> str:
        return self.message


class RemoteStore:
    """The contract of a remote store (one per URL; safe to share between
    threads).

    ``get(name, max_size=)`` returns the bytes stored under ``name``, or
    ``None`` when there are none; an object over ``max_size`` bytes raises
    ``RemoteError("oversized")`` before it is read in full (by its announced
    length, and while reading).  ``put`` stores ``data`` under ``name``,
    replacing what was there.  ``delete`` removes it (a missing object is
    fine).  Every failure is a :class:`RemoteError`; a ``name`` that is not
    a relative, slash-separated name of safe characters (``ac/0123ab...``)
    is a ``ValueError``: the caller's bug, not the server's.
    """

    kind: str = ""
    #: The URL with any credentials removed: for messages and logs.
    display: str = ""
    #: Credentials this store holds, scrubbed from every message it builds.
    _secrets: tuple[str, ...] = ()

    def get(self, name: str, *, max_size: int) -> bytes | None:
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the store is not used after this."""

    def __enter__(self) -> RemoteStore:  # noqa: PYI034 - Self needs typing_extensions on 3.10
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display}>"

    def _error(self, cause: str, what: str) -> RemoteError:
        """A RemoteError naming this store, with its credentials scrubbed."""
        text = f"{self.kind} remote {self.display}: {what}"
        for secret in self._secrets:
            if len(secret) >= _SECRET_MIN:
                text = text.replace(secret, "***")
        return RemoteError(cause, text)


def check_name(name: str) -> str:
    """``name`` if it is a safe object name, else ``ValueError``: no
    absolute paths, ``..``, empty segments, or characters a URL or key
    would have to escape."""
    if not isinstance(name, str) or len(name) > 1024 or not _NAME.fullmatch(name):
        raise ValueError(f"not a remote object name: {name!r}")
    return name


def check_max_size(max_size: int) -> int:
    if not isinstance(max_size, int) or max_size < 0:
        raise ValueError(f"max_size must be a non-negative int, not {max_size!r}")
    return max_size


def strip_credentials(url: str) -> str:
    """``url`` without anything that may be a credential, for messages about
    a URL that may not even parse: everything up to the last ``@`` goes (a
    password with an unencoded ``/`` would otherwise show in the "path")."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}://{rest}"


def split_url(url: str) -> SplitResult:
    """``urlsplit(url)``, or ``RemoteError("bad-url")``; a URL with an ``@``
    after its host (an unencoded ``/`` in a password?) is refused rather
    than guessed at."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise RemoteError("bad-url", f"malformed remote URL {strip_credentials(url)!r}: {exc}") from None
    after_host = url.partition("://")[2][len(parts.netloc) :] if parts.netloc else ""
    if "@" in after_host or not parts.hostname:
        raise RemoteError("bad-url", f"malformed remote URL {strip_credentials(url)!r}: no host, or '@' after it")
    if parts.fragment:
        raise RemoteError("bad-url", f"malformed remote URL {strip_credentials(url)!r}: a #fragment")
    return parts


def display_url(parts: SplitResult, path: str = "") -> str:
    """The URL for messages: scheme, host, port and ``path``; never the
    userinfo or query."""
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme.lower()}://{host}{path}"


def describe(exc: BaseException) -> str:
    """One short line naming a client's exception, for a RemoteError's
    message (which the store then scrubs of its credentials)."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def network_cause(exc: BaseException) -> str | None:
    """The cause of a connection failure that a client wrapped, perhaps
    several times (redis-py raises while handling the OS error; botocore
    keeps urllib3's in ``kwargs["error"]``, urllib3 the OS error in its
    ``__cause__`` or ``args``); ``None`` when nothing underneath says."""
    import socket

    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue and len(seen) < 16:
        err = queue.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, (socket.timeout, TimeoutError)):
            return "timeout"
        if isinstance(err, socket.gaierror):
            return "dns"
        if isinstance(err, ConnectionRefusedError):
            return "refused"
        if isinstance(err, ConnectionError):  # reset, aborted, broken pipe, closed without answer
            return "reset"
        if type(err).__module__ == "http.client":  # BadStatusLine, LineTooLong, IncompleteRead...
            return "protocol"
        if isinstance(err, OSError) and err.errno in _UNREACHABLE:
            return "refused"
        inner = getattr(err, "kwargs", None)
        nested = [err.__cause__, err.__context__, inner.get("error") if isinstance(inner, dict) else None]
        nested += [a for a in err.args if isinstance(a, BaseException)]
        queue += [e for e in nested if isinstance(e, BaseException)]
    return None
