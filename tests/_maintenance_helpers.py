"""What the maintenance tests share (test_trim.py, test_prune.py,
test_verify.py, test_info.py, test_walk.py): ages set with os.utime, never
waited for; caches filled and measured by a real walk; child processes that
hold a tree or a lock, or use the cache for a while and report any
exception that reached them (the tests that say "while N processes use the
cache").

The fixtures ``root`` and ``cache`` are imported by the test modules that use
them (``from _maintenance_helpers import cache, root``).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _workers
import pytest

import safecache
from safecache import _locks, _osops, _stats
from safecache.testing import OsOps

ctx = multiprocessing.get_context("fork")

DAY = 86400.0
HOUR = 3600.0

#: How the processes that use the cache run: on POSIX, or under the Windows
#: emulator with 2 % of their operations denied as an antivirus would.  The
#: maintaining process runs under the same Windows rules, without random
#: denials, so what it must have removed is deterministic.
PLATFORMS = {
    "posix": None,
    "windows": {"transient_denials": 0.02, "seed": 4},
}


# -- helpers ---------------------------------------------------------------------------
def age(path: str | os.PathLike[str], seconds: float) -> None:
    """Make ``path`` look last used ``seconds`` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def age_tree(path: str | os.PathLike[str], seconds: float) -> None:
    """Age a directory and everything in it."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            age(os.path.join(dirpath, name), seconds)
    age(path, seconds)


def fill(path: str, text: str = "hello") -> None:
    os.makedirs(os.path.join(path, "pkg"))
    Path(path, "pkg", "__init__.py").write_text(text)
    Path(path, "data.bin").write_bytes(text.encode() * 100)


def entry_files(root: Path) -> list[Path]:
    """Every entry file (32 hex digits, in its shard) under buckets/."""
    out = []
    for path in (root / "buckets").glob("*/*/??/*"):
        if len(path.name) == 32 and path.parent.name == path.name[:2]:
            out.append(path)
    return out


def walk_size(root: Path) -> int:
    """What the cache holds, by a real walk: entries, tree pointers and
    tree files (not temp files, not Windows' delete-pending names)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root / "buckets"):
        for name in filenames:
            if name.endswith(".tmp") or ".~delete-pending-" in name:
                continue
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def totals_size(root: Path) -> tuple[int, int]:
    totals = _stats.read_totals(str(root))
    return (
        sum(int(d["size"]) for d in totals.values()),  # type: ignore[call-overload]
        sum(int(d["entries"]) for d in totals.values()),  # type: ignore[call-overload]
    )


def value_for(key: str, size: int = 1000) -> bytes:
    return (key.encode() + b"|") * (size // (len(key) + 1)) + b"!"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(root: Path) -> Iterator[safecache.Cache]:
    with safecache.Cache(root, auto_trim=False) as c:
        yield c


def populate(cache: safecache.Cache, n: int, *, name: str = "data", version: int = 1, size: int = 1000,
             kind: str = "built") -> list[str]:
    bucket = cache.bucket(name, version)
    keys = [f"{name}-{version}-{i}" for i in range(n)]
    for key in keys:
        assert bucket.put(key, value_for(key, size), kind=kind)
    return keys


def path_of(cache: safecache.Cache, key: str, name: str = "data", version: int = 1) -> str:
    path = cache.bucket(name, version).path_for(key)
    assert path is not None
    return path


# -- processes ---------------------------------------------------------------------------------
def _hold_tree(root: str, name: str, key: str, ready: Any, release: Any) -> None:
    """Hold a tree (``with tree:``) until told to let go."""
    warnings.simplefilter("ignore")
    cache = safecache.Cache(root, auto_trim=False)
    tree = cache.bucket(name, 1).trees.get(key)
    assert tree is not None
    with tree:
        ready.set()
        release.wait(30)


def _hold_lock(path: str, ready: Any, release: Any) -> None:
    with _locks.FileLock(path, timeout=5):
        ready.set()
        release.wait(30)


class Holder:
    """A child process that holds something until the block ends."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.ready = ctx.Event()
        self.release = ctx.Event()
        self.proc = ctx.Process(target=target, args=(*args, self.ready, self.release))

    def __enter__(self) -> Holder:  # noqa: PYI034 - typing.Self needs Python 3.11
        self.proc.start()
        assert self.ready.wait(20), "the holder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.proc.join(20)
        assert self.proc.exitcode == 0


def _user(root: str, n: int, seconds: float, prefilled: list[str], trees: bool, sizes: list[int],
          windows: dict[str, Any] | None, ready: Any, queue: Any) -> None:
    """Get and put own and shared keys (and, with ``trees``, build, place and
    hold trees) for ``seconds``; report every exception and every wrong
    value."""
    result: dict[str, Any] = {"n": n, "ops": 0, "hits": 0, "problems": []}
    try:
        if windows is not None:
            from safecache.testing import enable_windows_semantics

            enable_windows_semantics(**windows)
        warnings.simplefilter("ignore")  # degraded operations warn; only exceptions count here
        import tempfile

        rng = random.Random(n)
        cache = safecache.Cache(root, retry_budget=0.2, auto_trim=False)
        bucket = cache.bucket("data", 1)
        own = [f"w{n}-{k}" for k in range(10)]
        shared = [f"s{k}" for k in range(5)]
        dest = tempfile.mkdtemp(prefix=f"place-{n}-", dir=os.path.dirname(root))  # inside the test's tmp_path
        ready.put(n)
        deadline = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < deadline:
            result["ops"] += 1
            r = rng.random()
            if r < 0.35:
                key = rng.choice(own + shared)
                seq += 1
                bucket.put(key, _workers.make_value(key, n, seq, rng.choice(sizes)),
                           kind=rng.choice(["built", "fetched"]))
            elif r < 0.7:
                key = rng.choice(own + shared)
                value = bucket.get(key)
                if value is not None:
                    result["hits"] += 1
                    problem = _workers.check_value(key, value)
                    if problem:
                        result["problems"].append(problem)
            elif r < 0.9 or not trees:
                key = rng.choice(prefilled)
                value = bucket.get(key)
                if value is not None and value not in (value_for(key), value_for(key, 2000)):
                    result["problems"].append(f"wrong bytes for prefilled {key}")
            else:
                key = f"t{n}-{rng.randrange(3)}"
                tree = bucket.trees.get_or_create(
                    key, lambda p, key=key: fill(p, key), kind=rng.choice(["built", "fetched"])
                )
                report = tree.place(dest)
                if report.complete and Path(dest, "pkg", "__init__.py").read_text() != key:
                    result["problems"].append(f"tree {key} placed wrong content")
                with tree:
                    pass
        cache.close()
    except BaseException:  # noqa: BLE001 - the point of the test: nothing may escape
        result["problems"].append("exception reached the caller:\n" + traceback.format_exc())
    queue.put(result)


class Users:
    """``n`` processes running :func:`_user` for ``seconds``."""

    def __init__(self, root: Path, n: int, seconds: float, prefilled: list[str], *, trees: bool = False,
                 sizes: tuple[int, ...] = (10, 500, 70_000), windows: dict[str, Any] | None = None) -> None:
        self.ready = ctx.Queue()
        self.queue = ctx.Queue()
        self.seconds = seconds
        self.procs = [
            ctx.Process(
                target=_user,
                args=(str(root), i, seconds, prefilled, trees, list(sizes), windows, self.ready, self.queue),
            )
            for i in range(n)
        ]

    def __enter__(self) -> Users:  # noqa: PYI034 - typing.Self needs Python 3.11
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.ready.get(timeout=30)
        return self

    def results(self) -> list[dict[str, Any]]:
        results = [self.queue.get(timeout=self.seconds + 60) for _ in self.procs]
        for p in self.procs:
            p.join(30)
            assert p.exitcode == 0
        return results

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.is_alive():
                p.join(self.seconds + 30)


def pointer_path(bucket: safecache.Bucket, key: str) -> str:
    from safecache import _keys

    return bucket.trees._pointer(_keys.key_digest(key))


def flip(path: str, offset: int, rng: random.Random) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 1 << rng.randrange(8)
    Path(path).write_bytes(bytes(data))


# -- how a walk reaches directories ----------------------------------------------------------------
class PathsOnly(OsOps):
    """The real operating system, without directory descriptors: maintenance
    then walks by checked paths, as on Windows (and under the emulator)."""

    name = "paths-only"

    def has_dir_fd(self) -> bool:
        return False


@pytest.fixture(params=["dir-fd", "paths"])
def walk_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: walking relative to directory descriptors (POSIX),
    and by checked paths (what Windows gets)."""
    if request.param == "paths":
        monkeypatch.setattr(_osops, "current", PathsOnly())
    elif not _osops.current.has_dir_fd():
        pytest.skip("this platform has no dir_fd")
    return str(request.param)


#: The operations that unlink a file, by path and relative to a directory descriptor.
UNLINKS = ("unlink", "unlink_at")
