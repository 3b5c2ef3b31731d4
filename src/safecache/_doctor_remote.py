"""Doctor's remote check: resolve, connect, authenticate, write, read back and
delete a probe object on the cache's remote tier, time it, and say who can
poison the cache (docs/remote.md)."""

from __future__ import annotations

import os
import time

from ._doctor_report import FAIL, OK, WARN, Finding

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from ._cache import Cache

_REMEDIES = {
    "bad-url": "check the remote URL (SAFECACHE_REMOTE): http(s)://host/path, redis(s)://host:port/db, s3://bucket/prefix",
    "client-missing": "install the client the URL needs (the message names the pip line)",
    "dns": "the host name does not resolve: check the URL and the runner's DNS",
    "refused": "nothing listens there: is the server running, and the port right?",
    "timeout": "the server does not answer in time: check the network, or raise remote_timeout",
    "reset": "the connection was reset: check proxies and the server's logs",
    "auth": "the server refused the credentials: set them in the environment (docs/remote.md), never in the URL",
    "not-allowed": "the server does not accept PUT/DELETE there: for nginx, `dav_methods PUT DELETE; create_full_put_path on;`",
    "full": "the server is out of space or memory: free some, or raise its limits",
    "server-error": "the server failed: check its logs",
    "protocol": "the server does not speak the expected protocol at that URL",
}


def check_remote(cache: Cache) -> list[Finding]:
    """The remote findings (none when the cache has no remote)."""
    tier = cache.tier
    if tier is None:
        return []
    from ._remote import RemoteError
    from ._remote_open import open_remote
    from ._tier import object_name, seal, unseal

    out: list[Finding] = []
    data: dict[str, object] = {"url": tier.display, "mode": tier.mode}
    try:
        store = open_remote(tier.url, connect_timeout=tier.connect_timeout, timeout=tier.timeout)
    except RemoteError as exc:
        return [Finding("remote", FAIL, f"{tier.display}: {exc}", _REMEDIES.get(exc.cause, ""), {**data, "cause": exc.cause})]
    data["url"] = store.display
    name = object_name("safecache-doctor", 0, os.urandom(16).hex())
    entry = b"safecache doctor probe"
    blob = seal(name, entry, key=tier.key, compress=False)
    start = time.monotonic()
    step = "write"
    try:
        if tier.writes:
            store.put(name, blob)
            step = "read"
            back = store.get(name, max_size=len(blob) + 1)
            if back is None or unseal(name, back, key=tier.key, max_size=len(blob)) != entry:
                out.append(Finding("remote", FAIL, f"{store.display}: a probe object written could not be read back intact",
                                   "the server does not return what it stores at that URL", data))
                return out
            step = "delete"
            store.delete(name)
        else:
            step = "read"
            store.get(name, max_size=1024)
    except RemoteError as exc:
        data["cause"] = exc.cause
        out.append(Finding("remote", FAIL, f"{store.display}: {step} failed: {exc}", _REMEDIES.get(exc.cause, ""), data))
        return out
    except Exception as exc:  # noqa: BLE001 - a refused probe (bad envelope) is a finding, never a traceback
        out.append(Finding("remote", FAIL, f"{store.display}: the probe object came back altered ({exc})",
                           "the server does not return what it stores at that URL", data))
        return out
    finally:
        store.close()
    latency = (time.monotonic() - start) * 1000
    data["round_trip_ms"] = round(latency, 1)
    what = "write, read back and delete" if tier.writes else "read"
    out.append(Finding("remote", OK, f"{store.display} ({tier.mode}): {what} work ({latency:.0f} ms)", data=data))
    if tier.key is None:
        out.append(Finding(
            "remote-trust", WARN,
            "entries on the remote are not signed: anyone who can write to it can make every machine using it "
            "read bytes of their choosing",
            "set SAFECACHE_REMOTE_KEY (a secret shared by the machines that may write) so unsigned or mis-signed "
            "entries are misses; keep pull-request builds read-only (SAFECACHE_REMOTE_MODE=read-only)",
            {"signed": False},
        ))
    else:
        out.append(Finding("remote-trust", OK, "entries are signed (HMAC-SHA256 with SAFECACHE_REMOTE_KEY)", data={"signed": True}))
    return out
