"""The remote tier against real servers (nginx WebDAV, redis-server, moto's
S3): what docs/remote.md promises, shown end to end.

* Two "machines" (separate local roots, in separate spawned processes)
  sharing a remote: a put on one is a hit on the other, value and metadata
  together; then 4 + 4 processes (8 + 8 with ``--stress``) getting,
  putting and deleting locally for a few seconds: no exception, no wrong
  value, and hits that came from the remote.  (Trees stay local in this
  version: not tested here.)
* The server killed mid-run, then restarted on the same port: every call
  returns within a generous multiple of the configured timeouts, the breaker
  opens (one warning) and closes again (remote hits resume), nothing raises.
* Through a fault-injecting proxy (latency, resets, truncation, garbage,
  bit flips, a black hole): a machine reading what others uploaded gets the
  right value or a miss, never wrong bytes, never an exception.
* Signed remotes: entries signed with another key, or unsigned, are misses;
  ``read-only`` never writes.

Values are checkable: ``_workers.make_value`` derives them from the key, a
writer and a version, and ``check_value`` detects any other bytes; the
metadata carries a digest of its value.  Every load loop is bounded in count
and in time; no test asserts wall-clock time beyond "returned within 10x
the configured timeouts".
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
import remote_servers
from _workers import check_value, make_value
from fault_proxy import FaultProxy
from remote_servers import create_bucket, run_moto, run_nginx, run_redis, use_fake_aws

import safecache
from safecache import _keys, _remote, _tier
from safecache._remote_open import open_remote as open_store

KINDS = ("http", "redis", "s3")
GENEROUS = 10  # a call may take this many times its configured timeouts (never a tight bound)
BUCKET, VERSION = "shared", 1


# -- the servers -----------------------------------------------------------------------------------
@dataclass
class Server:
    """One running server, as a remote URL for any prefix (each test its own)."""

    kind: str
    port: int

    def url(self, prefix: str, port: int | None = None) -> str:
        port = port or self.port
        if self.kind == "http":
            return f"http://127.0.0.1:{port}/cache/{prefix}"
        if self.kind == "redis":
            return f"redis://127.0.0.1:{port}/3/{prefix}"
        return f"s3://{remote_servers.BUCKET}/{prefix}?endpoint_url=http://127.0.0.1:{port}"

    @property
    def upstream(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def _client_or_skip(kind: str) -> None:
    if kind == "redis":
        pytest.importorskip("redis", reason="redis-py is not installed (pip install 'safecache[redis]')")
    if kind == "s3":
        pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'safecache[s3]')")


@contextmanager
def serve(kind: str, workdir: Path) -> Iterator[Server]:
    """Start a server of ``kind`` (S3: with its bucket)."""
    _client_or_skip(kind)
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "http":
        with run_nginx(workdir) as nginx:
            yield Server(kind, nginx.port)
    elif kind == "redis":
        with run_redis(workdir) as redis:
            yield Server(kind, redis.port)
    else:
        with run_moto(workdir) as moto:
            create_bucket(moto)
            yield Server(kind, moto.port)


@contextmanager
def serve_on(kind: str, workdir: Path, port: int) -> Iterator[Server]:
    """Start a server of ``kind`` on ``port`` (a restart on the port a killed
    one used): the starters pick their port with ``free_port()``, so that is
    made to answer ``port`` once, while the server starts."""
    real = remote_servers.free_port
    wanted = [port]
    remote_servers.free_port = lambda: wanted.pop() if wanted else real()
    with ExitStack() as stack:
        try:
            server = stack.enter_context(serve(kind, workdir))
        finally:
            remote_servers.free_port = real
        assert server.port == port, f"the restarted {kind} server could not have its old port {port}"
        yield server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """One server of each kind for the module, each started on first use."""
    with ExitStack() as stack:

        class Started(dict):  # type: ignore[type-arg]
            def __missing__(self, kind: str) -> Server:
                server: Server = stack.enter_context(serve(kind, tmp_path_factory.mktemp(kind)))
                self[kind] = server
                return server

        yield Started()


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest, servers: dict[str, Server], monkeypatch: pytest.MonkeyPatch) -> Server:
    kind = request.param
    _client_or_skip(kind)
    if kind == "s3":
        use_fake_aws(monkeypatch)  # before the server starts: moto and boto3 see the fake keys
    return servers[kind]


def prefix() -> str:
    return "t" + os.urandom(6).hex()


def meta_for(key: str, value: bytes) -> bytes:
    """Metadata that names its key and its value: a reader can tell if it got
    another put's metadata with this value."""
    return f"{key}|{hashlib.sha256(value).hexdigest()[:32]}".encode()


