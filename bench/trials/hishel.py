"""hishel trial: 8 processes of httpx clients with hishel 2 against a local
HTTP server, safecache's ``SyncStorage`` side by side with hishel's own
on-disk storage; then the hit latency of both.

    .venv/bin/python bench/trials/hishel.py                  # 8 x 400 requests, as recorded
    .venv/bin/python bench/trials/hishel.py --processes 4 --requests 50 --json out.json

hishel 2 ships no file storage (0.x had one; 1.x and 2.x have SQLite and
Redis only), so its own on-disk backend is ``hishel.SqliteStorage``: one
database file shared by every process.

The server (a process of its own) serves ``--urls`` URLs whose content
changes every ``--period`` seconds: each response has an ETag naming the
URL's version, ``Cache-Control: max-age`` of half a period, and the SHA-256
and length of its body in headers; it answers ``If-None-Match`` of the
current version with a 304.  The clients follow RFC 9111 (``rfc=True``), so
they store new bodies (200; the stale entry is removed), revalidate (304:
hishel updates the stored headers) and hit, all at once on the same URLs.
Bodies are 1 KiB to 512 KiB, so large ones stream.  Each worker process of
the safecache side runs under the Windows emulator with transient denials
(``safecache.testing``); the peer's side runs plain: SQLite does its file
I/O in C, which no Python-level emulator reaches (``patch_os`` neither).
Counted per backend:

- exceptions: ``client.get`` or reading the body raised;
- wrong: a 200 whose body is not the one its headers describe (digest,
  length, or the version its ETag names), or an empty body;
- computations: full responses the server made (200s), and its 304s;
- hits: responses hishel served from its storage (``from_cache``; those
  revalidated by a 304 included).

Hit latency: one process, the median time of ``client.get(url).content`` of
a fresh, stored 1 KiB and 256 KiB response, both backends in the same run;
the ratio is safecache over the peer.  Nothing is asserted here: the bounded
check is ``tests/test_adapter_hishel.py``.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import http.server
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

# This file is named after the library it tries: keep its directory off the
# path, or ``import hishel`` would import this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

SIZES = (1024, 8 * 1024, 64 * 1024, 512 * 1024)
BACKENDS = ("safecache", "peer")
LABELS = {"safecache": "safecache SyncStorage", "peer": "hishel SqliteStorage"}


# -- the origin server ------------------------------------------------------------------------------
def body_of(url_id: int, version: int, size: int) -> bytes:
    head = f"{url_id} v{version}\n".encode()
    block = hashlib.sha256(head).digest() * 64
    return (head + block * (size // len(block) + 1))[:size]


def _serve(port_out: Any, counts: Any, period: float, stop: Any) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            kind, _, number = self.path.strip("/").partition("/")
            if kind not in ("u", "fresh") or not number.isdigit():
                self.send_error(404)
                return
            url_id = int(number)
            if kind == "fresh":  # the hit-latency URLs: never change
                version, max_age, size = 0, 86400, url_id
            else:
                version = int((time.time() + url_id * 0.37) // period)
                max_age, size = max(1, int(period / 2)), SIZES[url_id % len(SIZES)]
            body = body_of(url_id, version, size)
            etag = f'"{url_id}-v{version}"'
            headers = {
                "ETag": etag,
                "Date": email.utils.formatdate(usegmt=True),
                "Cache-Control": f"max-age={max_age}",
                "X-Body-Sha256": hashlib.sha256(body).hexdigest(),
                "X-Body-Length": str(len(body)),
            }
            revalidated = self.headers.get("If-None-Match") == etag
            with counts.get_lock():
                counts[1 if revalidated else 0] += 1
            self.send_response(304 if revalidated else 200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0" if revalidated else str(len(body)))
            self.end_headers()
            if not revalidated:
                self.wfile.write(body)

    http.server.ThreadingHTTPServer.daemon_threads = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.request_queue_size = 128
    port_out.put(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()


class Origin:
    """The server process, with its counts of 200s and 304s."""

    def __init__(self, period: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.counts = ctx.Array("l", 2)
        self._stop = ctx.Event()
        ports = ctx.Queue()
        self._process = ctx.Process(target=_serve, args=(ports, self.counts, period, self._stop), daemon=True)
        self._process.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=60)}/"

    def reset(self) -> None:
        with self.counts.get_lock():
            self.counts[0] = self.counts[1] = 0

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)


# -- the clients ------------------------------------------------------------------------------------
def make_storage(backend: str, directory: str) -> Any:
    if backend == "safecache":
        import safecache
        from safecache.adapters.hishel import SyncStorage

        return SyncStorage(safecache.Cache(directory).bucket("http", version=1))
    import hishel

    return hishel.SqliteStorage(database_path=os.path.join(directory, "hishel.db"))


def make_client(backend: str, directory: str) -> Any:
    import httpx
    from hishel.httpx import CacheTransport

    transport = CacheTransport(httpx.HTTPTransport(), storage=make_storage(backend, directory), rfc=True)
    return httpx.Client(transport=transport, timeout=60)


def emulate(backend: str, options: dict[str, Any] | None) -> str:
    """Turn the emulator on in this process; say what the backend runs under."""
    if options is None:
        return "plain Linux"
    if backend == "safecache":
        from safecache import testing

        testing.enable_windows_semantics(**options)
        return "Windows semantics"
    return "plain Linux (SQLite's I/O is C code, out of the emulator's reach)"


def check(url_id: int, response: Any, body: bytes) -> str | None:
    """Why this response is wrong, or None."""
    if response.status_code != 200:
        return f"status {response.status_code}"
    if not body:
        return "empty body"
    headers = response.headers
    if hashlib.sha256(body).hexdigest() != headers.get("X-Body-Sha256"):
        return "body does not match its X-Body-Sha256"
    if str(len(body)) != headers.get("X-Body-Length"):
        return "body length does not match X-Body-Length"
    version = headers.get("ETag", "").strip('"').rpartition("-v")[2]
    if not body.startswith(f"{url_id} v{version}\n".encode()):
        return "body is of another version than its ETag"
    return None


def worker(
    backend: str, directory: str, origin: str, n_requests: int, n_urls: int, seed: int, options: Any, start: Any
) -> dict[str, Any]:
    import random

    under = emulate(backend, options)
    rng = random.Random(seed)
    result: dict[str, Any] = {"under": under, "exceptions": 0, "wrong": 0, "hits": 0, "warnings": 0, "samples": []}
    client = make_client(backend, directory)
    start.wait(300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(n_requests):
            url_id = rng.randrange(n_urls)
            try:
                response = client.get(f"{origin}u/{url_id}")
                body = response.content
            except Exception as exc:  # noqa: BLE001 -- counted, that is the point
                result["exceptions"] += 1
                if len(result["samples"]) < 5:
                    result["samples"].append(f"exception: {type(exc).__name__}: {exc}")
                continue
            why = check(url_id, response, body)
            if why is not None:
                result["wrong"] += 1
                if len(result["samples"]) < 5:
                    result["samples"].append(f"wrong: {why}")
            elif response.extensions.get("caching", {}).get("from_cache"):
                result["hits"] += 1
        result["warnings"] = len(caught)
    client.close()
    return result


def _child(queue: Any, *args: Any) -> None:
    try:
        queue.put(worker(*args))
    except BaseException as exc:  # noqa: BLE001 -- reported by the parent
        args[-1].abort()  # the start barrier: nobody waits for this worker
        queue.put({"crash": f"{type(exc).__name__}: {exc}"})


def run_side(
    backend: str, origin: Origin, *, processes: int, requests: int, urls: int, denials: float, seed: int
) -> dict[str, Any]:
    """One backend's run: ``processes`` clients at once on a fresh directory."""
    directory = tempfile.mkdtemp(prefix=f"hishel-trial-{backend}-")
    ctx = multiprocessing.get_context("spawn")
    # Every client is made (imports done) before the clock starts.
    queue, start = ctx.Queue(), ctx.Barrier(processes + 1)
    origin.reset()
    options = {"transient_denials": denials, "seed": seed} if denials else None
    procs = [
        ctx.Process(
            target=_child,
            args=(queue, backend, directory, origin.url, requests, urls, seed * 1000 + i, options, start),
        )
        for i in range(processes)
    ]
    try:
        for p in procs:
            p.start()
        try:
            start.wait(300)
        except threading.BrokenBarrierError:
            pass  # a worker crashed: its report says why
        began = time.perf_counter()
        results = [queue.get(timeout=900) for _ in procs]
        elapsed = time.perf_counter() - began
        for p in procs:
            p.join(60)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    crashes = [r["crash"] for r in results if "crash" in r]
    done = [r for r in results if "crash" not in r]
    return {
        "backend": LABELS[backend],
        "under": done[0]["under"] if done else "?",
        "requests": processes * requests,
        "exceptions": sum(r["exceptions"] for r in done) + len(crashes) * requests,
        "wrong": sum(r["wrong"] for r in done),
        "computations": origin.counts[0],
        "revalidations": origin.counts[1],
        "hits": sum(r["hits"] for r in done),
        "warnings": sum(r["warnings"] for r in done),
        "crashes": crashes,
        "samples": sorted({s for r in done for s in r["samples"]})[:10],
        "seconds": round(elapsed, 2),
    }


