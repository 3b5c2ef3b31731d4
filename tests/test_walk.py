"""How maintenance walks the cache (``_walk``): every directory a
:class:`~safecache._examine.Folder`, reached without following a symlink and
used relative to its descriptor (POSIX) or by checked paths (Windows), so a
directory swapped for a symlink between listing and unlinking never leads
outside the cache.  Each test runs both ways (the ``walk_mode`` fixture).

The swap is what another user who can write ``buckets/`` of a shared cache
(a sticky, world-writable parent where they created it first) can do at any
moment; here it is done at the worst moment, from inside the walk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _maintenance_helpers import DAY, age, populate, walk_mode  # noqa: F401 - walk_mode: a fixture

import safecache
from safecache import _fs, _osops, _walk, maintenance
from safecache._examine import Folder

OPERATIONS: dict[str, Callable[[safecache.Cache], maintenance.Report]] = {
    "trim": lambda cache: maintenance.trim(cache, max_age=DAY),
    "prune": lambda cache: maintenance.prune(cache, older_than=DAY),
    "verify --repair": lambda cache: maintenance.verify(cache, repair=True),
    "clean": lambda cache: maintenance.clean(cache, buckets=["data"]),
}


def _victims(root: Path, outside: Path, *, level: str) -> list[Path]:
    """Files outside the cache named exactly as the entries are, where a
    swapped directory would lead: ``outside/<xx>/<digest>`` (a shard swapped)
    or ``outside/v1/<xx>/<digest>`` (the bucket swapped)."""
    victims = []
    for entry in (root / "buckets" / "data" / "v1").glob("??/*"):
        rel = entry.relative_to(root / "buckets" / "data" / ("v1" if level == "shard" else ""))
        victim = outside / rel
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_text("precious")  # not an entry: corrupt, to verify
        age(victim, 90 * DAY)  # and old: expired, to trim and prune
        victims.append(victim)
    return victims


@pytest.mark.parametrize("which", ["first", "last"])
@pytest.mark.parametrize("level", ["shard", "bucket"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_directory_swapped_for_a_symlink_mid_walk_never_leads_outside_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walk_mode: str, operation: str, level: str, which: str
) -> None:
    """The swap comes at the walk's first removal: for the ``first`` shard
    walked, after it was listed (a path would now lead through the link);
    for the ``last``, before it is even listed."""
    root = tmp_path / "cache"
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 40)
        for key in keys:
            path = c.bucket("data", 1).path_for(key)
            assert path is not None
            age(path, 60 * DAY)
            if operation == "verify --repair":
                Path(path).write_bytes(b"junk")  # corrupt: repair removes them
    outside = tmp_path / "outside"
    victims = _victims(root, outside, level=level)
    shards = sorted((root / "buckets" / "data" / "v1").glob("??"))
    swapped = (shards[0] if which == "first" else shards[-1]) if level == "shard" else root / "buckets" / "data"
    target = outside / swapped.name if level == "shard" else outside
    state = {"done": False}

    def swap_first(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: _walk.Run, *args: Any, **kwargs: Any) -> Any:
            if not state["done"]:
                state["done"] = True
                os.rename(swapped, tmp_path / "moved")  # the real directory, away
                swapped.symlink_to(target, target_is_directory=True)
            return method(self, *args, **kwargs)

        return wrapper

    for name in ("remove", "move", "rmtree"):  # the moment between listing and unlinking
        monkeypatch.setattr(_walk.Run, name, swap_first(getattr(_walk.Run, name)))
    OPERATIONS[operation](safecache.Cache(root, auto_trim=False))
    assert state["done"], "the walk never reached a removal"
    assert [v for v in victims if not v.exists()] == []
    assert all(v.read_text() == "precious" for v in victims)


# -- Folder -------------------------------------------------------------------------------------
def test_a_folder_never_enters_a_symlink(tmp_path: Path, walk_mode: str) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "file").write_text("x")
    with Folder.open(str(tmp_path)) as top:
        with top.child("real") as real:
            assert real.scan() == []
        for name in ("link", "file"):
            with pytest.raises(NotADirectoryError):
                top.child(name)
        with pytest.raises(FileNotFoundError):
            top.child("missing")
    with pytest.raises(NotADirectoryError):
        Folder.open(str(tmp_path / "link"))


def test_a_folder_acts_only_on_the_directory_it_opened(tmp_path: Path, walk_mode: str) -> None:
    """After a swap a folder either still works on the directory it opened
    (by descriptor) or refuses (by path): never on what the swap put there."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("cache")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("precious")
    with Folder.open(str(tmp_path)) as top, top.child("d") as d:
        os.rename(tmp_path / "d", tmp_path / "moved")
        (tmp_path / "d").symlink_to(tmp_path / "outside", target_is_directory=True)
        assert not d.same()
        if walk_mode == "dir-fd":
            assert [e.name for e in d.scan()] == ["f"]
            assert d.unlink("f", budget=0.0) is True
            assert not (tmp_path / "moved" / "f").exists()
        else:
            with pytest.raises(NotADirectoryError):
                d.scan()
            with pytest.raises(NotADirectoryError):
                d.unlink("f", budget=0.0)
    assert (tmp_path / "outside" / "f").read_text() == "precious"


def test_survey_of_a_deep_tree_does_not_recurse(tmp_path: Path, walk_mode: str) -> None:
    """A staging tree deeper than the recursion limit: surveyed (its size,
    its newest mtime) with a stack of its own, one open directory per level."""
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(1050):  # past the recursion limit (os.makedirs would recurse too)
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"12345")
    finally:
        os.close(fd)
    cache = safecache.Cache(tmp_path / "cache", auto_trim=False)
    run = _walk.Run(cache, "test", _walk.Report(), None)
    try:
        with Folder.open(str(tmp_path)) as folder:
            newest, size = run.survey(folder, "deep")
        assert size == 5 and newest > 0
    finally:
        _osops.current = _osops.real  # by descriptor: pytest's own clean-up (and the path walk) would recurse
        _fs.rmtree(str(top))