def check_pair(key: str, value: bytes, meta: bytes) -> str | None:
    return check_value(key, value) or (None if meta == meta_for(key, value) else f"metadata of another put for {key!r}")


def remote_name(key: str) -> str:
    return _tier.object_name(BUCKET, VERSION, _keys.key_digest(key))


# -- two machines, many processes -------------------------------------------------------------------
def machine_worker(
    url: str, root: str, side: int, index: int, seeds: int, seconds: float, max_ops: int, barrier: Any, queue: Any
) -> None:
    """One process of one machine (``root``): puts its seed keys, reads the
    other machine's counterpart's (all must be remote hits), then gets,
    puts and deletes (locally) random shared keys until ``seconds`` or
    ``max_ops``.  Reports counts and every problem."""
    writer = side * 100 + index
    result: dict[str, Any] = {
        "side": side,
        "index": index,
        "ops": 0,
        "puts": 0,
        "gets": 0,
        "hits": 0,
        "misses": 0,
        "deletes": 0,
        "seed_hits": 0,
        "seed_remote_hits": 0,
        "problems": [],
        "exceptions": 0,
        "wrong": 0,
        "warnings": 0,
        "tier": {},
    }

    def wrong(problem: str) -> None:
        result["wrong"] += 1
        result["problems"].append(problem)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = safecache.Cache(root, remote=url, remote_timeout=5, remote_connect_timeout=2, auto_trim=False)
            bucket = cache.bucket(BUCKET, VERSION)
            tier = cache.tier
            assert tier is not None
            barrier.wait(timeout=180)  # every process started (spawning 16 on a busy machine is slow)
            for i in range(seeds):
                key = f"seed-{side}-{index}-{i}"
                value = make_value(key, writer, i, 500 + 97 * i)
                bucket.put(key, value, meta=meta_for(key, value))
            tier.flush(timeout=60)
            barrier.wait(timeout=120)  # every seed uploaded
            before = tier.stats.hits
            for i in range(seeds):
                key = f"seed-{1 - side}-{index}-{i}"
                got = bucket.get_with_meta(key)
                if got is None:
                    continue
                result["seed_hits"] += 1
                if mismatch := check_pair(key, *got):
                    wrong(mismatch)
            result["seed_remote_hits"] = tier.stats.hits - before
            barrier.wait(timeout=120)
            rng = random.Random(writer)
            keys = [f"k{i}" for i in range(150)]  # few enough that a slow server (moto) still shares some
            deadline = time.monotonic() + seconds
            seq = 0
            while time.monotonic() < deadline and result["ops"] < max_ops:
                result["ops"] += 1
                key = rng.choice(keys)
                roll = rng.random()
                if roll < 0.35:
                    seq += 1
                    value = make_value(key, writer, seq, rng.choice([100, 3000, 70_000]))
                    bucket.put(key, value, meta=meta_for(key, value))
                    result["puts"] += 1
                    continue
                if roll < 0.45:
                    bucket.delete(key)  # local only: the next get asks the remote again
                    result["deletes"] += 1
                    continue
                result["gets"] += 1
                problem: str | None = None
                if roll < 0.75:
                    pair = bucket.get_with_meta(key)
                    found = pair is not None
                    problem = None if pair is None else check_pair(key, *pair)
                elif roll < 0.95:
                    data = bucket.get(key)
                    found = data is not None
                    problem = None if data is None else check_value(key, data)
                else:
                    meta = bucket.get_meta(key)
                    found = meta is not None
                    if meta is not None and not meta.startswith(f"{key}|".encode()):
                        problem = f"metadata of another key for {key!r}: {meta!r}"
                result["hits" if found else "misses"] += 1
                if problem:
                    wrong(problem)
            cache.close()
            result["tier"] = tier.stats.as_dict()
            result["warnings"] = len(caught)
            result["warning_texts"] = sorted({str(w.message)[:200] for w in caught})
    except BaseException:  # noqa: BLE001 - the point: nothing may escape, and if it does the test says what
        result["exceptions"] += 1
        result["problems"].append("exception reached the caller:\n" + traceback.format_exc())
    queue.put(result)


