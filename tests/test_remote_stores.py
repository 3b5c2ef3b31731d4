"""The remote stores (``_remote``, ``_remote_http``, ``_remote_redis``,
``_remote_s3``) against real servers: nginx WebDAV, redis-server and moto's
S3, started on free loopback ports (``remote_servers``), with faults put
between them and the store by a TCP proxy (``fault_proxy``).

What every store promises the tier: a round trip returns what was put;
not found is ``None``; an object over ``max_size`` is refused before it is
read; and every failure, whatever the server or the network does, is a
``RemoteError`` with a stable cause and no credential in its message.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from remote_servers import (
    PASSWORD,
    TOKEN,
    USER,
    Moto,
    Nginx,
    Redis,
    canned_http,
    create_bucket,
    dead_port,
    run_moto,
    run_nginx,
    run_redis,
    use_fake_aws,
)

from safecache._remote import CAUSES, RemoteError, RemoteStore
from safecache._remote_open import open_remote

CONNECT_TIMEOUT = 2.0
TIMEOUT = 10.0  # for the tests where nothing should time out: a loaded CI machine is slow
FAULT_TIMEOUT = 0.5  # where something must
GENEROUS = 10  # how many times the configured timeouts a failure may take (never a tight bound)
KiB, MiB = 1024, 1024 * 1024


# -- the servers, one of each per module ----------------------------------------------------------
@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    with run_nginx(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'safecache[redis]')")
    with run_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'safecache[s3]')")
    with run_moto(tmp_path_factory.mktemp("moto")) as server:
        create_bucket(server)
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return use_fake_aws(monkeypatch)


@dataclass
class Target:
    kind: str
    url: str
    upstream: tuple[str, int]
    via: Callable[[int], str]  # the same store's URL through a proxy on this port

    def open(self, url: str | None = None, *, timeout: float = TIMEOUT) -> RemoteStore:
        return remote_at(url or self.url, timeout=timeout)


_opened: list[RemoteStore] = []


def remote_at(url: str, *, timeout: float = TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT) -> RemoteStore:
    """``open_remote(url)``, closed when the test ends."""
    store = open_remote(url, connect_timeout=connect_timeout, timeout=timeout)
    _opened.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


@pytest.fixture(params=["http", "redis", "s3"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "http":
        server = request.getfixturevalue("nginx")
        return Target("http", server.url(), ("127.0.0.1", server.port), lambda p: f"http://127.0.0.1:{p}/cache")
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return Target(
            "redis", server.url("/7/runs"), ("127.0.0.1", server.port), lambda p: f"redis://127.0.0.1:{p}/7/runs"
        )
    server = request.getfixturevalue("moto_s3")
    request.getfixturevalue("aws_env")
    return Target(
        "s3",
        server.url(),
        ("127.0.0.1", server.port),
        lambda p: f"s3://safecache-test/runs?endpoint_url=http://127.0.0.1:{p}",
    )


@pytest.fixture
def store(target: Target) -> Iterator[RemoteStore]:
    with target.open() as opened:
        yield opened


def fresh(kind: str = "ac") -> str:
    return f"{kind}/{os.urandom(16).hex()}"


def failure(call: Callable[[], object]) -> tuple[RemoteError, float]:
    """The RemoteError ``call`` raises (any other exception fails the test),
    and how long it took."""
    start = time.monotonic()
    with pytest.raises(RemoteError) as info:
        call()
    return info.value, time.monotonic() - start


# -- the contract ---------------------------------------------------------------------------------
def test_round_trip_put_get_delete(store: RemoteStore) -> None:
    name, data = fresh(), os.urandom(3000)
    store.put(name, data)
    assert store.get(name, max_size=len(data)) == data
    store.delete(name)
    assert store.get(name, max_size=len(data)) is None


def test_get_of_a_missing_name_is_none(store: RemoteStore) -> None:
    assert store.get(fresh(), max_size=MiB) is None
    assert store.get(fresh("cas"), max_size=MiB) is None


def test_delete_of_a_missing_name_is_fine(store: RemoteStore) -> None:
    store.delete(fresh())


def test_put_replaces_what_was_there(store: RemoteStore) -> None:
    name = fresh()
    store.put(name, b"first")
    store.put(name, b"second, longer")
    assert store.get(name, max_size=100) == b"second, longer"


def test_an_empty_object_round_trips_as_empty_bytes(store: RemoteStore) -> None:
    name = fresh()
    store.put(name, b"")
    assert store.get(name, max_size=0) == b""


def test_a_large_object_round_trips(store: RemoteStore) -> None:
    name, data = fresh("cas"), os.urandom(6 * MiB + 7)
    store.put(name, data)
    assert store.get(name, max_size=len(data)) == data


def test_an_object_of_exactly_max_size_is_returned(store: RemoteStore) -> None:
    name, data = fresh(), os.urandom(1000)
    store.put(name, data)
    assert store.get(name, max_size=1000) == data
    assert failure(lambda: store.get(name, max_size=999))[0].cause == "oversized"


def test_an_oversized_object_is_refused_without_reading_it_all(target: Target) -> None:
    name, data = fresh("cas"), os.urandom(8 * MiB)
    with target.open() as direct:
        direct.put(name, data)
    # At 64 KiB per 10 ms, all of it would take more than a second to pass:
    # a store that read it would move it all; one that refuses stops early.
    with FaultProxy(target.upstream, "latency", latency=0.01) as proxy, target.open(target.via(proxy.port)) as slow:
        error, _ = failure(lambda: slow.get(name, max_size=64 * KiB))
    assert error.cause == "oversized"
    assert proxy.bytes_down < len(data) // 4, proxy.bytes_down


def test_stores_are_safe_to_share_between_threads(store: RemoteStore) -> None:
    problems: list[str] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                name, data = fresh(), f"thread {n} item {i}".encode() * (n + 1)
                store.put(name, data)
                if store.get(name, max_size=MiB) != data:
                    problems.append(f"{name}: wrong bytes")
                store.delete(name)
        except Exception as exc:  # noqa: BLE001 - collected, reported by the assert
            problems.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not problems


def test_a_connection_the_server_closed_while_idle_is_replaced(target: Target) -> None:
    name, data = fresh(), b"kept alive"
    with FaultProxy(target.upstream) as proxy, target.open(target.via(proxy.port)) as remote:
        remote.put(name, data)
        assert remote.get(name, max_size=100) == data
        proxy.drop()  # as a server's keep-alive timeout closes idle connections
        time.sleep(0.05)  # let the FIN arrive: the case is a connection closed while idle
        assert remote.get(name, max_size=100) == data


def test_names_that_could_escape_are_a_value_error() -> None:
    remote = remote_at("http://127.0.0.1:1/cache", timeout=1)
    for name in ("../etc/passwd", "/ac/00", "ac//00", "ac/../00", "", "ac/0 0", "ac/00?x", "ac\\00"):
        with pytest.raises(ValueError):
            remote.get(name, max_size=10)
        with pytest.raises(ValueError):
            remote.put(name, b"x")
        with pytest.raises(ValueError):
            remote.delete(name)


# -- a broken remote ------------------------------------------------------------------------------
def test_a_dead_server_is_refused_quickly(target: Target) -> None:
    remote = target.open(target.via(dead_port()), timeout=FAULT_TIMEOUT)
    error, took = failure(lambda: remote.get(fresh(), max_size=100))
    assert error.cause == "refused", error
    assert failure(lambda: remote.put(fresh(), b"x"))[0].cause == "refused"
    assert took < GENEROUS * (CONNECT_TIMEOUT + FAULT_TIMEOUT)


def test_a_server_that_never_answers_times_out(target: Target) -> None:
    with FaultProxy(target.upstream, "blackhole") as proxy:
        remote = target.open(target.via(proxy.port), timeout=FAULT_TIMEOUT)
        error, took = failure(lambda: remote.get(fresh(), max_size=100))
        assert error.cause == "timeout", error
        assert took < GENEROUS * (CONNECT_TIMEOUT + FAULT_TIMEOUT)
        error, took = failure(lambda: remote.put(fresh(), b"x" * 1000))
        assert error.cause == "timeout", error
        assert took < GENEROUS * (CONNECT_TIMEOUT + FAULT_TIMEOUT)
        remote.close()


def test_a_name_that_does_not_resolve_is_dns(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host == "cache.invalid":  # never asks a real resolver: nothing leaves loopback
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    url = target.via(9).replace("127.0.0.1:9", "cache.invalid:9")
    assert failure(lambda: target.open(url).get(fresh(), max_size=10))[0].cause == "dns"


@pytest.mark.parametrize("after", [0, 1000])
def test_a_connection_reset_is_reset(target: Target, after: int) -> None:
    name = fresh()
    with target.open() as direct:
        direct.put(name, os.urandom(100 * KiB))
    with FaultProxy(target.upstream, "reset", after=after) as proxy:
        remote = target.open(target.via(proxy.port), timeout=FAULT_TIMEOUT)
        error, _ = failure(lambda: remote.get(name, max_size=MiB))
        assert error.cause == "reset", error


@pytest.mark.parametrize("after", [5, 30, 100, 2000])  # in the status line, the headers, the body
def test_a_truncated_answer_is_a_remote_error(target: Target, after: int) -> None:
    name = fresh()
    with target.open() as direct:
        direct.put(name, os.urandom(100 * KiB))
    with FaultProxy(target.upstream, "truncate", after=after) as proxy:
        remote = target.open(target.via(proxy.port), timeout=FAULT_TIMEOUT)
        error, _ = failure(lambda: remote.get(name, max_size=MiB))
        assert error.cause in ("reset", "protocol", "timeout"), error


def test_garbage_from_the_server_is_a_remote_error(target: Target) -> None:
    name = fresh()
    with target.open() as direct:
        direct.put(name, b"fine bytes" * 100)
    for seed in range(2):
        with FaultProxy(target.upstream, "garbage", seed=seed) as proxy:
            remote = target.open(target.via(proxy.port), timeout=FAULT_TIMEOUT)
            assert failure(lambda: remote.get(name, max_size=MiB))[0].cause in CAUSES  # noqa: B023 - called here
            assert failure(lambda: remote.put(fresh(), b"x" * 100))[0].cause in CAUSES  # noqa: B023


def test_a_flipped_bit_is_passed_on_for_the_tier_to_catch(target: Target) -> None:
    # Stores move bytes; verifying them is the tier's job.  Either the flip
    # broke the protocol (a RemoteError), or the bytes come back different.
    name, data = fresh(), b"MARK" + os.urandom(5000)
    with target.open() as direct:
        direct.put(name, data)
    with FaultProxy(target.upstream, "bitflip", marker=b"MARK") as proxy:
        remote = target.open(target.via(proxy.port), timeout=FAULT_TIMEOUT)
        try:
            got = remote.get(name, max_size=MiB)
        except RemoteError:
            return
    assert got is not None and len(got) == len(data) and got != data


def test_a_slow_server_within_the_timeout_still_works(target: Target) -> None:
    name, data = fresh(), os.urandom(200 * KiB)
    with FaultProxy(target.upstream, "latency", latency=0.02) as proxy, target.open(target.via(proxy.port)) as remote:
        remote.put(name, data)
        assert remote.get(name, max_size=MiB) == data


# -- HTTP ----------------------------------------------------------------------------------------
def test_http_basic_auth_from_the_environment(nginx: Nginx, monkeypatch: pytest.MonkeyPatch) -> None:
    url = nginx.url("basic")
    assert failure(lambda: remote_at(url).get(fresh(), max_size=10))[0].cause == "auth"
    monkeypatch.setenv("SAFECACHE_REMOTE_USER", USER)
    monkeypatch.setenv("SAFECACHE_REMOTE_PASSWORD", "wrong-password")
    assert failure(lambda: remote_at(url).put(fresh(), b"x"))[0].cause == "auth"
    monkeypatch.setenv("SAFECACHE_REMOTE_PASSWORD", PASSWORD)
    name = fresh()
    remote_at(url).put(name, b"behind basic auth")
    assert remote_at(url).get(name, max_size=100) == b"behind basic auth"


def test_http_basic_auth_from_the_url_wins_and_never_shows(nginx: Nginx, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_REMOTE_PASSWORD", "wrong-password")
    port = nginx.port
    remote = remote_at(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/basic")
    name = fresh()
    remote.put(name, b"x")
    assert remote.get(name, max_size=10) == b"x"
    assert PASSWORD not in remote.display and USER not in remote.display and PASSWORD not in repr(remote)
    wrong = remote_at(f"http://{USER}:not-{PASSWORD}@127.0.0.1:{port}/basic")
    error, _ = failure(lambda: wrong.get(name, max_size=10))
    assert error.cause == "auth" and PASSWORD not in str(error)


def test_http_bearer_token_from_the_environment(nginx: Nginx, monkeypatch: pytest.MonkeyPatch) -> None:
    url = nginx.url("token")
    monkeypatch.setenv("SAFECACHE_REMOTE_TOKEN", "not-the-token-at-all")
    error, _ = failure(lambda: remote_at(url).get(fresh(), max_size=10))
    assert error.cause == "auth" and "not-the-token" not in str(error)
    monkeypatch.setenv("SAFECACHE_REMOTE_TOKEN", TOKEN)
    name = fresh()
    remote_at(url).put(name, b"behind a token")
    assert remote_at(url).get(name, max_size=100) == b"behind a token"


def test_https_round_trip_with_a_trusted_certificate(nginx: Nginx, monkeypatch: pytest.MonkeyPatch) -> None:
    url = nginx.url(tls=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(nginx.certificate))  # OpenSSL's own way to trust a CA
    remote = remote_at(url)
    name = fresh()
    remote.put(name, b"over TLS")
    assert remote.get(name, max_size=100) == b"over TLS"


def test_https_with_a_certificate_that_does_not_verify_is_a_remote_error(nginx: Nginx) -> None:
    url = nginx.url(tls=True)
    error, _ = failure(lambda: remote_at(url).get(fresh(), max_size=100))
    assert error.cause == "protocol" and "certificate" in str(error).lower()


@pytest.mark.parametrize(
    ("location", "cause"),
    [("readonly", "not-allowed"), ("small", "full"), ("broken", "server-error")],
)
def test_http_refusals_have_their_cause(nginx: Nginx, location: str, cause: str) -> None:
    remote = remote_at(nginx.url(location))
    assert failure(lambda: remote.put(fresh("cas"), os.urandom(4 * KiB)))[0].cause == cause


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n", "protocol"),
        (b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 0\r\n\r\n", "full"),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "server-error"),
        (b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", "auth"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "protocol"),
        (b"HTTP/1.1 200 OK\r\nServer: cut here", "protocol"),
        (b"HTTP/1.1 200 OK\r\n\r\nno length, closed", "protocol"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"8000\r\n" + b"x" * 0x8000 + b"\r\n", "oversized"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "protocol"),
        (b"", "reset"),
    ],
)
def test_http_answers_have_their_cause(answer: bytes, cause: str) -> None:
    with canned_http(answer) as port:
        remote = remote_at(f"http://127.0.0.1:{port}/cache", timeout=FAULT_TIMEOUT)
        assert failure(lambda: remote.get(fresh(), max_size=1000))[0].cause == cause


def test_http_204_on_get_is_not_found() -> None:
    with canned_http(b"HTTP/1.1 204 No Content\r\n\r\n") as port:
        assert remote_at(f"http://127.0.0.1:{port}/cache").get(fresh(), max_size=10) is None


# -- Redis ---------------------------------------------------------------------------------------
def test_redis_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'safecache[redis]')")
    secret = "redis-secret-0123456789"
    with run_redis(tmp_path, password=secret) as server:
        assert failure(lambda: remote_at(server.url(), timeout=2).get(fresh(), max_size=10))[0].cause == "auth"
        wrong = remote_at(f"redis://:not-{secret}@127.0.0.1:{server.port}", timeout=2)
        error, _ = failure(lambda: wrong.put(fresh(), b"x"))
        assert error.cause == "auth" and secret not in str(error) and secret not in wrong.display
        monkeypatch.setenv("SAFECACHE_REMOTE_PASSWORD", secret)
        name = fresh()
        remote_at(server.url(), timeout=2).put(name, b"from the environment")
        monkeypatch.delenv("SAFECACHE_REMOTE_PASSWORD")
        from_url = remote_at(f"redis://:{secret}@127.0.0.1:{server.port}", timeout=2)
        assert from_url.get(name, max_size=100) == b"from the environment"


def test_redis_out_of_memory_is_full(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'safecache[redis]')")
    with run_redis(tmp_path, maxmemory="3mb") as server:
        remote = remote_at(server.url(), timeout=5)
        causes = []
        for _ in range(8):  # bounded: 8 MiB into a 3 MiB server
            try:
                remote.put(fresh("cas"), os.urandom(MiB))
            except RemoteError as exc:
                causes.append(exc.cause)
                break
        assert causes == ["full"]


def test_redis_read_only_replica_is_not_allowed(tmp_path: Path) -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'safecache[redis]')")
    with run_redis(tmp_path, replica_of=dead_port()) as server:
        remote = remote_at(server.url(), timeout=5)
        assert failure(lambda: remote.put(fresh(), b"x"))[0].cause == "not-allowed"


def test_redis_keys_are_prefix_and_name_in_the_database(redis_server: Redis) -> None:
    redis = pytest.importorskip("redis")
    port = redis_server.port
    name = fresh()
    remote_at(f"redis://127.0.0.1:{port}/5/team/proj", timeout=5).put(name, b"v")
    client = redis.Redis(port=port, db=5)
    try:
        assert client.get(f"team/proj/{name}") == b"v"
    finally:
        client.close()


# -- S3 ------------------------------------------------------------------------------------------
def test_s3_bad_credentials_are_auth(tmp_path: Path, aws_env: dict[str, str]) -> None:
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'safecache[s3]')")
    with run_moto(tmp_path, authenticate=True) as server:
        remote = remote_at(server.url(), timeout=10)
        error, _ = failure(lambda: remote.get(fresh(), max_size=10))
        assert error.cause == "auth", error
        assert aws_env["AWS_SECRET_ACCESS_KEY"] not in str(error)


def test_s3_no_credentials_at_all_is_auth(
    moto_s3: Moto, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    remote = remote_at(moto_s3.url(), timeout=5)
    assert failure(lambda: remote.get(fresh(), max_size=10))[0].cause == "auth"


def test_s3_a_missing_bucket_is_a_bad_url(moto_s3: Moto, aws_env: dict[str, str]) -> None:
    remote = remote_at(moto_s3.url(bucket="no-such-bucket"), timeout=5)
    assert failure(lambda: remote.put(fresh(), b"x"))[0].cause == "bad-url"


def test_s3_endpoint_from_aws_endpoint_url(
    moto_s3: Moto, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    remote = remote_at("s3://safecache-test/from-env", timeout=5)
    name = fresh()
    remote.put(name, b"through AWS_ENDPOINT_URL")
    assert remote.get(name, max_size=100) == b"through AWS_ENDPOINT_URL"


# -- URLs, clients, credentials ------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "",
        "nonsense",
        "ftp://host/cache",
        "file:///tmp/cache",
        "http://",
        "http://host:notaport/cache",
        "http://host:99999/cache",
        "http://host/cache?x=1",
        "http://host/cache#frag",
        "http://user:pa/ss@host/cache",
        "redis://",
        "redis://host/0?ssl=1",
        "redis://host/0/../up",
        "s3://",
        "s3://Bad_Bucket/x",
        "s3://ab",
        "s3://user:secret@bucket/x",
        "s3://bucket/x?unknown=1",
        "s3://bucket/x?endpoint_url=ftp://host",
        "s3://bucket/x?endpoint_url=http://user:secret@host",
    ],
)
def test_bad_urls_are_bad_url(url: str) -> None:
    pytest.importorskip("redis") if url.startswith("redis") else None
    pytest.importorskip("boto3") if url.startswith("s3") else None
    error, _ = failure(lambda: open_remote(url, connect_timeout=1, timeout=1))
    assert error.cause == "bad-url"
    assert "secret" not in str(error) and "pa/ss" not in str(error)


@pytest.mark.parametrize("value", [0, -1, float("nan"), "1", None, True])
def test_timeouts_must_be_positive_numbers(value: object) -> None:
    error, _ = failure(lambda: open_remote("http://host/cache", connect_timeout=value, timeout=1))  # type: ignore[arg-type]
    assert error.cause == "bad-url"
    error, _ = failure(lambda: open_remote("http://host/cache", connect_timeout=1, timeout=value))  # type: ignore[arg-type]
    assert error.cause == "bad-url"


@pytest.mark.parametrize(
    ("url", "modules", "extra"),
    [
        ("redis://127.0.0.1:1/0", ("redis",), "safecache[redis]"),
        ("s3://bucket/prefix", ("boto3", "botocore", "botocore.session"), "safecache[s3]"),
    ],
)
def test_a_missing_client_library_says_which_extra_to_install(
    url: str, modules: tuple[str, ...], extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # the import fails, as if not installed
    error, _ = failure(lambda: open_remote(url, connect_timeout=1, timeout=1))
    assert error.cause == "client-missing"
    assert f"pip install '{extra}'" in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "http://alice:hunter2-secret@127.0.0.1:{port}/cache",
        "https://alice:hunter2-secret@127.0.0.1:{port}/cache",
        "redis://alice:hunter2-secret@127.0.0.1:{port}/0",
        "rediss://:hunter2-secret@127.0.0.1:{port}/0/prefix",
    ],
)
def test_credentials_never_show_in_display_or_errors(url: str) -> None:
    if url.startswith("redis"):
        pytest.importorskip("redis")
    remote = remote_at(url.format(port=dead_port()), timeout=1)
    assert "hunter2" not in remote.display and "alice" not in remote.display and "hunter2" not in repr(remote)
    for call in (lambda: remote.get(fresh(), max_size=1), lambda: remote.put(fresh(), b"x")):
        error, _ = failure(call)
        assert error.cause == "refused"
        assert "hunter2" not in str(error) and "hunter2" not in repr(error)
        assert "hunter2" not in str(pickle.loads(pickle.dumps(error)))


def test_a_token_from_the_environment_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_REMOTE_TOKEN", "tok-hunter2-secret")
    with canned_http(b"HTTP/1.1 403 Forbidden: tok-hunter2-secret\r\nContent-Length: 0\r\n\r\n") as port:
        error, _ = failure(lambda: remote_at(f"http://127.0.0.1:{port}/cache").get(fresh(), max_size=1))
    assert error.cause == "auth" and "hunter2" not in str(error)


def test_remote_error_is_one_line_and_survives_pickling() -> None:
    error = RemoteError("timeout", "http remote http://h/c: GET ac/00:\n timed out")
    assert "\n" not in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.cause, str(copy)) == ("timeout", str(error))


def test_importing_the_contract_imports_no_client() -> None:
    code = (
        "import sys, safecache._remote\n"
        "loaded = [m for m in ('redis', 'boto3', 'botocore', 'http.client', 'ssl') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
