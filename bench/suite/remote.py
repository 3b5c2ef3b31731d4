"""Section 10: the remote tier against the bare client of each server, a
put with its background upload against a local-only put, and a CI runner's
fresh cache filled through the remote against restoring a tar archive.

One process; each server started on a free loopback port by the starters the
tests use (``tests/remote_servers.py``): nginx serving the Bazel HTTP cache
layout over WebDAV, ``redis-server``, and moto's S3 (a Python server: its
figures say more about moto than about S3).  A server that is not installed
is skipped, with the reason, and its targets are listed as not measured.
Contenders interleaved A B, B A, ... after untimed warm-up rounds; a ratio is
the median of the per-round ratios of the two batches:

* **remote hit**: a fresh local root each round (opened, its connection
  made by one untimed get, and its fan-out directories made, as in a cache
  in use, before the batch), then ``bucket.get(key)`` of
  ``n`` keys another machine uploaded: each a local miss, a remote ``GET``,
  the envelope and entry checked (CRCs, key digest), the entry stored
  locally.  Against the bare client fetching the same objects on one kept
  connection: redis-py ``GET``, boto3 ``get_object`` (configured as the
  store configures it: one attempt, checksums only when required), and
  ``http.client`` ``GET``.  1 KiB values (the target) and 64 KiB.
* **put with upload**: ``bucket.put`` of ``n`` new 1 KiB entries in a cache
  with the remote (each entry queued; the upload thread sends them while the
  batch runs, competing for the interpreter) against the same puts in a
  cache without one.  The queue is flushed after each timed batch, untimed.
* **CI runner**: a previous job stored ``N`` entries (200 B to 2 KiB) with
  the remote and its cache directory was archived with ``tar -cf`` and put on
  the same server.  A fresh runner with an empty cache then either gets all
  ``N`` keys through the remote (one remote hit each, sequentially, as a tool
  that needs them all would), or restores the archive the usual way: downloads
  it with the bare client and extracts it with ``tar -xf``.  Neither side
  counts what the previous job paid (its background uploads; creating and
  uploading the archive).  A tool that needs only some entries fetches only
  those through the remote; a restore always takes all.

Nothing here fails on a slow result: ratios are reported against their
targets.  The section fails only if a timed remote get misses (the figures
would not be remote hits).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from .common import (
    REPO,
    Ctx,
    KiB,
    fmt_ratio,
    fmt_us,
    interleaved,
    md_table,
    optional_module,
    paired_ratio,
    perf_ns,
    summary_us,
    target,
)

TITLE = "10. Remote tier: a remote hit against the bare client, put with upload, a CI runner's fresh cache"
TARGETS = {"hit_vs_client": 1.3, "put_vs_local": 1.1}
SOURCE = "issue: remote tiers (must show: bench)"
KINDS = ("http", "redis", "s3")
SERVER = {"http": "nginx WebDAV", "redis": "redis-server", "s3": "moto S3"}
CLIENT = {"http": "http.client GET", "redis": "redis-py GET", "s3": "boto3 get_object"}
CLIENT_LIB = {"http": None, "redis": "redis", "s3": "boto3"}
BUCKET, VERSION = "bench", 1
PREFIX = "bench"
S3_BUCKET = "safecache-bench"


def config(ctx: Ctx) -> dict[str, Any]:
    picked: dict[str, Any] = ctx.pick(
        full={
            "n_hit": {1024: 300, 64 * KiB: 60},
            "n_put": 1000,
            "reps": 15,
            "warmup": 2,
            "ci_entries": 10_000,
            "ci_reps": 3,
        },
        quick={
            "n_hit": {1024: 100, 64 * KiB: 20},
            "n_put": 200,
            "reps": 5,
            "warmup": 1,
            "ci_entries": 1000,
            "ci_reps": 1,
        },
        smoke={"n_hit": {1024: 10}, "n_put": 20, "reps": 2, "warmup": 1, "ci_entries": 50, "ci_reps": 1},
    )
    return picked


# -- servers and bare clients --------------------------------------------------------------------
class Unavailable(Exception):
    """A server or client that is not installed here: the reason, for the report."""


def _starters() -> Any:
    """tests/remote_servers.py: the starters the tests use (one copy of them)."""
    tests = os.path.join(REPO, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    try:
        import remote_servers
    except ImportError as exc:  # it skips through pytest, which it imports
        raise Unavailable(f"the server starters (tests/remote_servers.py) cannot be imported: {exc}") from None
    return remote_servers


@contextmanager
def _skips_as_unavailable() -> Iterator[None]:
    """The starters skip a test (pytest.skip) when a server is missing: here
    that is a reason to report."""
    try:
        yield
    except BaseException as exc:
        if type(exc).__name__ in ("Skipped", "SkipTest"):
            raise Unavailable(str(getattr(exc, "msg", exc))) from None
        raise


@contextmanager
def _fake_aws(servers: Any) -> Iterator[None]:
    """boto3 and moto see fake keys and none of this machine's AWS settings."""
    saved = dict(os.environ)
    for name in servers._AWS_UNSET:
        os.environ.pop(name, None)
    os.environ.update(servers.FAKE_AWS)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Remote:
    """A running server: the tier's URL and a bare client of the same objects."""

    def __init__(self, kind: str, port: int, stack: ExitStack) -> None:
        self.kind, self.port = kind, port
        self._client: Any = None
        if kind == "http":
            import http.client

            self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            stack.callback(self._conn.close)
            self.url = f"http://127.0.0.1:{port}/cache/{PREFIX}"
        elif kind == "redis":
            import redis

            self._client = redis.Redis(host="127.0.0.1", port=port, db=0)
            stack.callback(self._client.close)
            self.url = f"redis://127.0.0.1:{port}/0/{PREFIX}"
        else:
            import boto3
            from botocore.config import Config

            options = {
                "connect_timeout": 2,
                "read_timeout": 30,
                "retries": {"total_max_attempts": 1, "mode": "standard"},
            }
            options["s3"] = {"addressing_style": "path"}
            known = getattr(Config, "OPTION_DEFAULTS", {})
            for name in ("request_checksum_calculation", "response_checksum_validation"):
                if name in known:
                    options[name] = "when_required"
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=f"http://127.0.0.1:{port}", config=Config(**options)
            )
            self._client.create_bucket(Bucket=S3_BUCKET)
            stack.callback(self._client.close)
            self.url = f"s3://{S3_BUCKET}/{PREFIX}?endpoint_url=http://127.0.0.1:{port}"

    def _http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request on the kept connection; once more on a new one if the
        server closed it while idle (its keep-alive timeout), as any client does."""
        import http.client

        for attempt in (0, 1):
            try:
                self._conn.request(method, path, body=body)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                self._conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def path(self, name: str) -> str:
        """Where the bare client finds object ``name``."""
        return f"/cache/{PREFIX}/{name}" if self.kind == "http" else f"{PREFIX}/{name}"

    def getter(self) -> Callable[[str], bytes | None]:
        """The bare client's one-object read (a path from :meth:`path`)."""
        if self.kind == "http":

            def get(path: str) -> bytes | None:
                status, data = self._http("GET", path)
                return data if status == 200 else None

            return get
        if self.kind == "redis":
            return self._client.get
        client, bucket = self._client, S3_BUCKET

        def get_object(path: str) -> bytes | None:
            return client.get_object(Bucket=bucket, Key=path)["Body"].read()

        return get_object

    def put(self, path: str, data: bytes) -> None:
        if self.kind == "http":
            status, _ = self._http("PUT", path, data)
            if status not in (200, 201, 204):
                raise RuntimeError(f"PUT {path}: HTTP {status}")
        elif self.kind == "redis":
            self._client.set(path, data)
        else:
            self._client.put_object(Bucket=S3_BUCKET, Key=path, Body=data)