@pytest.mark.parametrize("kind", KINDS)
def test_two_machines_share_values_and_metadata_under_load(
    kind: str, servers: dict[str, Server], tmp_path: Path, stress: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _client_or_skip(kind)
    if kind == "s3":
        use_fake_aws(monkeypatch)  # spawned children inherit the environment
    server = servers[kind]
    per_side = 8 if stress else 4
    seconds = 20.0 if stress else 3.0
    url = server.url(prefix())
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2 * per_side)
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=machine_worker,
            args=(url, str(tmp_path / f"machine-{side}"), side, index, 10, seconds, 200_000, barrier, queue),
        )
        for side in (0, 1)
        for index in range(per_side)
    ]
    for proc in procs:
        proc.start()
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 240 + seconds
        while len(results) < len(procs) and time.monotonic() < deadline:
            try:
                results.append(queue.get(timeout=1))
            except Empty:  # see whether every child died without reporting
                if all(not p.is_alive() for p in procs) and queue.empty():
                    break
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    assert len(results) == len(procs), (
        f"{len(procs) - len(results)} processes did not report (exit codes {[p.exitcode for p in procs]})"
    )
    problems = [p for r in results for p in r["problems"]]
    sides = {
        side: {
            name: sum(r[name] for r in results if r["side"] == side)
            for name in (
                "ops",
                "puts",
                "gets",
                "hits",
                "misses",
                "deletes",
                "seed_hits",
                "seed_remote_hits",
                "exceptions",
                "wrong",
            )
        }
        for side in (0, 1)
    }
    for side in (0, 1):
        tiers = [r["tier"] for r in results if r["side"] == side]
        sides[side]["remote_hits"] = sum(t.get("hits", 0) for t in tiers)
        sides[side]["remote_misses"] = sum(t.get("misses", 0) for t in tiers)
        sides[side]["uploads"] = sum(t.get("uploads", 0) for t in tiers)
        sides[side]["dropped"] = sum(t.get("dropped", 0) for t in tiers)
        sides[side]["remote_errors"] = sum(sum(t.get("errors", {}).values()) for t in tiers)
        sides[side]["refused"] = sum(sum(t.get("refused", {}).values()) for t in tiers)
    print(f"\n{kind}: {per_side}+{per_side} processes for {seconds:g} s: {sides}")
    assert not problems, "\n".join(problems[:10])
    for side in (0, 1):
        counts = sides[side]
        assert counts["exceptions"] == 0 and counts["wrong"] == 0
        # a put on one machine is a hit on the other: every seed, from the remote
        assert counts["seed_hits"] == counts["seed_remote_hits"] == 10 * per_side, counts
        assert counts["ops"] > 0 and counts["remote_hits"] > counts["seed_remote_hits"], counts


