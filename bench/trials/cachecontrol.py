"""CacheControl trial: 8 processes of one ``requests`` session each against a
local HTTP server, safecache's ``CacheControlCache`` side by side with
CacheControl's own ``SeparateBodyFileCache``; then the hit latency of both.

    .venv/bin/python bench/trials/cachecontrol.py                 # 8 x 400 requests, as recorded
    .venv/bin/python bench/trials/cachecontrol.py --processes 4 --requests 50 --json out.json

The server (a process of its own) serves ``--urls`` URLs whose content
changes every ``--period`` seconds: each response has an ETag naming the
URL's version, ``Cache-Control: max-age`` of half a period (0, always
revalidate, for every third URL), and the SHA-256 and length of its body in
headers; it answers ``If-None-Match`` of the current
version with a 304.  So the clients store new bodies (200), revalidate
(304: CacheControl updates the stored headers) and hit, all at once on the
same URLs.  Each worker process runs under the Windows emulator with
transient denials (``safecache.testing.patch_os``: every ``os`` and ``open``
call of the process goes through it, the peer's and CacheControl's too),
and counts, per backend:

- exceptions: ``session.get`` or reading the body raised;
- wrong: a 200 whose body is not the one its headers describe (digest,
  length, or the version named by its ETag), or an empty body;
- computations: full responses the server had to make (200s), and 304s;
- hits: responses served from the cache (``from_cache``, 304s included).

Hit latency: one process, the median time of ``session.get`` of a fresh,
stored 1 KiB and 256 KiB response, each backend in the same run; the ratio
is safecache over the peer.  Nothing here is asserted: the bounded check is
``tests/test_adapter_cachecontrol.py``.
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
# path, or ``import cachecontrol`` would import this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

SIZES = (1024, 8 * 1024, 64 * 1024, 512 * 1024)
BACKENDS = ("safecache", "peer")
LABELS = {"safecache": "safecache CacheControlCache", "peer": "cachecontrol SeparateBodyFileCache"}


# -- the origin server ------------------------------------------------------------------------
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
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] not in ("u", "fresh") or not parts[1].isdigit():
                self.send_error(404)
                return
            url_id = int(parts[1])
            if parts[0] == "fresh":  # the hit-latency URLs: never change
                version, max_age, size = 0, 86400, url_id
            else:
                version = int((time.time() + url_id * 0.37) // period)
                # A third always revalidates (304s update stored headers all the time).
                max_age = 0 if url_id % 3 == 0 else max(1, int(period / 2))
                size = SIZES[url_id % len(SIZES)]
            body = body_of(url_id, version, size)
            etag = f'"{url_id}-v{version}"'
            headers = {
                "ETag": etag,
                "Date": email.utils.formatdate(usegmt=True),
                "Cache-Control": f"max-age={max_age}",
                "X-Body-Sha256": hashlib.sha256(body).hexdigest(),
                "X-Body-Length": str(len(body)),
            }
            if self.headers.get("If-None-Match") == etag:
                with counts.get_lock():
                    counts[1] += 1
                self.send_response(304)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with counts.get_lock():
                counts[0] += 1
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
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
        self.url = f"http://127.0.0.1:{ports.get(timeout=30)}/"

    def reset(self) -> None:
        with self.counts.get_lock():
            self.counts[0] = self.counts[1] = 0

    def close(self) -> None:
        self._stop.set()
        self._process.join(10)


# -- the clients -------------------------------------------------------------------------------
def make_cache(backend: str, directory: str) -> Any:
    if backend == "safecache":
        import safecache
        from safecache.adapters.cachecontrol import CacheControlCache

        return CacheControlCache(safecache.Cache(directory).bucket("http", version=1))
    from cachecontrol.caches import SeparateBodyFileCache

    return SeparateBodyFileCache(directory)


_EMULATORS: list[Any] = []


def emulate(backend: str, options: dict[str, Any] | None) -> str:
    """Turn the emulator on in this process, for the life of the process;
    say what the backend runs under.  ``patch_os`` routes every process's own
    ``os``/``open`` calls too (the peer's file backend, CacheControl's temp
    files), so both sides run under the same rules; without it only
    safecache's calls can be emulated."""
    if options is None:
        return "plain Linux"
    from safecache import testing

    patch_os = getattr(testing, "patch_os", None)
    if patch_os is not None:
        _EMULATORS.append(patch_os(**options))  # kept: collecting it would end the emulation
        _EMULATORS[-1].__enter__()
        return "Windows semantics (patch_os)"
    if backend == "safecache":
        testing.enable_windows_semantics(**options)
        return "Windows semantics (safecache's calls)"
    return "plain Linux (safecache.testing.patch_os not available)"


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
    etag = headers.get("ETag", "")
    if not body.startswith(f"{url_id} v{etag.strip(chr(34)).rpartition('-v')[2]}\n".encode()):
        return "body is of another version than its ETag"
    return None


def worker(
    backend: str, directory: str, origin: str, n_requests: int, n_urls: int, seed: int, options: Any, start: Any
) -> dict[str, Any]:
    import random

    import requests
    from cachecontrol import CacheControl

    under = emulate(backend, options)
    rng = random.Random(seed)
    result: dict[str, Any] = {"under": under, "exceptions": 0, "wrong": 0, "hits": 0, "warnings": 0, "samples": []}
    session = CacheControl(requests.Session(), cache=make_cache(backend, directory))
    start.wait()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(n_requests):
            url_id = rng.randrange(n_urls)
            try:
                response = session.get(f"{origin}u/{url_id}", timeout=30)
                body = response.content
            except Exception as exc:  # noqa: BLE001 (counting is the point)
                result["exceptions"] += 1
                if len(result["samples"]) < 5:
                    result["samples"].append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            wrong = check(url_id, response, body)
            if wrong:
                result["wrong"] += 1
                if len(result["samples"]) < 5:
                    result["samples"].append(wrong)
            result["hits"] += bool(getattr(response, "from_cache", False))
        cache_warnings = [str(w.message) for w in caught if w.category.__name__ == "CacheWarning"]
        result["warnings"] = len(cache_warnings)
        result["samples"] += [f"warning: {text}"[:300] for text in cache_warnings[:3]]
    session.close()
    return result