@contextmanager
def serve(kind: str, workdir: str) -> Iterator[Remote]:
    """The server of ``kind`` and its bare client; :class:`Unavailable` if
    the server or its client library is not installed."""
    lib = CLIENT_LIB[kind]
    if lib is not None:
        _, why = optional_module(lib)
        if why:
            raise Unavailable(f"{why} (pip install 'safecache[{kind}]')")
    servers = _starters()
    from pathlib import Path

    with ExitStack() as stack:
        if kind == "s3":
            stack.enter_context(_fake_aws(servers))
        start = {"http": servers.run_nginx, "redis": servers.run_redis, "s3": servers.run_moto}[kind]
        with _skips_as_unavailable():
            server = stack.enter_context(start(Path(workdir)))
        yield Remote(kind, server.port, stack)


# -- the measurements ------------------------------------------------------------------------------
def _value(key: str, size: int) -> bytes:
    head = key.encode() + b"|"
    return (head * (size // len(head) + 1))[:size]


def _upload(cache: Any, bucket: Any, items: list[tuple[str, bytes]]) -> None:
    """Put ``items`` and see every one uploaded (in chunks the queue holds)."""
    tier = cache.tier
    for start in range(0, len(items), 500):
        for key, value in items[start : start + 500]:
            bucket.put(key, value)
        tier.flush(timeout=300)
    if tier.stats.dropped or tier.stats.uploads < len(items):
        raise RuntimeError(f"uploads failed: {tier.stats.as_dict()}")


def measure_hits(ctx: Ctx, remote: Remote, size: int, n: int, cfg: dict[str, Any], tag: str) -> dict[str, Any]:
    import safecache
    from safecache import _keys, _tier

    keys = [f"hit-{size}-{i}" for i in range(n)]
    writer = safecache.Cache(ctx.subdir(f"{tag}/hit-{size}-writer"), remote=remote.url, auto_trim=False)
    _upload(writer, writer.bucket(BUCKET, VERSION), [(k, _value(k, size)) for k in [*keys, "warm"]])
    writer.close()
    paths = [remote.path(_tier.object_name(BUCKET, VERSION, _keys.key_digest(k))) for k in keys]
    client_get = remote.getter()
    if any(client_get(p) is None for p in paths):
        raise RuntimeError("the bare client does not find the uploaded objects")

    def prepare(r: int) -> Any:
        reader = safecache.Cache(ctx.subdir(f"{tag}/hit-{size}-r{r}"), remote=remote.url, auto_trim=False)
        bucket = reader.bucket(BUCKET, VERSION)
        if bucket.get("warm") is None:  # the connection made, the client imported
            raise RuntimeError("the warm-up get missed")
        assert bucket.directory is not None
        for i in range(256):  # the fan-out directories, as in a cache in use (a fresh one pays for them once)
            os.makedirs(os.path.join(bucket.directory, f"{i:02x}"), exist_ok=True)
        return reader, bucket

    def tier_hits(data: Any) -> int:
        reader, bucket = data
        get = bucket.get
        before = reader.tier.stats.hits
        t0 = perf_ns()
        for k in keys:
            get(k)
        elapsed = perf_ns() - t0
        if reader.tier.stats.hits - before != n:
            raise RuntimeError(f"a timed get was not a remote hit: {reader.tier.stats.as_dict()}")
        reader.close()
        return elapsed

    def bare(_: Any) -> int:
        t0 = perf_ns()
        for p in paths:
            client_get(p)
        return perf_ns() - t0

    contenders = {"safecache remote hit": tier_hits, CLIENT[remote.kind]: bare}
    ctx.log(f"  [remote {remote.kind}] {cfg['reps']} rounds of {n} remote hits of {size // KiB} KiB ...")
    wall, cpu = interleaved(contenders, cfg["reps"], cfg["warmup"], prepare)
    return {
        "n": n,
        "results": {name: summary_us(wall[name], n, cpu[name]) for name in contenders},
        "ratio": paired_ratio(wall["safecache remote hit"], wall[CLIENT[remote.kind]]),
    }


def measure_puts(ctx: Ctx, remote: Remote, cfg: dict[str, Any], tag: str) -> dict[str, Any]:
    import safecache

    n = cfg["n_put"]
    value = os.urandom(KiB)
    with_remote = safecache.Cache(ctx.subdir(f"{tag}/put-remote"), remote=remote.url, auto_trim=False)
    local = safecache.Cache(ctx.subdir(f"{tag}/put-local"), auto_trim=False)
    remote_bucket, local_bucket = with_remote.bucket(BUCKET, VERSION), local.bucket(BUCKET, VERSION)
    tier = with_remote.tier
    assert tier is not None

    def prepare(r: int) -> list[str]:
        return [f"put-{r}-{i}" for i in range(n)]

    def put_with_upload(keys: list[str]) -> int:
        put = remote_bucket.put
        t0 = perf_ns()
        for k in keys:
            put(k, value)
        elapsed = perf_ns() - t0
        tier.flush(timeout=300)  # untimed: the next batch starts with an empty queue
        return elapsed

    def put_local(keys: list[str]) -> int:
        put = local_bucket.put
        t0 = perf_ns()
        for k in keys:
            put(k, value)
        return perf_ns() - t0

    contenders: dict[str, Callable[[Any], int]] = {
        "put, background upload": put_with_upload,
        "put, local only": put_local,
    }
    ctx.log(f"  [remote {remote.kind}] {cfg['reps']} rounds of {n} puts of 1 KiB, with and without the remote ...")
    wall, cpu = interleaved(contenders, cfg["reps"], cfg["warmup"], prepare)
    stats = tier.stats.as_dict()
    with_remote.close()
    local.close()
    return {
        "n": n,
        "results": {name: summary_us(wall[name], n, cpu[name]) for name in contenders},
        "ratio": paired_ratio(wall["put, background upload"], wall["put, local only"]),
        "uploads": stats["uploads"],
        "dropped": stats["dropped"],
    }


def measure_ci(ctx: Ctx, remote: Remote, cfg: dict[str, Any], tag: str) -> dict[str, Any]:
    import safecache

    tar = shutil.which("tar")
    n = cfg["ci_entries"]
    keys = [f"src/pkg/module_{i:05d}.py" for i in range(n)]
    previous_root = ctx.subdir(f"{tag}/ci-previous")
    previous = safecache.Cache(previous_root, remote=remote.url, auto_trim=False)
    ctx.log(f"  [remote {remote.kind}] CI runner: a previous job stores and uploads {n:,} entries ...")
    _upload(previous, previous.bucket("ci", 1), [(k, _value(k, 200 + (i * 397) % 1849)) for i, k in enumerate(keys)])
    previous.close()
    out: dict[str, Any] = {"entries": n, "runs": []}
    archive_path = f"/cache/{PREFIX}/ci-archive.tar" if remote.kind == "http" else f"{PREFIX}/ci-archive.tar"
    if tar is None:
        out["tar"] = "tar is not installed: the archive restore is not measured"
    else:
        archive = os.path.join(ctx.subdir(f"{tag}/ci-archive"), "cache.tar")
        subprocess.run([tar, "-cf", archive, "-C", previous_root, "."], check=True)
        with open(archive, "rb") as f:
            blob = f.read()
        out["archive_bytes"] = len(blob)
        remote.put(archive_path, blob)
        del blob
    client_get = remote.getter()
    deadline = time.monotonic() + 900
    for run in range(cfg["ci_reps"]):
        if run and time.monotonic() > deadline:
            break
        fresh = safecache.Cache(ctx.subdir(f"{tag}/ci-fresh-{run}"), remote=remote.url, auto_trim=False)
        bucket = fresh.bucket("ci", 1)
        t0 = perf_ns()
        for k in keys:
            bucket.get(k)
        through_remote = perf_ns() - t0
        hits = fresh.tier.stats.hits if fresh.tier is not None else 0
        fresh.close()
        if hits != n:
            raise RuntimeError(f"the fresh runner got {hits} of {n} entries through the remote")
        row: dict[str, Any] = {"through_remote_s": through_remote / 1e9}
        if tar is not None:
            restored = ctx.subdir(f"{tag}/ci-restored-{run}")
            download = os.path.join(ctx.subdir(f"{tag}/ci-download-{run}"), "cache.tar")
            t0 = perf_ns()
            data = client_get(archive_path)
            if data is None:
                raise RuntimeError("the archive is not on the server")
            with open(download, "wb") as f:
                f.write(data)
            t1 = perf_ns()
            subprocess.run([tar, "-xf", download, "-C", restored], check=True)
            t2 = perf_ns()
            row.update(download_s=(t1 - t0) / 1e9, extract_s=(t2 - t1) / 1e9, restore_s=(t2 - t0) / 1e9)
            check = safecache.Cache(restored, auto_trim=False).bucket("ci", 1)
            if check.get(keys[0]) is None or check.get(keys[-1]) is None:
                raise RuntimeError("the restored archive is not a working cache")
        out["runs"].append(row)
        if time.monotonic() > deadline:
            break
    runs = out["runs"]
    out["through_remote_s"] = sorted(r["through_remote_s"] for r in runs)[len(runs) // 2]
    if tar is not None:
        for name in ("download_s", "extract_s", "restore_s"):
            out[name] = sorted(r[name] for r in runs)[len(runs) // 2]
        out["ratio"] = out["through_remote_s"] / out["restore_s"]
    return out


def run(ctx: Ctx) -> dict[str, Any]:
    cfg = config(ctx)
    out: dict[str, Any] = {"config": {**cfg, "n_hit": {str(k): v for k, v in cfg["n_hit"].items()}}, "servers": {}}
    for kind in KINDS:
        tag = f"remote-{kind}"
        try:
            with serve(kind, ctx.subdir(f"{tag}/server")) as remote:
                ctx.log(f"  [remote {kind}] {SERVER[kind]} on 127.0.0.1:{remote.port}")
                result: dict[str, Any] = {"hit": {}}
                for size, n in cfg["n_hit"].items():
                    result["hit"][str(size)] = measure_hits(ctx, remote, size, n, cfg, tag)
                result["put"] = measure_puts(ctx, remote, cfg, tag)
                result["ci"] = measure_ci(ctx, remote, cfg, tag)
        except Unavailable as why:
            ctx.log(f"  [remote {kind}] skipped: {why}")
            out["servers"][kind] = {"skipped": str(why)}
            continue
        out["servers"][kind] = result
    return out


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    servers = (result or {}).get("servers", {})
    out = []
    for kind in KINDS:
        found = servers.get(kind, {})
        why = f"skipped: {found['skipped']}" if "skipped" in found else ""
        hit = found.get("hit", {}).get(str(KiB), {}).get("ratio")
        put = found.get("put", {}).get("ratio")
        out.append(
            target(
                "10",
                f"remote hit within 1.3x the bare client ({SERVER[kind]}, {CLIENT[kind]}, 1 KiB)",
                hit,
                TARGETS["hit_vs_client"],
                note=why,
                source=SOURCE,
            )
        )
        out.append(
            target(
                "10",
                f"put with background upload within 1.1x a local-only put ({SERVER[kind]}, 1 KiB)",
                put,
                TARGETS["put_vs_local"],
                note=why,
                source=SOURCE,
            )
        )
    return out


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown(result: dict[str, Any]) -> str:
    servers = result["servers"]
    cfg = result["config"]
    hit_rows: list[list[object]] = []
    put_rows: list[list[object]] = []
    ci_rows: list[list[object]] = []
    skipped: list[str] = []
    for kind in KINDS:
        found = servers.get(kind)
        if found is None:
            continue
        if "skipped" in found:
            skipped.append(f"{SERVER[kind]}: {found['skipped']}")
            continue
        for size, hit in found["hit"].items():
            r = hit["results"]
            mine, bare = r["safecache remote hit"], r[CLIENT[kind]]
            hit_rows.append(
                [
                    SERVER[kind],
                    f"{int(size) // KiB} KiB",
                    fmt_us(mine["median_us"]),
                    f"{fmt_us(bare['median_us'])} ({CLIENT[kind]})",
                    fmt_ratio(hit["ratio"]),
                    fmt_us(mine.get("cpu_median_us")),
                ]
            )
        put = found["put"]
        r = put["results"]
        put_rows.append(
            [
                SERVER[kind],
                fmt_us(r["put, background upload"]["median_us"]),
                fmt_us(r["put, local only"]["median_us"]),
                fmt_ratio(put["ratio"]),
                f"{put['uploads']:,} ({put['dropped']:,} dropped)",
            ]
        )
        ci = found["ci"]
        ci_rows.append(
            [
                SERVER[kind],
                f"{ci['entries']:,}",
                _fmt_s(ci["through_remote_s"]),
                f"{ci['through_remote_s'] / ci['entries'] * 1e6:.0f} µs",
                _fmt_s(ci.get("download_s")),
                _fmt_s(ci.get("extract_s")),
                _fmt_s(ci.get("restore_s")),
                fmt_ratio(ci.get("ratio")),
            ]
        )
    parts = [
        f"{cfg['reps']} interleaved rounds after {cfg['warmup']} untimed ones; batches of "
        + ", ".join(f"{n} gets of {int(size) // KiB} KiB" for size, n in cfg["n_hit"].items())
        + f", of {cfg['n_put']} puts; the CI runner {cfg['ci_reps']} time(s) with {cfg['ci_entries']:,} entries."
    ]
    if skipped:
        parts.append("Not measured: " + "; ".join(skipped) + ".")
    if hit_rows:
        parts.append(
            "A remote hit (per get, median) against the bare client fetching the same object:\n\n"
            + md_table(["server", "value", "safecache", "bare client", "ratio", "CPU per get"], hit_rows, "llrrrr")
        )
        parts.append(
            "A put, with its background upload and without a remote (per put, median):\n\n"
            + md_table(["server", "with the remote", "local only", "ratio", "uploads"], put_rows, "lrrrr")
        )
        parts.append(
            "A fresh CI runner reaching every entry of the previous job: through the remote (one remote hit per "
            "entry), or by restoring a tar archive of the cache directory from the same server (download with the "
            "bare client, then `tar -xf`):\n\n"
            + md_table(
                ["server", "entries", "through the remote", "per entry", "download", "extract", "restore", "ratio"],
                ci_rows,
                "lrrrrrrr",
            )
        )
    return "\n\n".join(parts)
