"""The remote tier's policy, against an in-memory remote store (the contract's
reference double): tiering, verification, signing, modes, the breaker, the
budget and the upload queue.  The real servers are in test_remote*.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import safecache
from safecache import _remote, _remote_open, _tier


class MemoryStore(_remote.RemoteStore):
    """A remote in a dict, shared by every "machine" of a test; can fail on demand."""

    kind = "memory"

    def __init__(self, objects: dict[str, bytes], failures: list[str]) -> None:
        self.objects = objects
        self.failures = failures  # causes to raise, one per request, in order
        self.display = "memory://test"
        self.requests = 0
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        with self.lock:
            self.requests += 1
            if self.failures:
                cause = self.failures.pop(0)
                if cause:
                    raise _remote.RemoteError(cause, f"injected {cause}")

    def get(self, name: str, *, max_size: int) -> bytes | None:
        self._maybe_fail()
        blob = self.objects.get(name)
        if blob is not None and len(blob) > max_size:
            raise _remote.RemoteError("oversized", "too big")
        return blob

    def put(self, name: str, data: bytes) -> None:
        self._maybe_fail()
        self.objects[name] = data

    def delete(self, name: str) -> None:
        self._maybe_fail()
        self.objects.pop(name, None)

    def close(self) -> None:
        pass


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, bytes], list[str]]:
    objects: dict[str, bytes] = {}
    failures: list[str] = []
    monkeypatch.setattr(_tier, "open_remote", lambda url, **kw: MemoryStore(objects, failures))
    return objects, failures


def machine(tmp_path: Path, name: str, **kwargs: object) -> safecache.Cache:
    """A cache with its own local root (another machine) and the shared remote."""
    return safecache.Cache(tmp_path / name, remote="memory://test", **kwargs)  # type: ignore[arg-type]


def test_a_put_on_one_machine_is_a_hit_on_another(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    a = machine(tmp_path, "a")
    a.bucket("lint", 3).put(("src/x.py", 88), b"no findings", meta=b"m", kind="fetched")
    a.close()  # flushes the upload queue
    b = machine(tmp_path, "b")
    bucket = b.bucket("lint", 3)
    assert bucket.get(("src/x.py", 88)) == b"no findings"
    assert bucket.get_with_meta(("src/x.py", 88)) == (b"no findings", b"m")
    assert b.tier is not None and b.tier.stats.hits >= 1
    # stored locally: the next read does not ask the remote
    objects, _ = remote
    objects.clear()
    assert bucket.get(("src/x.py", 88)) == b"no findings"
    (info,) = list(bucket.items())
    assert info.kind == "fetched"


def test_object_names_depend_on_bucket_version_and_key_only() -> None:
    name = _tier.object_name("lint", 3, "0" * 32)
    assert name.startswith("ac/") and len(name) == 3 + 64
    assert name != _tier.object_name("lint", 4, "0" * 32) != _tier.object_name("lint2", 3, "0" * 32)


def test_a_remote_miss_is_a_miss(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    assert machine(tmp_path, "a").bucket("b").get("absent") is None


def test_ttl_travels_and_an_expired_remote_entry_is_a_miss(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = machine(tmp_path, "a")
    a.bucket("b").put("k", b"v", ttl=60)
    a.close()
    later = time.time_ns() + 120 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: later)
    assert machine(tmp_path, "b").bucket("b").get("k") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[:-1],
        lambda blob: blob + b"x",
        lambda blob: blob[:20] + bytes([blob[20] ^ 1]) + blob[21:],
        lambda blob: blob[:-5] + bytes([blob[-5] ^ 0x10]) + blob[-4:],
        lambda blob: b"garbage" * 10,
        lambda blob: b"",
    ],
)
def test_a_damaged_remote_object_is_never_served(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], damage: object
) -> None:
    a = machine(tmp_path, "a")
    a.bucket("b").put("k", b"the value " * 50)
    a.close()
    objects, _ = remote
    (name,) = objects
    objects[name] = damage(objects[name])  # type: ignore[operator]
    b = machine(tmp_path, "b")
    assert b.bucket("b").get("k") is None
    assert b.tier is not None and sum(b.tier.stats.refused.values()) == 1


def test_an_entry_moved_to_another_key_is_refused(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    a = machine(tmp_path, "a")
    a.bucket("b").put("k1", b"one")
    a.close()
    objects, _ = remote
    (blob,) = objects.values()
    objects[_tier.object_name("b", 0, safecache._keys.key_digest("k2"))] = blob
    assert machine(tmp_path, "b").bucket("b").get("k2") is None


# -- signing ------------------------------------------------------------------------------------
def test_signed_entries_are_hits_for_the_same_key(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFECACHE_REMOTE_KEY", "secret-1")
    a = machine(tmp_path, "a")
    a.bucket("b").put("k", b"v")
    a.close()
    assert machine(tmp_path, "b").bucket("b").get("k") == b"v"


@pytest.mark.parametrize("writer_key", [None, "another-secret"])
def test_unsigned_or_mis_signed_entries_are_misses_when_a_key_is_set(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch, writer_key: str | None
) -> None:
    if writer_key:
        monkeypatch.setenv("SAFECACHE_REMOTE_KEY", writer_key)
    a = machine(tmp_path, "a")
    a.bucket("b").put("k", b"poison")
    a.close()
    monkeypatch.setenv("SAFECACHE_REMOTE_KEY", "secret-1")
    b = machine(tmp_path, "b")
    assert b.bucket("b").get("k") is None
    assert b.tier is not None and set(b.tier.stats.refused) <= {"unsigned", "bad-signature"} and b.tier.stats.refused


# -- modes ------------------------------------------------------------------------------------------
def test_read_only_never_writes(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    c = machine(tmp_path, "a", remote_mode="read-only")
    c.bucket("b").put("k", b"v")
    c.close()
    assert remote[0] == {}


def test_write_only_never_reads(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    a = machine(tmp_path, "a")
    a.bucket("b").put("k", b"v")
    a.close()
    assert machine(tmp_path, "b", remote_mode="write-only").bucket("b").get("k") is None


def test_mode_off_and_an_invalid_mode(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    assert machine(tmp_path, "a", remote_mode="off").tier is None
    with pytest.raises(ValueError):
        machine(tmp_path, "a", remote_mode="sideways")


def test_the_remote_comes_from_the_environment(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFECACHE_REMOTE", "memory://x")
    monkeypatch.setenv("SAFECACHE_REMOTE_MODE", "read-only")
    c = safecache.Cache(tmp_path / "c")
    assert c.tier is not None and c.tier.mode == "read-only"
    monkeypatch.setenv("MYTOOL_CACHE_REMOTE", "memory://mine")
    assert safecache.Cache(tmp_path / "c", app_name="mytool").tier.url == "memory://mine"  # type: ignore[union-attr]


# -- bounded failure ----------------------------------------------------------------------------
def test_failures_open_the_breaker_with_one_warning_and_nothing_raises(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]
) -> None:
    _, failures = remote
    failures.extend(["refused"] * 10)
    c = machine(tmp_path, "a")
    bucket = c.bucket("b")
    with pytest.warns(safecache.CacheWarning, match="failed 3 times") as caught:
        for i in range(10):
            assert bucket.get(i) is None
    assert len([w for w in caught if "remote" in str(w.message)]) == 1
    assert c.tier is not None and c.tier.stats.errors == {"refused": 3}  # then the breaker stopped asking


def test_the_breaker_closes_after_its_cooldown(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects, failures = remote
    failures.extend(["timeout"] * 3)
    c = machine(tmp_path, "a")
    bucket = c.bucket("b")
    with pytest.warns(safecache.CacheWarning):
        for i in range(3):
            bucket.get(i)
    clock = time.monotonic() + _tier.BREAKER_COOLDOWN + 1
    monkeypatch.setattr(_tier.time, "monotonic", lambda: clock)
    other = machine(tmp_path, "writer")
    other.bucket("b").put("later", b"v")
    other.close()
    assert bucket.get("later") == b"v"


def test_the_time_budget_turns_the_remote_off(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    c = machine(tmp_path, "a", remote_budget=0)
    with pytest.warns(safecache.CacheWarning, match="time budget"):
        assert c.bucket("b").get("k") is None
    assert remote[0] == {} and c.tier is not None and c.tier.stats.hits == 0


def test_strict_mode_raises_a_typed_error(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    remote[1].append("auth")
    c = machine(tmp_path, "a", strict=True)
    with pytest.raises(safecache.CacheError):
        c.bucket("b").get("k")


# -- uploads ----------------------------------------------------------------------------------------
def test_close_flushes_queued_uploads(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    c = machine(tmp_path, "a")
    bucket = c.bucket("b")
    for i in range(50):
        bucket.put(i, b"v%d" % i)
    c.close()
    assert len(remote[0]) == 50
    assert c.tier is not None and c.tier.stats.uploads == 50 and c.tier.stats.dropped == 0


def test_values_over_the_size_limit_stay_local(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    c = machine(tmp_path, "a", remote_max_size="1M")
    c.bucket("b").put("big", b"x" * (2 * 1024**2))
    c.bucket("b").put("small", b"x")
    c.close()
    assert len(remote[0]) == 1


def test_compression_for_the_remote_only(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    a = machine(tmp_path, "a", remote_compress=True)
    a.bucket("b").put("k", b"a" * 100_000)
    a.close()
    (blob,) = remote[0].values()
    assert len(blob) < 10_000
    assert machine(tmp_path, "b").bucket("b").get("k") == b"a" * 100_000


def test_a_zip_bomb_is_refused_without_inflating_it(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    import zlib

    name = _tier.object_name("b", 0, safecache._keys.key_digest("k"))
    bomb = zlib.compress(b"\0" * (50 * 1024**2))
    head = _tier.MAGIC + (1).to_bytes(2, "little") + _tier.FLAG_ZLIB.to_bytes(2, "little") + (100).to_bytes(8, "little")
    remote[0][name] = head + bomb
    assert machine(tmp_path, "b").bucket("b").get("k") is None


# -- doctor probes the remote ----------------------------------------------------------------------
def test_doctor_probes_the_remote_and_says_who_can_poison_it(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safecache import doctor

    monkeypatch.setattr(_remote_open, "open_remote", lambda url, **kw: MemoryStore(*remote))
    report = doctor.diagnose(machine(tmp_path, "a"))
    remote_finding = report.finding("remote")
    trust = report.finding("remote-trust")
    assert remote_finding is not None and remote_finding.status == "ok" and "round_trip_ms" in remote_finding.data
    assert trust is not None and trust.status == "warn" and "SAFECACHE_REMOTE_KEY" in trust.remedy
    assert remote[0] == {}  # the probe object was deleted


def test_doctor_names_a_failing_remote_and_what_to_do(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safecache import doctor

    monkeypatch.setattr(_remote_open, "open_remote", lambda url, **kw: MemoryStore(remote[0], ["not-allowed"]))
    finding = doctor.diagnose(machine(tmp_path, "a")).finding("remote")
    assert finding is not None and finding.status == "fail" and "dav_methods" in finding.remedy


def test_doctor_reports_signing(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    from safecache import doctor

    monkeypatch.setenv("SAFECACHE_REMOTE_KEY", "k")
    monkeypatch.setattr(_remote_open, "open_remote", lambda url, **kw: MemoryStore(*remote))
    trust = doctor.diagnose(machine(tmp_path, "a")).finding("remote-trust")
    assert trust is not None and trust.status == "ok"


def test_info_shows_what_the_remote_did(tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]) -> None:
    from safecache import maintenance
    from safecache._cli_format import render_info

    a = machine(tmp_path, "a")
    a.bucket("b").put("k", b"v")
    a.close()
    b = machine(tmp_path, "b")
    b.bucket("b").get("k")
    b.bucket("b").get("absent")
    b.close()
    row = maintenance.info(safecache.Cache(tmp_path / "b"))["buckets"]["b/v0"]  # type: ignore[index]
    assert (row["remote_hits"], row["remote_misses"]) == (1, 1)
    text = render_info(maintenance.info(safecache.Cache(tmp_path / "a")))
    assert "remote b/v0: 0 hits, 0 misses, 1 uploads (0 dropped)" in text


# -- trees through the remote ------------------------------------------------------------------------
def _fill(path: str) -> None:
    import os as _os

    _os.makedirs(_os.path.join(path, "pkg", "sub"))
    Path(path, "pkg", "__init__.py").write_text("print('hello')\n")
    Path(path, "pkg", "sub", "data.bin").write_bytes(bytes(range(256)) * 100)
    _os.symlink("__init__.py", _os.path.join(path, "pkg", "link.py"))


def test_a_tree_committed_on_one_machine_is_placed_on_another(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]
) -> None:
    a = machine(tmp_path, "a")
    a.bucket("wheels").trees.get_or_create("pkg-1.0", _fill)
    a.close()
    assert any(name.startswith("cas/") for name in remote[0])
    b = machine(tmp_path, "b")
    tree = b.bucket("wheels").trees.get("pkg-1.0")
    assert tree is not None and tree.verify() == []
    dest = tmp_path / "venv"
    report = tree.place(dest, mode="copy")
    assert report.complete
    assert (dest / "pkg" / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 100
    assert (dest / "pkg" / "link.py").is_symlink()
    assert b.tier is not None and b.tier.stats.hits == 1


@pytest.mark.parametrize("offset", [2, 20, 200, -1, -300])
def test_a_damaged_tree_archive_is_a_miss_and_nothing_is_committed(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]], offset: int
) -> None:
    a = machine(tmp_path, "a")
    a.bucket("wheels").trees.get_or_create("pkg-1.0", _fill)
    a.close()
    (name,) = [n for n in remote[0] if n.startswith("cas/")]
    blob = bytearray(remote[0][name])
    blob[offset] ^= 0x40
    remote[0][name] = bytes(blob)
    b = machine(tmp_path, "b")
    assert b.bucket("wheels").trees.get("pkg-1.0") is None
    assert not list((tmp_path / "b").rglob("__init__.py"))


def test_a_tree_archive_whose_manifest_escapes_the_tree_is_refused(
    tmp_path: Path, remote: tuple[dict[str, bytes], list[str]]
) -> None:
    import json

    from safecache import _format, _keys, _tree_remote

    digest = _keys.key_digest("evil")
    manifest = {"manifest": 1, "tree": "0" * 32, "kind": "built", "created_ns": 1, "dirs": [],
                "files": [["../../outside.txt", 4, 420, _keys.new_blake2b_128().hexdigest()]], "symlinks": []}
    payload = json.dumps(manifest).encode()
    entry = _format.pack_header(len(payload), 1, bytes.fromhex(digest), _format.crc32(payload), 1) + payload
    archive = _tree_remote.MAGIC + len(entry).to_bytes(8, "little") + entry + b"evil"
    name = _tree_remote.object_name("wheels", 0, digest)
    remote[0][name] = _tier.seal(name, archive, key=None, compress=False)
    b = machine(tmp_path, "b")
    assert b.bucket("wheels").trees.get("evil") is None
    assert not (tmp_path / "outside.txt").exists()
