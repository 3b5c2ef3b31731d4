"""Shared fixtures: cache roots, the stress switch, and unprivileged children."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

MiB = 1024 * 1024

import pytest

import safecache
from safecache import _osops, _policy

SRC = Path(__file__).resolve().parent.parent / "src"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stress",
        action="store_true",
        default=False,
        help="run long stress tests (more processes, more iterations, longer races)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stress = config.getoption("--stress")  # type: ignore[attr-defined]


@pytest.fixture
def stress(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with --stress."""
    return bool(request.config.getoption("--stress"))


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with fresh warn-once state and the real OS, in a
    working directory of its own (``doctor`` probes link modes into the
    current directory by default: never into the checkout)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    _policy.reset_warnings()
    before = _osops.current
    yield
    _osops.current = before
    _policy.reset_warnings()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A path for a cache root that does not exist yet."""
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_dir: Path) -> Iterator[safecache.Cache]:
    with safecache.Cache(cache_dir) as c:
        yield c


# -- unprivileged children ---------------------------------------------------------
UNPRIVILEGED_USER = "nobody"


def _unprivileged_python(uid: int, gid: int) -> str | None:
    """An interpreter the unprivileged user can execute (the test's own may
    sit in a directory that user cannot enter)."""
    candidates = [sys.executable, os.path.realpath(sys.executable), shutil.which("python3") or "", "/usr/bin/python3"]
    for candidate in candidates:
        if not candidate or not os.path.exists(candidate):
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info >= (3, 10)"],
                preexec_fn=_drop(uid, gid),
                capture_output=True,
                cwd="/",
                env={"PATH": os.defpath},
            )
        except OSError:  # not even executable by that user (e.g. under a 0700 home)
            continue
        if probe.returncode == 0:
            return candidate
    return None


def _drop(uid: int, gid: int):  # type: ignore[no-untyped-def]
    def preexec() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return preexec


class Unprivileged:
    """Runs Python code as an unprivileged user, against a readable copy of
    safecache (CI's clone may sit where that user cannot enter)."""

    def __init__(self, root: Path, uid: int, gid: int, python: str) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self.python = python

    def run(self, code: str, *, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full_env = {"PATH": os.defpath, "PYTHONPATH": str(self.root), "HOME": str(self.root), "PYTHONDONTWRITEBYTECODE": "1"}
        full_env.update(env or {})
        return subprocess.run(
            [self.python, "-c", code],
            preexec_fn=_drop(self.uid, self.gid),
            capture_output=True,
            text=True,
            cwd="/",
            env=full_env,
            timeout=timeout,
        )

    def run_json(self, code: str, **kwargs: object) -> object:
        """Run ``code`` (which must print one JSON document last) and parse it;
        fail the test with the child's stderr if it did not succeed."""
        proc = self.run(code, **kwargs)  # type: ignore[arg-type]
        assert proc.returncode == 0, f"unprivileged child failed ({proc.returncode}):\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def workdir(self) -> Path:
        """A fresh directory the unprivileged user can enter (owned by root)."""
        path = Path(tempfile.mkdtemp(prefix="work-", dir=self.root.parent))
        path.chmod(0o755)
        return path


@pytest.fixture(scope="session")
def unprivileged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unprivileged]:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root; as a normal user the permission tests in this file do not apply")
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    base = Path(tempfile.mkdtemp(prefix="safecache-unpriv-"))
    base.chmod(0o755)
    code_root = base / "code"
    shutil.copytree(SRC / "safecache", code_root / "safecache", ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(base):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    python = _unprivileged_python(entry.pw_uid, entry.pw_gid)
    if python is None:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail("no Python interpreter is executable by the unprivileged user (install Debian's python3)")
    yield Unprivileged(code_root, entry.pw_uid, entry.pw_gid, python)
    _force_rmtree(base)


def _force_rmtree(path: Path) -> None:
    """Remove a tree whose modes tests changed (as root, chmod always works)."""
    for dirpath, _dirnames, _filenames in os.walk(path):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


# -- a reflink-capable file system (loop-mounted XFS or btrfs) ------------------------------
_IMAGES = (
    # (mkfs program, its arguments, image size): XFS refuses images under 300 MB
    ("mkfs.xfs", ["-q", "-m", "reflink=1"], 320 * MiB),
    ("mkfs.btrfs", ["-q"], 128 * MiB),
)


def _sbin_which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


@pytest.fixture(scope="session")
def reflink_dir() -> Iterator[Path]:
    """A directory on a freshly made, loop-mounted XFS (or btrfs) image."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system image needs root")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices (/dev/loop-control is missing)")
    tools = [(path, args, size) for name, args, size in _IMAGES if (path := _sbin_which(name))]
    if not tools:
        pytest.skip("neither mkfs.xfs (Debian: xfsprogs) nor mkfs.btrfs (btrfs-progs) is installed")
    base = Path(tempfile.mkdtemp(prefix="safecache-reflink-"))
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    problems = []
    mounted = False
    for mkfs, args, size in tools:
        image = base / f"{os.path.basename(mkfs)}.img"
        with open(image, "wb") as f:
            f.truncate(size)  # sparse: a few MB on disk
        made = subprocess.run([mkfs, *args, str(image)], capture_output=True, text=True)
        if made.returncode != 0:
            problems.append(f"{mkfs}: {made.stderr.strip()}")
            continue
        mount = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
        if mount.returncode != 0:
            problems.append(f"mount -o loop ({os.path.basename(mkfs)} image): {mount.stderr.strip()}")
            continue
        mounted = True
        break
    if not mounted:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip("could not make a reflink-capable file system: " + "; ".join(problems))
    try:
        work = mountpoint / "work"
        work.mkdir()
        yield work
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


