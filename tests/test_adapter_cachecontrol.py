"""``safecache.adapters.cachecontrol.CacheControlCache``: CacheControl's
separate-body cache on a bucket, whose metadata and body are one entry.

The contract (the module's docstring, docs/adapters/cachecontrol.md): a
lookup's metadata and body come from one and the same put; metadata is
stored only with its body; a 304 revalidation replaces the metadata without
rewriting the body, and never onto a body stored since; ``expires`` is the
entry's ttl; nothing raises when the cache cannot work.  Then CacheControl's
own test suite, from its released sdist, with the adapter as the cache; and a
short 4-process trial under the Windows emulator (the full one:
bench/trials/cachecontrol.py).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytest.importorskip("cachecontrol", reason="the cachecontrol extra is not installed")
requests = pytest.importorskip("requests")

from cachecontrol import CacheControl
from cachecontrol.cache import SeparateBodyBaseCache

import safecache
from safecache.adapters.cachecontrol import CacheControlCache

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
URL = "http://example.org/a"


@pytest.fixture
def bucket(cache: safecache.Cache) -> safecache.Bucket:
    return cache.bucket("http", version=1)


@pytest.fixture
def cc(bucket: safecache.Bucket) -> CacheControlCache:
    return CacheControlCache(bucket)


def store(cc: CacheControlCache, key: str, meta: bytes, body: bytes, expires: object = None) -> None:
    """What CacheControl does to store a response in a separate-body cache."""
    cc.set(key, meta, expires=expires)  # type: ignore[arg-type]
    cc.set_body(key, body)


def lookup(cc: CacheControlCache, key: str) -> tuple[bytes, bytes] | None:
    """What CacheControl does to look a response up."""
    meta = cc.get(key)
    if meta is None:
        return None
    body = cc.get_body(key)
    assert body is not None
    with body:
        return meta, body.read()


# -- the shape ---------------------------------------------------------------------------------
def test_it_is_a_cachecontrol_separate_body_cache(cc: CacheControlCache) -> None:
    assert isinstance(cc, SeparateBodyBaseCache)


def test_without_cachecontrol_the_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['cachecontrol'] = None; sys.modules['cachecontrol.cache'] = None\n"
        "try:\n    import safecache.adapters.cachecontrol\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert "pip install 'safecache[cachecontrol]'" in out.stdout, out.stderr


# -- storing and reading -----------------------------------------------------------------------
def test_a_stored_response_is_read_back_as_its_metadata_and_body(cc: CacheControlCache) -> None:
    store(cc, URL, b"cc=4,meta", b"body")
    assert lookup(cc, URL) == (b"cc=4,meta", b"body")


def test_metadata_and_body_are_one_entry(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    store(cc, URL, b"cc=4,meta", b"body")
    assert bucket.get_with_meta(URL) == (b"body", b"cc=4,meta")
    assert len(bucket) == 1


def test_metadata_is_not_stored_before_its_body(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    # A process that dies between CacheControl's set() and set_body() leaves
    # nothing: not metadata promising a body (cachecontrol #324).
    cc.set(URL, b"cc=4,meta", expires=60)
    assert URL not in bucket


def test_a_body_without_metadata_is_not_stored(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    cc.set_body(URL, b"body")
    assert URL not in bucket


def test_a_body_goes_only_with_the_metadata_of_its_own_url(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    cc.set(URL, b"cc=4,meta")
    cc.set_body(URL + "/other", b"body")
    assert URL + "/other" not in bucket


def test_a_body_may_be_a_memoryview(cc: CacheControlCache) -> None:
    # CacheControl's CallbackFileWrapper hands over a memoryview of an mmap.
    store(cc, URL, b"cc=4,meta", memoryview(b"body"))  # type: ignore[arg-type]
    assert lookup(cc, URL) == (b"cc=4,meta", b"body")


def test_set_body_from_io_streams_the_body(cc: CacheControlCache) -> None:
    body = os.urandom(3 * 1024 * 1024)
    cc.set(URL, b"cc=4,meta")
    cc.set_body_from_io(URL, io.BytesIO(body))
    assert lookup(cc, URL) == (b"cc=4,meta", body)


def test_a_lookup_reads_the_body_of_the_entry_whose_metadata_it_read(
    cc: CacheControlCache, bucket: safecache.Bucket
) -> None:
    store(cc, URL, b"cc=4,old", b"old body")
    assert cc.get(URL) == b"cc=4,old"
    bucket.put(URL, b"new body", meta=b"cc=4,new")  # another process, between get and get_body
    body = cc.get_body(URL)
    assert body is not None
    with body:
        assert body.read() == b"old body"


def test_an_entry_without_metadata_is_a_miss(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    bucket.put(URL, b"not from cachecontrol")
    assert cc.get(URL) is None


def test_a_corrupted_body_is_a_miss_not_served(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    # The opposite of the peer's test_body_actually_stored_separately, which
    # writes "CORRUPTED" into the body file and asserts it is served.
    store(cc, URL, b"cc=4,meta", b"body" * 100)
    path = bucket.path_for(URL)
    assert path is not None
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"XYZ")
    assert cc.get(URL) is None


def test_delete_removes_the_entry(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    store(cc, URL, b"cc=4,meta", b"body")
    cc.delete(URL)
    assert URL not in bucket


def test_metadata_too_large_to_store_supersedes_the_entry(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    store(cc, URL, b"cc=4,meta", b"old body")
    store(cc, URL, b"x" * (safecache.MAX_META + 1), b"new body")
    assert URL not in bucket


def test_lookups_from_threads_get_their_own_bodies(cc: CacheControlCache) -> None:
    keys = [f"{URL}/{i}" for i in range(4)]
    for key in keys:
        store(cc, key, f"cc=4,{key}".encode(), key.encode() * 10)
    barrier = threading.Barrier(len(keys))
    seen: dict[str, bytes] = {}

    def look(key: str) -> None:
        for _ in range(50):
            assert cc.get(key) == f"cc=4,{key}".encode()
            barrier.wait()  # every thread between its get and its get_body
            body = cc.get_body(key)
            assert body is not None
            with body:
                seen[key] = body.read()

    threads = [threading.Thread(target=look, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {key: key.encode() * 10 for key in keys}


# -- 304: headers only -------------------------------------------------------------------------
def test_a_304_replaces_the_metadata_without_rewriting_the_body(
    cc: CacheControlCache, bucket: safecache.Bucket
) -> None:
    store(cc, URL, b"cc=4,old headers", b"body" * 1000)
    path = bucket.path_for(URL)
    assert path is not None
    before = os.stat(path)
    assert lookup(cc, URL) is not None  # CacheControl's update_cached_response: get, get_body,
    cc.set(URL, b"cc=4,new headers")  # then set() and no set_body()
    cc.close()
    assert bucket.get_with_meta(URL) == (b"body" * 1000, b"cc=4,new headers")
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_304_update_is_applied_by_the_next_call(cc: CacheControlCache) -> None:
    store(cc, URL, b"cc=4,old headers", b"body")
    lookup(cc, URL)
    cc.set(URL, b"cc=4,new headers")
    assert lookup(cc, URL) == (b"cc=4,new headers", b"body")


def test_a_304_update_never_lands_on_a_body_stored_since(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    store(cc, URL, b"cc=4,old headers", b"old body")
    lookup(cc, URL)
    cc.set(URL, b"cc=4,old headers, revalidated")
    bucket.put(URL, b"new body", meta=b"cc=4,new headers")  # another process
    cc.close()
    assert bucket.get_with_meta(URL) == (b"new body", b"cc=4,new headers")


def test_a_304_update_never_lands_on_a_body_stored_while_it_is_made(
    cc: CacheControlCache, bucket: safecache.Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(cc, URL, b"cc=4,old headers", b"old body")
    lookup(cc, URL)
    cc.set(URL, b"cc=4,old headers, revalidated")
    set_meta = bucket.set_meta

    def after_another_process_puts(key: object, meta: bytes, **kwargs: object) -> bool:
        bucket.put(URL, b"new body", meta=b"cc=4,new headers")  # lands while the 304 is being handled
        return set_meta(key, meta, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bucket, "set_meta", after_another_process_puts)
    cc.close()
    assert bucket.get_with_meta(URL) == (b"new body", b"cc=4,new headers")


def test_a_delete_wins_over_a_pending_304_update(cc: CacheControlCache, bucket: safecache.Bucket) -> None:
    store(cc, URL, b"cc=4,old headers", b"body")
    lookup(cc, URL)
    cc.set(URL, b"cc=4,new headers")
    cc.delete(URL)
    cc.close()
    assert URL not in bucket


def test_headers_without_a_body_for_a_new_url_are_stored_with_an_empty_body(
    cc: CacheControlCache, bucket: safecache.Bucket
) -> None:
    # CacheControl stores a permanent redirect that has an ETag this way.
    assert cc.get(URL) is None
    cc.set(URL, b"cc=4,redirect")
    cc.close()
    assert bucket.get_with_meta(URL) == (b"", b"cc=4,redirect")


# -- expires -----------------------------------------------------------------------------------
def _expires(bucket: safecache.Bucket) -> float | None:
    (info,) = list(bucket.items())
    return info.expires


@pytest.mark.parametrize(
    "expires, seconds",
    [
        (3600, 3600),
        (datetime.now(timezone.utc) + timedelta(hours=2), 7200),
        (datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(hours=3), 10800),  # naive: UTC
    ],
    ids=["seconds", "aware datetime", "naive datetime"],
)
def test_expires_becomes_the_entry_ttl(
    cc: CacheControlCache, bucket: safecache.Bucket, expires: object, seconds: float
) -> None:
    store(cc, URL, b"cc=4,meta", b"body", expires=expires)
    expiry = _expires(bucket)
    assert expiry is not None and abs(expiry - (time.time() + seconds)) < 60


@pytest.mark.parametrize(
    "expires", [None, 0, -5, datetime(2000, 1, 1, tzinfo=timezone.utc)], ids=["none", "zero", "negative", "past"]
)
def test_no_usable_expires_keeps_the_entry_until_trimmed(
    cc: CacheControlCache, bucket: safecache.Bucket, expires: object
) -> None:
    store(cc, URL, b"cc=4,meta", b"body", expires=expires)
    assert _expires(bucket) is None


# -- a cache that cannot work ------------------------------------------------------------------
@pytest.mark.parametrize("state", ["disabled", "read-only"])
def test_a_cache_that_cannot_work_never_fails_a_call(
    cache_dir: Path, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if state == "read-only":
        cache_dir.mkdir()
        monkeypatch.setattr("safecache._location._read_only_fs", lambda path: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", safecache.CacheWarning)  # one is expected when read-only
        cc = CacheControlCache(safecache.Cache(cache_dir, enabled=state != "disabled").bucket("http", version=1))
        store(cc, URL, b"cc=4,meta", b"body")
        assert cc.get(URL) is None
        assert cc.get_body(URL) is None
        cc.set(URL, b"cc=4,meta")
        cc.delete(URL)
        cc.close()


# -- through CacheControl, against a server ----------------------------------------------------
class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b"the body" * 1000
    seen = 0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen += 1
        self.send_response(304 if self.headers.get("If-None-Match") == '"v1"' else 200)
        self.send_header("ETag", '"v1"')
        self.send_header("Cache-Control", "max-age=0")  # always revalidate
        self.send_header("X-Seen", str(self.seen))
        if self.headers.get("If-None-Match") == '"v1"':
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    _Origin.seen = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/resource"
    server.shutdown()
    server.server_close()


def test_through_cachecontrol_a_304_updates_the_headers_and_keeps_the_body(
    origin: str, bucket: safecache.Bucket
) -> None:
    session = CacheControl(requests.Session(), cache=CacheControlCache(bucket))
    first = session.get(origin)
    assert (first.content, first.from_cache, first.headers["X-Seen"]) == (_Origin.body, False, "1")
    path = bucket.path_for(origin)
    assert path is not None
    stored = os.stat(path)
    second = session.get(origin)  # stale: revalidated, 304
    assert (second.content, second.from_cache, second.headers["X-Seen"]) == (_Origin.body, True, "2")
    session.close()
    meta = bucket.get_meta(origin)
    assert meta is not None and b"X-Seen" in meta and b"2" in meta.split(b"X-Seen", 1)[1][:8]
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns)


# -- CacheControl's own test suite -------------------------------------------------------------
#: CacheControl's release whose tests run.  0.14.4's sdist ships an empty
#: tests/ (its build backend, uv_build, left them out), and its tests differ
#: from 0.14.3's only in conftest.py's server start-up, so the suite comes from
#: 0.14.3's sdist and runs against the installed library (0.14.4).
PEER_SUITE = ("cachecontrol", "0.14.3")
#: Tests of the suite that cannot apply to another cache, by node id; the
#: reasons are in docs/adapters/cachecontrol.md ("Excluded peer tests").
EXCLUDED = {
    "tests/test_safecache_storage.py::TestSafecacheCache::test_filecache_directory_not_exists":
        "sets FileCache's `directory` attribute and checks that FileCache created that directory",
    "tests/test_safecache_storage.py::TestSafecacheCache::test_filecache_directory_already_exists":
        "reads FileCache's `dirmode` attribute",
    "tests/test_safecache_storage.py::TestSafecacheCache::test_key_length":
        "tests FileCache's file-name hashing (`encode`)",
    "tests/test_safecache_storage.py::TestSafecacheCache::test_simple_lockfile_arg":
        "tests FileCache's `lock_class` (filelock) option",
    "tests/test_safecache_storage.py::TestSafecacheCache::test_lock_class":
        "tests FileCache's `lock_class` option",
}
#: Storage tests that must run, and pass, with the adapter as the cache
#: (JUnit class name, test name).
WITH_THE_ADAPTER = {
    ("tests.test_safecache_storage.TestSafecacheCache", "test_filecache_from_cache"),
    ("tests.test_safecache_storage.TestSafecacheCache", "test_filecache_with_delete_request"),
    ("tests.test_safecache_storage.TestSafecacheCache", "test_filecache_with_put_request"),
    ("tests.test_safecache_storage", "test_update_cached_response_with_valid_headers_safecache"),
}


def _peer_suite(tmp_path: Path) -> Path:
    pytest.importorskip("cherrypy", reason="CacheControl's suite needs cherrypy (the test extra)")
    from peers import fetch
    name, version = PEER_SUITE
    top = fetch.unpacked(name, version, tmp_path / "sdist")
    if top is None or not (top / "tests" / "conftest.py").exists():
        pytest.skip(f"{name}=={version}'s sdist could not be fetched (offline?): tests/peers/fetch.py")
    # Only the suite: the sdist's own cachecontrol/ must not shadow the installed one.
    run = tmp_path / "run"
    shutil.copytree(top / "tests", run / "tests")
    shutil.copy(PEERS / "cachecontrol" / "conftest_peer.py", run / "conftest.py")
    shutil.copy(PEERS / "cachecontrol" / "storage_tests.py", run / "tests" / "test_safecache_storage.py")
    return run


def test_cachecontrol_own_suite_passes_with_the_adapter_as_the_cache(tmp_path: Path) -> None:
    run = _peer_suite(tmp_path)
    junit, used = tmp_path / "junit.xml", tmp_path / "used.json"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-W",
               "error::safecache.CacheWarning", f"--basetemp={tmp_path / 'basetemp'}", f"--junitxml={junit}",
               "--rootdir", str(run), "tests"]
    for node in EXCLUDED:
        command += ["--deselect", node]
    env = {**os.environ, "SAFECACHE_PEER_REPORT": str(used), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(command, check=False, cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    passed = {
        (case.get("classname"), case.get("name"))
        for case in ElementTree.parse(junit).getroot().iter("testcase")
        if not any(child.tag in ("failure", "error", "skipped") for child in case)
    }
    assert WITH_THE_ADAPTER <= passed, WITH_THE_ADAPTER - passed
    report = json.loads(used.read_text())
    # The suite's default cache was the adapter in its session tests.
    assert any("test_adapter.py" in node for node in report["default_cache_used_by"]), report
    assert any("test_redirects.py" in node for node in report["default_cache_used_by"]), report


# -- the trial, short --------------------------------------------------------------------------
def test_trial_under_windows_semantics_has_no_exception_and_no_wrong_response(tmp_path: Path) -> None:
    out = tmp_path / "trial.json"
    # Without the emulator's lock violations (error 33 on a read or write of
    # an open file): the store does not retry them yet, so a read can miss,
    # and a miss between CacheControl's conditional request and its 304
    # update makes CacheControl hand the server's 304 to the caller (a wrong
    # response; docs/adapters/cachecontrol.md, "The trial").
    command = [sys.executable, str(ROOT / "bench" / "trials" / "cachecontrol.py"), "--processes", "4",
               "--requests", "60", "--urls", "12", "--period", "1", "--denials", "0.05", "--lock-violations", "0",
               "--latency-rounds", "0", "--dir", str(tmp_path), "--json", str(out)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)  # both sides, for the record: the peer's numbers are reported, not asserted
    ours = next(r for r in json.loads(out.read_text())["trial"] if r["backend"] == "safecache")
    assert ours["under"].startswith("Windows semantics")
    assert (ours["exceptions"], ours["wrong"]) == (0, 0), ours["samples"]
    assert ours["hits"] > 0