def trial(
    backend: str, origin: Origin, work: str, *, processes: int, requests: int, urls: int, options: Any, seed: int
) -> dict[str, Any]:
    directory = os.path.join(work, backend)
    os.makedirs(directory, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    origin.reset()
    with ctx.Manager() as manager:
        start = manager.Barrier(processes)
        with ctx.Pool(processes) as pool:
            args = [
                (backend, directory, origin.url, requests, urls, seed * 1000 + i, options, start) for i in range(processes)
            ]
            began = time.perf_counter()
            results = pool.starmap(worker, args)
            elapsed = time.perf_counter() - began
    total: dict[str, Any] = {"backend": backend, "under": results[0]["under"], "requests": processes * requests}
    for field in ("exceptions", "wrong", "hits", "warnings"):
        total[field] = sum(r[field] for r in results)
    total["computations"], total["revalidations"] = origin.counts[0], origin.counts[1]
    total["samples"] = sorted({s for r in results for s in r["samples"]})[:12]
    total["seconds"] = round(elapsed, 2)
    return total


# -- hit latency --------------------------------------------------------------------------------
def hit_latency(origin: Origin, work: str, size: int, rounds: int) -> dict[str, float]:
    """Median seconds of a hit (``session.get`` of a fresh stored response)
    per backend, the backends taking turns so that both see the same load."""
    import requests
    from cachecontrol import CacheControl

    url = f"{origin.url}fresh/{size}"
    sessions = {}
    for backend in BACKENDS:
        session = CacheControl(requests.Session(), cache=make_cache(backend, os.path.join(work, f"hits-{backend}")))
        assert session.get(url).content and session.get(url).from_cache, f"{backend}: not stored"
        sessions[backend] = session
    times: dict[str, list[float]] = {name: [] for b in BACKENDS for name in (b, f"{b} cache")}
    for _ in range(rounds):
        for backend, session in sessions.items():
            began = time.perf_counter()
            response = session.get(url)
            _ = response.content
            times[backend].append(time.perf_counter() - began)
            assert response.from_cache
    # The cache alone: CacheControl's lookup calls, get then get_body, and the read.
    for backend, session in sessions.items():
        cache = session.get_adapter(url).cache  # type: ignore[attr-defined]
        for _ in range(rounds):
            began = time.perf_counter()
            meta, body = cache.get(url), cache.get_body(url)
            with body:
                assert meta and body.read()
            times[f"{backend} cache"].append(time.perf_counter() - began)
    for session in sessions.values():
        session.close()
    return {name: statistics.median(values) for name, values in times.items()}


# -- the report ---------------------------------------------------------------------------------
def table(results: list[dict[str, Any]]) -> str:
    columns = ("exceptions", "wrong", "computations", "revalidations", "hits", "warnings", "seconds")
    lines = ["| backend | runs under | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for r in results:
        lines.append(f"| {LABELS[r['backend']]} | {r['under']} | " + " | ".join(str(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="per process")
    parser.add_argument("--urls", type=int, default=40)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between versions of a URL")
    parser.add_argument("--denials", type=float, default=0.02, help="transient denial probability (0: no emulator)")
    parser.add_argument(
        "--lock-violations", type=float, default=None, help="read/write denials (33); default: the emulator's"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="safecache,peer")
    parser.add_argument("--latency-rounds", type=int, default=1000, help="0: skip the hit latency")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    options = None if args.denials <= 0 else {"transient_denials": args.denials, "seed": args.seed}
    if options is not None and args.lock_violations is not None:
        options["transient_lock_violations"] = args.lock_violations
    backends = [b for b in args.backends.split(",") if b]
    work = tempfile.mkdtemp(prefix="cc-trial-", dir=args.dir)
    origin = Origin(args.period)
    out: dict[str, Any] = {"processes": args.processes, "requests": args.requests, "urls": args.urls, "options": options}
    try:
        out["trial"] = [
            trial(
                backend,
                origin,
                work,
                processes=args.processes,
                requests=args.requests,
                urls=args.urls,
                options=options,
                seed=args.seed,
            )
            for backend in backends
        ]
        print(
            f"CacheControl trial: {args.processes} processes x {args.requests} requests over {args.urls} URLs"
            f" (new version every {args.period:g} s), transient denials {args.denials:g}"
        )
        print(table(out["trial"]))
        for r in out["trial"]:
            for sample in r["samples"]:
                print(f"  {r['backend']}: {sample}")
        if args.latency_rounds and set(backends) == set(BACKENDS):
            out["hit_latency"] = {}
            for size in (1024, 256 * 1024):
                medians = hit_latency(origin, work, size, args.latency_rounds)
                out["hit_latency"][size] = medians
                for what, ours, theirs in (
                    ("session.get", medians["safecache"], medians["peer"]),
                    ("cache get + get_body + read", medians["safecache cache"], medians["peer cache"]),
                ):
                    print(
                        f"hit latency, {size // 1024} KiB body, {what} (median of {args.latency_rounds}, one process,"
                        f" plain Linux): safecache {ours * 1e6:.0f} us, SeparateBodyFileCache {theirs * 1e6:.0f} us,"
                        f" ratio {ours / theirs:.2f}"
                    )
    finally:
        origin.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