# -- the server killed, then restarted ----------------------------------------------------------------
class Load:
    """Threads on two machines: a writer puts fresh keys on ``a`` (each put
    followed by a flush of the upload queue: the writer goes at the server's
    pace), readers get recently uploaded keys on ``b`` that ``b`` has not
    got yet (local misses: ``b`` asks the remote).  Every put and get is
    timed; any exception is kept."""

    def __init__(self, a: safecache.Cache, b: safecache.Cache, pause: float = 0.005) -> None:
        self.a_cache = a
        self.a, self.b = a.bucket(BUCKET, VERSION), b.bucket(BUCKET, VERSION)
        self.pause = pause
        self.written: list[str] = []
        self.got: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.calls = 0
        self.slowest = 0.0
        self.wrong: list[str] = []
        self.exceptions: list[str] = []
        self.threads = [threading.Thread(target=self._write, daemon=True)]
        self.threads += [threading.Thread(target=self._read, args=(n,), daemon=True) for n in range(2)]

    def _timed(self, call: Any, *args: Any) -> Any:
        start = time.monotonic()
        try:
            return call(*args)
        finally:
            took = time.monotonic() - start
            with self.lock:
                self.calls += 1
                self.slowest = max(self.slowest, took)

    def _loop(self, step: Any) -> None:
        try:
            for _ in range(1_000_000):  # bounded in count; stopped by the test long before
                if self.stop.is_set():
                    return
                step()
                time.sleep(self.pause)
        except BaseException:  # noqa: BLE001 - kept for the assert
            self.exceptions.append(traceback.format_exc())

    def _write(self) -> None:
        seq = iter(range(10**9))
        tier = self.a_cache.tier
        assert tier is not None

        def step() -> None:
            key = f"w-{next(seq)}"
            self._timed(self.a.put, key, make_value(key, 0, 1, 300))
            tier.flush(timeout=30)  # uploaded, or dropped (a dead server, the breaker)
            with self.lock:
                self.written.append(key)

        self._loop(step)

    def _read(self, n: int) -> None:
        rng = random.Random(n)

        def step() -> None:
            with self.lock:
                fresh = [k for k in self.written[-40:] if k not in self.got]
            if not fresh:
                return
            key = rng.choice(fresh)
            value = self._timed(self.b.get, key)
            if value is not None:
                with self.lock:
                    self.got.add(key)
                if problem := check_value(key, value):
                    self.wrong.append(problem)

        self._loop(step)

    def __enter__(self) -> Load:  # noqa: PYI034
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def wait_for(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_killed_and_restarted_costs_bounded_time_and_raises_nothing(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stress: bool
) -> None:
    _client_or_skip(kind)
    if kind == "s3":
        use_fake_aws(monkeypatch)
    monkeypatch.setattr(_tier, "BREAKER_COOLDOWN", 0.5)
    timeouts: dict[str, Any] = {"remote_timeout": 0.5, "remote_connect_timeout": 0.5}
    bound = GENEROUS * (timeouts["remote_timeout"] + timeouts["remote_connect_timeout"])
    dead_for = 6.0 if stress else 1.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first: Any = serve(kind, tmp_path / "first")
        server = first.__enter__()
        url = server.url(prefix())
        a = safecache.Cache(tmp_path / "a", remote=url, auto_trim=False, **timeouts)
        b = safecache.Cache(tmp_path / "b", remote=url, auto_trim=False, **timeouts)
        assert a.tier is not None and b.tier is not None
        try:
            with Load(a, b) as load:
                up = wait_for(lambda: b.tier.stats.hits >= 5, 30)
                first.__exit__(None, None, None)  # the server is gone (terminated, connections closed)
                first = None
                hits_before = b.tier.stats.hits
                errors_before = sum(b.tier.stats.errors.values())
                calls_before = load.calls
                time.sleep(dead_for)
                dead_calls = load.calls - calls_before
                dead_errors = sum(b.tier.stats.errors.values()) - errors_before
                dead_hits = b.tier.stats.hits - hits_before
                with serve_on(kind, tmp_path / "second", server.port):
                    hits_restarted = b.tier.stats.hits
                    back = wait_for(lambda: b.tier.stats.hits >= hits_restarted + 5, 60)
                    hits_after = b.tier.stats.hits - hits_restarted
                    load.__exit__(None, None, None)
                    a.close()
                    b.close()
        finally:
            if first is not None:
                first.__exit__(None, None, None)
    breaker = [w for w in caught if "failed 3 times in a row" in str(w.message)]
    print(
        f"\n{kind}: {load.calls} calls, slowest {load.slowest:.3f} s (bound {bound:g} s); dead for {dead_for:g} s: "
        f"{dead_calls} calls, {dead_errors} failed requests on the reader, {dead_hits} remote hits; remote hits "
        f"before {hits_before}, after the restart {hits_after}; reader {b.tier.stats.as_dict()}; "
        f"writer uploads {a.tier.stats.uploads}, dropped {a.tier.stats.dropped}, errors {a.tier.stats.errors}; "
        f"breaker warnings {len(breaker)}"
    )
    assert not load.exceptions, load.exceptions[0]
    assert not load.wrong, load.wrong[:5]
    assert load.slowest < bound, f"a call took {load.slowest:.1f} s"
    assert up, "no remote hit before the server was killed"
    assert dead_errors >= 1 and breaker, "the failures did not open the breaker"
    assert dead_errors * 2 < dead_calls, f"the breaker did not spare requests: {dead_errors} of {dead_calls} failed"
    assert back and hits_after >= 5, "no remote hits after the restart: the breaker did not close"


# -- through a fault-injecting proxy --------------------------------------------------------------------
VALUE_MARK = b"|0|1|3000|"  # in every value (make_value's prefix), nowhere before it in an entry
KEY_MARK = b"KEYMARK"  # in every key, which an entry holds before its value
PROXY_CASES: dict[str, dict[str, Any]] = {
    "latency": {"mode": "latency", "latency": 0.05},
    "reset": {"mode": "reset"},
    "truncate": {"mode": "truncate"},
    "garbage": {"mode": "garbage"},
    "bitflip-body": {"mode": "bitflip", "marker": b"\r\n\r\n"},  # the first byte of an HTTP body
    "bitflip-key": {"mode": "bitflip", "marker": KEY_MARK},
    "bitflip-value": {"mode": "bitflip", "marker": VALUE_MARK},
    "blackhole": {"mode": "blackhole"},
}
CUTS = [0, 1, 7, 40, 200, 700, 2000, 3100, 100_000]  # where a reset or truncation falls in an answer


def proxy_value(key: str) -> bytes:
    return make_value(key, 0, 1, 3000)


@pytest.mark.parametrize("case", list(PROXY_CASES))
def test_faults_between_machine_and_server_never_yield_a_wrong_value(
    server: Server, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, Any] = dict(PROXY_CASES[case])
    mode = options.pop("mode")
    if mode != "blackhole":
        # Every call asks the server (through the fault): no breaker to hide behind.
        monkeypatch.setattr(_tier, "BREAKER_COOLDOWN", 0.0)
    # Where a fault means waiting for the timeout (garbage a client waits to
    # make sense of, a black hole), a shorter one keeps the test short.
    wait = 0.25 if case in ("garbage", "blackhole") else 0.5
    timeouts: dict[str, Any] = {"remote_timeout": wait, "remote_connect_timeout": wait}
    bound = GENEROUS * (timeouts["remote_timeout"] + timeouts["remote_connect_timeout"])
    name = prefix()
    direct_keys = [f"{KEY_MARK.decode()}-direct-{i}" for i in range(6)]
    proxied_keys = [f"{KEY_MARK.decode()}-proxied-{i}" for i in range(6)]
    results = {"right": 0, "miss": 0, "wrong": 0}
    slowest = 0.0
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        direct = safecache.Cache(tmp_path / "direct", remote=server.url(name), auto_trim=False)
        for key in direct_keys:
            value = proxy_value(key)
            direct.bucket(BUCKET, VERSION).put(key, value, meta=meta_for(key, value))
        direct.close()
        with FaultProxy(server.upstream, mode, seed=len(case), **options) as proxy:
            via = server.url(name, port=proxy.port)
            writer = safecache.Cache(tmp_path / "writer", remote=via, auto_trim=False, **timeouts)
            for n, key in enumerate(proxied_keys):
                proxy.after = CUTS[(4 * n + 8) % len(CUTS)]  # the first upload whole, the others cut
                value = proxy_value(key)
                writer.bucket(BUCKET, VERSION).put(key, value, meta=meta_for(key, value))
                writer.tier.flush(timeout=30)  # type: ignore[union-attr]
            writer.close()
            reader = safecache.Cache(tmp_path / "reader", remote=via, auto_trim=False, **timeouts)
            bucket = reader.bucket(BUCKET, VERSION)
            for n, key in enumerate(direct_keys + proxied_keys):
                proxy.after = CUTS[(4 * n) % len(CUTS)]  # every cut, and some answers whole
                if mode in ("bitflip", "reset", "truncate"):
                    proxy.drop()  # a new connection for each read: one fault each
                    time.sleep(0.02)
                start = time.monotonic()
                got = bucket.get_with_meta(key) if n % 2 else bucket.get(key)
                slowest = max(slowest, time.monotonic() - start)
                if got is None:
                    results["miss"] += 1
                elif (got if isinstance(got, bytes) else got[0]) == proxy_value(key) and (
                    isinstance(got, bytes) or got[1] == meta_for(key, got[0])
                ):
                    results["right"] += 1
                else:
                    results["wrong"] += 1
            stats = reader.tier.stats.as_dict()  # type: ignore[union-attr]
            reader.close()
    # What the reader stored locally from the remote is right too.
    local = safecache.Cache(tmp_path / "reader", auto_trim=False).bucket(BUCKET, VERSION)
    stored = [local.get(key) for key in direct_keys + proxied_keys]
    stored_wrong = [k for k, v in zip(direct_keys + proxied_keys, stored) if v is not None and v != proxy_value(k)]
    print(
        f"\n{server.kind} {case}: {results}, slowest {slowest:.3f} s, {proxy.connections} connections; reader {stats}"
    )
    assert results["wrong"] == 0 and not stored_wrong, (results, stored_wrong)
    assert slowest < bound, f"a get took {slowest:.1f} s"
    assert results["right"] + results["miss"] == len(direct_keys) + len(proxied_keys)
    if case == "latency":
        assert results["right"] >= 1, "nothing came through a merely slow proxy"
    if case in ("bitflip-value", "bitflip-key"):
        # the flip reached the tier (or, for S3, botocore's own checksum) and was caught
        caught = sum(stats["refused"].values()) + sum(stats["errors"].values())  # type: ignore[union-attr]
        assert caught >= 1 and results["miss"] >= 1, stats


# -- signed remotes ---------------------------------------------------------------------------------------
def put_as(
    root: Path, url: str, key: str | None, items: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> safecache.Cache:
    """Put ``items`` on a machine at ``root`` whose signing key is ``key``; close it (uploads flushed)."""
    if key is None:
        monkeypatch.delenv("SAFECACHE_REMOTE_KEY", raising=False)
    else:
        monkeypatch.setenv("SAFECACHE_REMOTE_KEY", key)
    cache = safecache.Cache(root, remote=url, auto_trim=False, **kw)
    for k, v in items.items():
        cache.bucket(BUCKET, VERSION).put(k, v, meta=meta_for(k, v))
    cache.close()
    return cache


def test_signed_remote_entries_with_another_key_or_unsigned_are_misses(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.url(prefix())
    good = {f"good-{i}": make_value(f"good-{i}", 1, i, 200 + i) for i in range(5)}
    other = {f"other-{i}": make_value(f"other-{i}", 2, i, 200 + i) for i in range(5)}
    unsigned = {f"unsigned-{i}": make_value(f"unsigned-{i}", 3, i, 200 + i) for i in range(5)}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        put_as(tmp_path / "trusted", url, "the-fleet-secret", good, monkeypatch)
        put_as(tmp_path / "intruder", url, "some-other-secret", other, monkeypatch)
        put_as(tmp_path / "unsigned", url, None, unsigned, monkeypatch)
        with open_remote(url) as store:
            assert all(store.get(remote_name(k), max_size=10**6) is not None for k in {**good, **other, **unsigned})
            # a good signed entry copied to another key's name: signed over its own name
            store.put(remote_name("moved"), store.get(remote_name("good-0"), max_size=10**6) or b"")
        monkeypatch.setenv("SAFECACHE_REMOTE_KEY", "the-fleet-secret")
        reader = safecache.Cache(tmp_path / "reader", remote=url, auto_trim=False)
        bucket = reader.bucket(BUCKET, VERSION)
        assert all(bucket.get_with_meta(k) == (v, meta_for(k, v)) for k, v in good.items())
        assert [bucket.get(k) for k in other] == [None] * len(other)
        assert [bucket.get(k) for k in unsigned] == [None] * len(unsigned)
        assert bucket.get("moved") is None
        stats = reader.tier.stats  # type: ignore[union-attr]
        reader.close()
    assert stats.hits == len(good)
    assert stats.refused.get("bad-signature", 0) == len(other) + 1
    assert stats.refused.get("unsigned", 0) == len(unsigned)
    # nothing refused was stored locally
    local = safecache.Cache(tmp_path / "reader", auto_trim=False).bucket(BUCKET, VERSION)
    assert all(local.get(k) is None for k in [*other, *unsigned, "moved"])


def test_read_only_reads_signed_entries_and_never_writes(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.url(prefix())
    trusted = {f"main-{i}": make_value(f"main-{i}", 1, i, 300) for i in range(5)}
    pull_request = {f"pr-{i}": make_value(f"pr-{i}", 2, i, 300) for i in range(5)}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        put_as(tmp_path / "main", url, "the-fleet-secret", trusted, monkeypatch)
        # a pull-request build: reads what main stored, and its own puts (and what it
        # fetched) stay local, with or without the key
        for n, key in enumerate(("the-fleet-secret", None)):
            cache = put_as(tmp_path / f"pr{n}", url, key, pull_request, monkeypatch, remote_mode="read-only")
            assert cache.tier is not None and cache.tier.stats.uploads == 0
            monkeypatch.setenv("SAFECACHE_REMOTE_KEY", "the-fleet-secret")
            again = safecache.Cache(tmp_path / f"pr{n}", remote=url, remote_mode="read-only", auto_trim=False)
            assert all(again.bucket(BUCKET, VERSION).get(k) == v for k, v in trusted.items())
            assert again.tier is not None and again.tier.stats.hits == len(trusted)
            again.close()
            assert again.tier.stats.uploads == 0
        with open_remote(url) as store:
            assert all(store.get(remote_name(k), max_size=10**6) is None for k in pull_request)
            assert all(store.get(remote_name(k), max_size=10**6) is not None for k in trusted)


@contextmanager
def open_remote(url: str) -> Iterator[_remote.RemoteStore]:
    store = open_store(url, connect_timeout=2, timeout=10)
    try:
        yield store
    finally:
        store.close()


# -- regressions in the tier found by these tests ------------------------------------------------------------
def test_entries_replaced_before_their_upload_leave_nothing_counted_in_the_queue(
    servers: dict[str, Server], tmp_path: Path
) -> None:
    """The queue counted the bytes put and discounted the bytes read at upload
    time: an entry replaced by a smaller one before its upload left the
    difference counted forever, so ``close()`` waited out its whole flush
    timeout (10 s) with nothing queued, and enough of it would have made the
    queue drop every upload as full."""
    server = servers["http"]
    with FaultProxy(server.upstream, "latency", latency=0.02) as proxy:  # uploads slower than puts: a queue builds
        cache = safecache.Cache(tmp_path / "a", remote=server.url(prefix(), port=proxy.port), auto_trim=False)
        tier = cache.tier
        assert tier is not None
        bucket = cache.bucket(BUCKET, VERSION)
        for i in range(30):
            bucket.put("k", make_value("k", 0, i, 70_000 if i % 2 == 0 else 10))
        assert wait_for(lambda: tier.stats.uploads + tier.stats.dropped == 30, 60), tier.stats.as_dict()
        assert wait_for(lambda: tier._queued_bytes == 0, 5), f"{tier._queued_bytes} bytes still counted, none queued"
        cache.close()
        assert tier.stats.dropped == 0


def test_after_the_cooldown_one_failed_request_opens_the_breaker_again(tmp_path: Path) -> None:
    """docs/remote.md: after the cooldown "one request tries again".  The
    breaker used to start counting from zero, so a server still dead (or
    hanging: each failure a full timeout) was asked three more times per
    cooldown."""
    url = f"http://127.0.0.1:{remote_servers.dead_port()}/cache"
    cache = safecache.Cache(tmp_path / "a", remote=url, auto_trim=False, remote_connect_timeout=0.5, remote_timeout=0.5)
    tier = cache.tier
    assert tier is not None
    bucket = cache.bucket(BUCKET, VERSION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(5):
            assert bucket.get(f"k{i}") is None
        assert tier.stats.errors == {"refused": _tier.BREAKER_FAILURES}
        for _ in range(3):
            tier._open_until = 0.0  # the cooldown is over (without waiting 30 s for it)
            for i in range(5):
                assert bucket.get(f"k{i}") is None
        assert tier.stats.errors == {"refused": _tier.BREAKER_FAILURES + 3}, tier.stats.errors
    assert len([w for w in caught if "failed 3 times" in str(w.message)]) == 1
    cache.close()


def _fill_tree(path: str) -> None:
    os.makedirs(os.path.join(path, "pkg"))
    Path(path, "pkg", "__init__.py").write_text("VERSION = 1\n")
    Path(path, "pkg", "data.bin").write_bytes(os.urandom(70_000))
    os.symlink("__init__.py", os.path.join(path, "pkg", "alias.py"))


def test_trees_travel_between_machines_verified_against_their_manifest(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.url(prefix())
    monkeypatch.setenv("SAFECACHE_REMOTE_KEY", "the-fleet-secret")
    a = safecache.Cache(tmp_path / "a", remote=url, auto_trim=False)
    made = a.bucket("wheels").trees.get_or_create("pkg-1.0", _fill_tree)
    data = (Path(made.path) / "pkg" / "data.bin").read_bytes()
    a.close()
    b = safecache.Cache(tmp_path / "b", remote=url, auto_trim=False)
    tree = b.bucket("wheels").trees.get("pkg-1.0")
    assert tree is not None and tree.verify() == []
    report = tree.place(tmp_path / "env", mode="copy")
    assert report.complete
    assert (tmp_path / "env" / "pkg" / "data.bin").read_bytes() == data
    assert os.readlink(tmp_path / "env" / "pkg" / "alias.py") == "__init__.py"
    b.close()
    # a machine with another key refuses the tree
    monkeypatch.setenv("SAFECACHE_REMOTE_KEY", "another-secret")
    c = safecache.Cache(tmp_path / "c", remote=url, auto_trim=False)
    assert c.bucket("wheels").trees.get("pkg-1.0") is None
    assert c.tier is not None and c.tier.stats.refused.get("bad-signature") == 1
    c.close()