# -- hit latency ------------------------------------------------------------------------------------
def hit_latency(origin: Origin, *, repeat: int) -> dict[str, Any]:
    """Median seconds of a hit per backend and size, and the ratios."""
    out: dict[str, Any] = {}
    for backend in BACKENDS:
        directory = tempfile.mkdtemp(prefix=f"hishel-latency-{backend}-")
        try:
            client = make_client(backend, directory)
            for size in (1024, 256 * 1024):
                url = f"{origin.url}fresh/{size}"
                client.get(url).read()  # store
                times = []
                for _ in range(repeat):
                    began = time.perf_counter()
                    response = client.get(url)
                    response.read()
                    times.append(time.perf_counter() - began)
                    assert response.extensions["caching"]["from_cache"], "not a hit"
                out[f"{backend} {size // 1024} KiB"] = statistics.median(times)
            client.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    for size in (1, 256):
        out[f"ratio {size} KiB"] = out[f"safecache {size} KiB"] / out[f"peer {size} KiB"]
    return out


# -- the report -------------------------------------------------------------------------------------
def table(sides: list[dict[str, Any]], latency: dict[str, Any] | None) -> str:
    cols = ("requests", "exceptions", "wrong", "computations", "revalidations", "hits", "seconds")
    lines = [
        "| backend | under | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for side in sides:
        lines.append(f"| {side['backend']} | {side['under']} | " + " | ".join(str(side[c]) for c in cols) + " |")
    if latency:
        lines.append("")
        lines.append("| hit latency (median) | 1 KiB | 256 KiB |")
        lines.append("|---|---|---|")
        for backend in BACKENDS:
            small, large = latency[f"{backend} 1 KiB"] * 1e6, latency[f"{backend} 256 KiB"] * 1e6
            lines.append(f"| {LABELS[backend]} | {small:.0f} µs | {large:.0f} µs |")
        lines.append(f"| ratio safecache / peer | {latency['ratio 1 KiB']:.2f} | {latency['ratio 256 KiB']:.2f} |")
    for side in sides:
        for sample in side["crashes"] + side["samples"]:
            lines.append(f"- {side['backend']}: {sample}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="per process")
    parser.add_argument("--urls", type=int, default=24)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between versions of a URL")
    parser.add_argument("--denials", type=float, default=0.02, help="transient denial rate (0: no emulator)")
    parser.add_argument("--latency-repeat", type=int, default=300, help="0: skip the hit latency")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sides", default=",".join(BACKENDS), help="backends to run: safecache,peer")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    origin = Origin(args.period)
    try:
        sides = [
            run_side(
                backend, origin, processes=args.processes, requests=args.requests, urls=args.urls,
                denials=args.denials, seed=args.seed,
            )
            for backend in args.sides.split(",")
        ]
        latency = hit_latency(origin, repeat=args.latency_repeat) if args.latency_repeat else None
    finally:
        origin.close()
    print(table(sides, latency))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"sides": sides, "latency": latency, "options": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
