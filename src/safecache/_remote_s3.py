"""The S3 remote store, through boto3 (``pip install 'safecache[s3]'``).

``s3://bucket[/prefix]`` keeps object ``ac/<hex>`` at key
``<prefix>/ac/<hex>``.  S3-compatible stores (MinIO, Ceph, R2, moto) are
reached through ``?endpoint_url=http://host:port`` in the URL or boto3's own
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``; with either, addressing is
path-style (``host/bucket/key``), which they all serve.  ``?region=`` sets
the region when boto3's configuration does not.

boto3's clients are botocore's, and this store makes its client with
botocore directly (one session per store, a parsed service model shared by
all).  Credentials come only from boto3's own chain (environment, shared files,
SSO, instance roles); a URL with userinfo is refused.  Checksums are sent and
checked only where S3 requires them (``when_required``): botocore 1.36's
default CRC headers break older S3-compatible servers, and the tier verifies
every entry it reads anyway.

botocore retries nothing here (``total_max_attempts=1``): retrying is the
tier's decision.  ``connect_timeout`` and ``timeout`` are botocore's
``connect_timeout`` and ``read_timeout``.
"""

from __future__ import annotations

import os
import re
import threading
from urllib.parse import parse_qsl, unquote

from ._remote import RemoteError, RemoteStore, check_max_size, check_name, describe, network_cause, split_url

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CHUNK = 256 * 1024
_QUERY = {"endpoint_url", "region"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_AUTH_CODES = (
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "401", "403",
)  # fmt: skip
_CODES = {
    **dict.fromkeys(_AUTH_CODES, "auth"),
    **dict.fromkeys(("MethodNotAllowed", "NotImplemented", "405", "501"), "not-allowed"),
    **dict.fromkeys(("EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "413", "507"), "full"),
    **dict.fromkeys(("RequestTimeout", "RequestTimeTooSkewed"), "timeout"),
    "NoSuchBucket": "bad-url",  # the URL names a bucket that is not there: nothing will work
}
_CREDENTIAL_ERRORS = {
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "ProfileNotFound",
    "NoAuthTokenError", "TokenRetrievalError", "SSOError", "UnauthorizedSSOTokenError", "SSOTokenLoadError",
}  # fmt: skip


def _client_modules() -> tuple[Any, Any, Any]:
    """botocore.session, botocore.config, botocore.exceptions (boto3's own
    core: its clients are botocore's)."""
    from importlib import import_module

    try:
        return import_module("botocore.session"), import_module("botocore.config"), import_module("botocore.exceptions")
    except ImportError:
        raise RemoteError("client-missing", "the s3 remote needs boto3: pip install 'safecache[s3]'") from None


_lock = threading.Lock()
_loader: Any = None  # botocore's data loader, shared: parsing the S3 model costs ~0.4 s per client otherwise


def _make_client(session_module: Any, **kwargs: Any) -> Any:
    """A client from a new botocore session (which reads the environment and
    configuration now: credentials changed since the last store are seen)
    that shares the loader of the ones before."""
    global _loader
    with _lock:  # botocore sessions are not thread-safe; the loader's caches are filled here
        session = session_module.get_session()
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
        return session.create_client("s3", **kwargs)


class S3Store(RemoteStore):
    kind = "s3"

    def __init__(self, url: str, *, connect_timeout: float, timeout: float) -> None:
        parts = split_url(url)
        bucket = parts.netloc
        if "@" in bucket:
            raise RemoteError("bad-url", "an s3 URL takes no credentials: boto3's own configuration provides them")
        self.display = f"s3://{bucket}{parts.path.rstrip('/')}"
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise RemoteError("bad-url", f"remote {self.display}: {bucket!r} is not an S3 bucket name")
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise RemoteError("bad-url", f"remote {self.display}: '.' or '..' in the key prefix")
        self._bucket = bucket
        self._prefix = "".join(f"{s}/" for s in segments)
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
        except ValueError:
            raise RemoteError("bad-url", f"remote {self.display}: a malformed ?query") from None
        if set(query) - _QUERY:
            unknown = ", ".join(sorted(set(query) - _QUERY))
            raise RemoteError("bad-url", f"remote {self.display}: unknown options {unknown} (endpoint_url, region)")
        endpoint = query.get("endpoint_url") or None
        if endpoint is not None:
            if not re.fullmatch(r"https?://[^/@?#\s]+/?", endpoint):
                raise RemoteError("bad-url", f"remote {self.display}: endpoint_url must be http(s)://host[:port]")
            self.display += f"?endpoint_url={endpoint}"
        custom = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        session, config, self._botocore = _client_modules()
        options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "read_timeout": timeout,
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        if custom:
            options["s3"] = {"addressing_style": "path"}
        known = getattr(config.Config, "OPTION_DEFAULTS", options)  # older botocore lacks the checksum options
        try:
            self._client = _make_client(
                session,
                endpoint_url=endpoint,
                region_name=query.get("region") or None,
                config=config.Config(**{k: v for k, v in options.items() if k in known}),
            )
        except Exception as exc:  # a bad region or profile, a broken configuration file
            raise self._error(self._cause(exc), f"cannot make an s3 client: {describe(exc)}") from exc

    def _key(self, name: str) -> str:
        return self._prefix + check_name(name)

    # -- the contract --------------------------------------------------------------------------
    def get(self, name: str, *, max_size: int) -> bytes | None:
        check_max_size(max_size)
        key = self._key(name)
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
        except Exception as exc:
            if self._code(exc) in _MISSING:
                return None
            raise self._error(self._cause(exc), f"GET {name}: {describe(exc)}") from exc
        return self._call("GET", name, lambda: self._read(name, response, max_size))

    def _read(self, name: str, response: dict[str, Any], max_size: int) -> bytes:
        body = response["Body"]
        try:
            length = response.get("ContentLength")
            if not isinstance(length, int):  # S3 always sends it; a cut inside the headers does not
                raise self._error("protocol", f"GET {name}: no Content-Length")
            if length > max_size:
                raise self._error("oversized", f"GET {name}: {length} bytes, over the limit of {max_size}")
            chunks: list[bytes] = []
            size = 0
            while True:
                # Read until the empty chunk: that is when botocore checks the
                # length it was promised (a short body is IncompleteReadError).
                chunk = body.read(min(_CHUNK, max_size + 1 - size))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if size > max_size:
                    raise self._error("oversized", f"GET {name}: more than the limit of {max_size} bytes")
        finally:
            body.close()  # unread, the connection is dropped rather than drained

    def put(self, name: str, data: bytes) -> None:
        key, value = self._key(name), bytes(data)
        self._call("PUT", name, lambda: self._client.put_object(Bucket=self._bucket, Key=key, Body=value))

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self._bucket, Key=key)
        except Exception as exc:
            if self._code(exc) not in _MISSING:
                raise self._error(self._cause(exc), f"DELETE {name}: {describe(exc)}") from exc

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001, S110 - closing sockets (older botocore has no close())
            pass

    # -- errors --------------------------------------------------------------------------------
    def _call(self, operation: str, name: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except RemoteError:
            raise
        except Exception as exc:  # everything at the boundary: never another type escapes
            raise self._error(self._cause(exc), f"{operation} {name}: {describe(exc)}") from exc

    @staticmethod
    def _code(exc: BaseException) -> str:
        response = getattr(exc, "response", None)
        if not isinstance(response, dict):
            return ""
        return str(response.get("Error", {}).get("Code", ""))

    def _cause(self, exc: BaseException) -> str:
        errors = self._botocore
        if isinstance(exc, errors.ClientError):
            code = self._code(exc)
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return _CODES.get(code) or _CODES.get(str(status)) or ("server-error" if status >= 500 else "protocol")
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & _CREDENTIAL_ERRORS:
            return "auth"
        if isinstance(exc, (errors.ConnectTimeoutError, errors.ReadTimeoutError)):
            return "timeout"
        if isinstance(exc, getattr(errors, "SSLError", ())):
            return "protocol"
        if names & {"ResponseParserError", "IncompleteReadError", "ParamValidationError"}:
            return "protocol"
        if isinstance(exc, (getattr(errors, "UnknownRegionError", ()), getattr(errors, "InvalidRegionError", ()))):
            return "bad-url"
        if isinstance(exc, (errors.BotoCoreError, OSError)):
            return network_cause(exc) or ("refused" if isinstance(exc, errors.EndpointConnectionError) else "reset")
        return "protocol"


def open_store(url: str, *, connect_timeout: float, timeout: float) -> S3Store:
    return S3Store(url, connect_timeout=connect_timeout, timeout=timeout)
