"""The command line, through real subprocesses: every command, exit codes
(0 done or healthy, 1 problems, 2 usage), ``--json``, quiet output in
scripts, progress and colour only on a terminal (a pty here), with and
without ``rich``; and ``safecache.cli``, the API that puts the same commands
inside a tool's own command line.

``rich`` is optional: the tests that need it skip without it, and the
fallback is tested either way by hiding it (``sys.modules["rich"] = None``)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import safecache
import safecache.cli
from safecache import maintenance
from safecache._units import format_size
from safecache.testing import WinError, inject_errors

try:
    import rich  # noqa: F401

    HAVE_RICH = True
except ImportError:
    HAVE_RICH = False

needs_rich = pytest.mark.skipif(not HAVE_RICH, reason="rich is not installed (pip install rich)")

# Runs the command line with rich hidden, as on an install without the extra.
NO_RICH = "import sys; sys.modules['rich'] = None; from safecache._cli import main; sys.exit(main(sys.argv[1:]))"


def cli_env(env: dict[str, str] | None) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "SAFECACHE_DIR", "SAFECACHE_DISABLE")}
    full.update(env or {})
    return full


def run_cli(*args: str, env: dict[str, str] | None = None, rich: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m safecache ARGS`` (or the no-rich bootstrap), stdin not a
    terminal, stdout and stderr captured (not terminals either)."""
    head = [sys.executable, "-m", "safecache"] if rich else [sys.executable, "-c", NO_RICH]
    return subprocess.run([*head, *args], capture_output=True, text=True, env=cli_env(env), timeout=120,
                          stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir())


def run_json(*args: str, expect: int = 0, **kwargs: Any) -> Any:
    proc = run_cli(*args, "--json", **kwargs)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def run_in_pty(args: list[str], *, env: dict[str, str] | None = None, answer: bytes | None = None) -> tuple[int, bytes]:
    """Run ``args`` with stdin, stdout and stderr on a pseudo-terminal; return
    the exit code and everything written to it.  ``answer`` is typed once the
    program has written a question ending in ``] ``."""
    pty = pytest.importorskip("pty")  # POSIX only
    master, slave = pty.openpty()
    full_env = cli_env(env)
    full_env.setdefault("TERM", "xterm-256color")
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=full_env, close_fds=True,
                            cwd=tempfile.gettempdir())
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                out += data
                if answer is not None and out.rstrip().endswith(b"]"):
                    os.write(master, answer)
                    answer = None
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=60), out


def safecache_args(*args: str, rich: bool = True) -> list[str]:
    return [sys.executable, "-m", "safecache", *args] if rich else [sys.executable, "-c", NO_RICH, *args]


# -- a cache to work on -------------------------------------------------------------------------
def fill(root: Path, n: int = 200) -> None:
    """lint v2 (old), lint v3 (built, with hits and misses), wheels (fetched)."""
    with safecache.Cache(root) as cache:
        old = cache.bucket("lint", version=2)
        old.put("stale", b"old results")
        lint = cache.bucket("lint", version=3)
        for i in range(n):
            lint.put(f"k{i}", b"x" * 1000)
        for i in range(n + n // 4):
            lint.get(f"k{i}")
        wheels = cache.bucket("wheels")
        for i in range(10):
            wheels.put(f"w{i}", b"w" * 5000, kind="fetched")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    fill(path)
    return path


def on_disk(root: Path, label: str) -> int:
    """The bytes of a bucket version's entries, by a real walk."""
    return sum(p.stat().st_size for p in (root / "buckets" / label).glob("??/*"))


def corrupt_one(root: Path) -> Path:
    entry = sorted((root / "buckets" / "lint" / "v3").glob("*/*"))[0]
    with open(entry, "ab") as f:
        f.write(b"garbage")
    return entry


# -- dir ------------------------------------------------------------------------------------
def test_dir(tmp_path: Path) -> None:
    proc = run_cli("dir", "--cache-dir", str(tmp_path / "c"))
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, str(tmp_path / "c"), "")
    data = run_json("dir", "--app-name", "mytool", env={"MYTOOL_CACHE_DIR": str(tmp_path / "m")})
    assert data == {"path": str(tmp_path / "m"), "source": "the environment variable MYTOOL_CACHE_DIR", "state": "ready"}


def test_dir_prints_the_path(tmp_path: Path) -> None:
    proc = run_cli("dir", env={"SAFECACHE_DIR": str(tmp_path / "x")})
    assert (proc.returncode, proc.stdout.strip()) == (0, str(tmp_path / "x"))


def test_dir_json(tmp_path: Path) -> None:
    data = json.loads(run_cli("dir", "--json", "--cache-dir", str(tmp_path / "x")).stdout)
    assert data == {"path": str(tmp_path / "x"), "source": "the --cache-dir option", "state": "ready"}


# -- the command itself ------------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["frobnicate"], ["doctor", "--no-such-flag"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run_cli(*args).returncode == 2


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and safecache.__version__ in proc.stdout


# -- info -----------------------------------------------------------------------------------
def test_info_text_is_human_readable(root: Path) -> None:
    proc = run_cli("info", "--cache-dir", str(root))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"cache:      {root} (ready)" in out
    assert "of a 5.0 GiB limit" in out and "KiB" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("lint/", "wheels/"))}
    assert set(lines) == {"lint/v2", "lint/v3", "wheels/v0"}
    assert "80.0 %" in lines["lint/v3"]  # 200 hits, 50 misses
    assert f" {format_size(on_disk(root, 'lint/v3'))} " in lines["lint/v3"] and " 200 " in lines["lint/v3"]
    assert lines["wheels/v0"].rstrip().endswith("-")  # no errors


def test_info_json_has_exact_bytes(root: Path) -> None:
    data = run_json("info", "--cache-dir", str(root))
    lint = data["buckets"]["lint/v3"]
    assert (lint["entries"], lint["size"], lint["hits"], lint["misses"]) == (200, on_disk(root, "lint/v3"), 200, 50)
    assert lint["hit_rate"] == pytest.approx(0.8) and lint["errors"] == {}
    assert data["entries"] == 211 and data["size"] == sum(b["size"] for b in data["buckets"].values())
    assert data["max_size"] == 5 * 1024**3 and data["path"] == str(root)


def test_info_shows_errors_by_cause(root: Path) -> None:
    with safecache.Cache(root, retry_budget=0.01) as cache:
        lint = cache.bucket("lint", version=3)
        with pytest.warns(safecache.CacheWarning), inject_errors(WinError(32), ops=("replace", "rename")):
            for i in range(3):
                lint.put(f"new{i}", b"v")
        with pytest.warns(safecache.CacheWarning), inject_errors(errno.ENOSPC, ops=("write",)):
            lint.put("full", b"v")
    proc = run_cli("info", "--cache-dir", str(root))
    line = next(line for line in proc.stdout.splitlines() if line.startswith("lint/v3"))
    assert line.endswith("busy: 3, full: 1"), line
    assert run_json("info", "--cache-dir", str(root))["buckets"]["lint/v3"]["errors"] == {"busy": 3, "full": 1}


def test_info_on_an_empty_and_a_disabled_cache(tmp_path: Path) -> None:
    proc = run_cli("info", "--cache-dir", str(tmp_path / "new"))
    assert proc.returncode == 0 and "no buckets yet" in proc.stdout and "last trim:  never" in proc.stdout
    assert not (tmp_path / "new").exists()  # info writes nothing
    data = run_json("info", env={"SAFECACHE_DISABLE": "1"})
    assert data["path"] is None and data["state"] == "disabled"


# -- prune ------------------------------------------------------------------------------------
def test_prune_removes_old_bucket_versions(root: Path) -> None:
    data = run_json("prune", "--cache-dir", str(root))
    assert data["command"] == "prune" and data["ok"] is True and data["removed_entries"] == 1
    assert not (root / "buckets" / "lint" / "v2").exists()
    assert set(data) >= {"removed_entries", "removed_trees", "removed_temp", "freed_bytes", "kept_in_use",
                         "problems", "skipped_reason", "path"}


def test_prune_ci_keeps_built_and_drops_fetched(root: Path) -> None:
    proc = run_cli("prune", "--ci", "--cache-dir", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("removed 11 entries")  # lint/v2 and the 10 wheels
    buckets = run_json("info", "--cache-dir", str(root))["buckets"]
    assert buckets["lint/v3"]["entries"] == 200 and buckets["wheels/v0"]["entries"] == 0


def test_prune_by_size_and_age(root: Path) -> None:
    data = run_json("prune", "--max-size", "100KiB", "--bucket", "lint/v3", "--cache-dir", str(root))
    assert data["ok"] and data["removed_entries"] > 100
    info = run_json("info", "--cache-dir", str(root))
    assert info["buckets"]["lint/v3"]["size"] <= 100 * 1024
    assert run_json("prune", "--older-than", "1h30m", "--cache-dir", str(root))["ok"] is True
    data = run_json("prune", "--older-than", "0s", "--bucket", "wheels", "lint/v2", "--cache-dir", str(root))
    assert data["removed_entries"] == 10  # lint/v2 went with the first prune; lint/v3 was not selected
    assert run_json("info", "--cache-dir", str(root))["buckets"]["lint/v3"]["entries"] > 0


def test_prune_on_a_cache_with_nothing_in_it(tmp_path: Path) -> None:
    proc = run_cli("prune", "--cache-dir", str(tmp_path / "new"))
    assert (proc.returncode, proc.stdout.strip()) == (0, "nothing to remove")


@pytest.mark.unprivileged
def test_prune_skipped_on_a_read_only_cache_exits_1(unprivileged: Any) -> None:
    """A cache another user owns is used only in shared mode (docs/security.md),
    and then read-only for a user who cannot write it: prune is skipped."""
    root = unprivileged.workdir() / "cache"
    fill(root, n=5)  # root's, 0755: readable by nobody, not writable
    code = "import sys; from safecache._cli import main; sys.exit(main(sys.argv[1:]))"
    env = {"SAFECACHE_SHARED": "1"}

    def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
        return unprivileged.run(f"import sys; sys.argv[1:] = {list(args)!r}; {code}", env=env)

    proc = as_nobody("prune", "--cache-dir", str(root))
    assert proc.returncode == 1 and "skipped: the cache is read-only" in proc.stdout, proc.stdout + proc.stderr
    proc = as_nobody("prune", "--cache-dir", str(root), "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 1 and data["ok"] is False and data["skipped_reason"].startswith("the cache is read-only")
    assert len(list((root / "buckets").glob("*/*/*/*"))) == 5 + 1 + 10  # nothing removed


@pytest.mark.parametrize("value", ["7", "7x", "abc", "-1d", "1d2", "", "d"])
def test_bad_durations_are_usage_errors(tmp_path: Path, value: str) -> None:
    proc = run_cli("prune", f"--older-than={value}", "--cache-dir", str(tmp_path))
    assert proc.returncode == 2 and "invalid duration" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("value", ["5X", "-1", "1.5.2G", "", "G", "10 parsecs"])
def test_bad_sizes_are_usage_errors(tmp_path: Path, value: str) -> None:
    proc = run_cli("prune", f"--max-size={value}", "--cache-dir", str(tmp_path))
    assert proc.returncode == 2 and "invalid size" in proc.stderr


@pytest.mark.parametrize("args", [["prune", "--bucket", "Lint"], ["clean", "lint/3"], ["prune", "--timeout", "soon"],
                                  ["verify", "--repair=yes"], ["info", "extra"], ["doctor", "--target"]])
def test_other_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    assert run_cli(*args, "--cache-dir", str(tmp_path)).returncode == 2


# -- clean ------------------------------------------------------------------------------------
def test_clean_named_buckets(root: Path) -> None:
    proc = run_cli("clean", "lint", "--cache-dir", str(root))
    assert proc.returncode == 0 and proc.stdout.startswith("removed 201 entries"), proc.stdout
    assert set(run_json("info", "--cache-dir", str(root))["buckets"]) == {"wheels/v0"}


def test_clean_everything_from_a_script_needs_no_yes(root: Path) -> None:
    """Decided (docs/cli.md): without a terminal on stdin there is nobody to
    ask, and a cache holds only what can be made again, so clean proceeds."""
    data = run_json("clean", "--cache-dir", str(root))
    assert data["ok"] is True and data["removed_entries"] == 211
    assert run_json("info", "--cache-dir", str(root))["buckets"] == {}
    assert sorted(p.name for p in root.iterdir()) >= [".gitignore", "CACHEDIR.TAG", "README"]


@pytest.mark.parametrize(("answer", "code", "left"), [(b"n\n", 1, 211), (b"y\n", 0, 0)])
def test_clean_everything_asks_on_a_terminal(root: Path, answer: bytes, code: int, left: int) -> None:
    rc, out = run_in_pty(safecache_args("clean", "--cache-dir", str(root)), env={"NO_COLOR": "1"}, answer=answer)
    assert rc == code, out
    assert f"Remove every entry and tree in {root} (".encode() in out and b", 211 entries)? [y/N]" in out
    assert run_json("info", "--cache-dir", str(root))["entries"] == left


def test_clean_yes_skips_the_question(root: Path) -> None:
    rc, out = run_in_pty(safecache_args("clean", "--yes", "--cache-dir", str(root)), env={"NO_COLOR": "1"})
    assert rc == 0 and b"[y/N]" not in out and b"removed 211 entries" in out


def test_clean_with_a_tree_in_use_is_partial_unless_forced(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_text("hello")
    with safecache.Cache(root) as cache:
        tree = cache.bucket("wheels").trees.put("pkg", source)
        with tree:  # this process holds it, as an installer placing it would
            data = run_json("clean", "--timeout", "0.2", "--cache-dir", str(root), expect=1)
            assert data["ok"] is False and data["kept_in_use"] == 1
            proc = run_cli("clean", "--force", "--cache-dir", str(root))
            assert proc.returncode == 0, proc.stdout


# -- verify -----------------------------------------------------------------------------------
def test_verify_finds_repairs_and_then_passes(root: Path) -> None:
    entry = corrupt_one(root)
    proc = run_cli("verify", "--cache-dir", str(root))
    assert proc.returncode == 1 and "wrong-length" in proc.stdout and "safecache verify --repair" in proc.stdout
    data = run_json("verify", "--cache-dir", str(root), expect=1)
    assert data["ok"] is False and [p["reason"] for p in data["problems"]] == ["wrong-length"]
    assert data["problems"][0]["repaired"] is False and entry.exists()
    data = run_json("verify", "--repair", "--cache-dir", str(root), expect=1)  # found: 1, as fsck
    assert data["ok"] is False and data["problems"][0]["repaired"] is True and not entry.exists()
    proc = run_cli("verify", "--cache-dir", str(root))
    assert (proc.returncode, proc.stdout.strip()) == (0, "no corruption found")


def test_verify_text_lists_a_bounded_number_of_problems(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    fill(root, n=400)
    for entry in sorted((root / "buckets" / "lint" / "v3").glob("*/*"))[:30]:
        entry.write_bytes(b"junk")
    proc = run_cli("verify", "--cache-dir", str(root))
    assert proc.returncode == 1 and "... and 10 more (--json lists them all)" in proc.stdout
    assert len(run_json("verify", "--cache-dir", str(root), expect=1)["problems"]) == 30


def test_verify_on_a_disabled_cache_is_skipped(tmp_path: Path) -> None:
    data = run_json("verify", env={"SAFECACHE_DISABLE": "1"}, expect=1)
    assert data["ok"] is False and "caching is off" in data["skipped_reason"]


# -- doctor through the same command line ------------------------------------------------------
def test_doctor_exit_codes_and_json(tmp_path: Path) -> None:
    assert run_json("doctor", "--cache-dir", str(tmp_path / "c"))["healthy"] is True
    (tmp_path / "file").write_text("x")
    data = run_json("doctor", "--cache-dir", str(tmp_path / "file" / "c"), expect=1)
    assert data["healthy"] is False and data["status"] == "fail"


# -- quiet in scripts, progress and colour on a terminal ------------------------------------------
@pytest.mark.parametrize("rich", [True, False], ids=["rich", "no-rich"])
def test_scripts_get_no_progress_and_no_ansi(root: Path, rich: bool) -> None:
    corrupt_one(root)
    for args in (["info"], ["verify"], ["doctor"], ["prune"], ["clean", "lint"], ["verify", "--repair"]):
        proc = run_cli(*args, "--cache-dir", str(root), rich=rich)
        assert proc.returncode in (0, 1), proc.stderr
        assert "\x1b" not in proc.stdout + proc.stderr, args
        assert proc.stderr == "", (args, proc.stderr)  # no progress, no noise


@needs_rich
def test_progress_bar_with_rich_on_a_terminal(root: Path) -> None:
    rc, out = run_in_pty(safecache_args("verify", "--cache-dir", str(root)))
    assert rc == 0, out
    assert b"verifying" in out and b"\x1b[" in out  # rich's bar, drawn and erased
    assert out.rstrip().endswith(b"no corruption found")


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "no-rich"])
def test_no_color_means_no_ansi_even_on_a_terminal(root: Path, rich: bool) -> None:
    for args in (["verify"], ["doctor"], ["prune"]):
        rc, out = run_in_pty(safecache_args(*args, "--cache-dir", str(root), rich=rich), env={"NO_COLOR": "1"})
        assert rc == 0, out
        assert b"\x1b" not in out, (args, out)
    rc, out = run_in_pty(safecache_args("verify", "--cache-dir", str(root), rich=rich), env={"NO_COLOR": "1"})
    assert b"\rverifying" in out  # the plain progress line


def test_without_rich_progress_is_plain_text(root: Path) -> None:
    rc, out = run_in_pty(safecache_args("verify", "--cache-dir", str(root), rich=False))
    assert rc == 0 and b"\x1b" not in out
    assert b"verifying: 256/256 (100%)" in out or b"verifying: " in out
    assert out.rstrip().endswith(b"no corruption found")


def test_doctor_colours_only_on_a_terminal_without_no_color(tmp_path: Path) -> None:
    rc, out = run_in_pty(safecache_args("doctor", "--cache-dir", str(tmp_path / "c")))
    assert rc == 0 and b"\x1b[32mok" in out
    rc, out = run_in_pty(safecache_args("doctor", "--cache-dir", str(tmp_path / "c")), env={"TERM": "dumb"})
    assert rc == 0 and b"\x1b" not in out


def test_json_on_a_terminal_has_no_progress(root: Path) -> None:
    rc, out = run_in_pty(safecache_args("verify", "--json", "--cache-dir", str(root)))
    assert rc == 0 and b"verifying" not in out and b"\x1b" not in out
    assert json.loads(out.decode())["ok"] is True


def test_rich_is_imported_only_for_a_progress_bar(root: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, io, contextlib
        import safecache, safecache.cli
        assert "rich" not in sys.modules and "click" not in sys.modules
        from safecache._cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            for args in (["info"], ["verify"], ["prune"], ["doctor"]):
                main([*args, "--cache-dir", {str(root)!r}])
        assert "rich" not in sys.modules, "rich imported without a terminal"
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(None),
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr


def test_help_exits_0(tmp_path: Path) -> None:
    for args in (["--help"], ["prune", "--help"], ["clean", "-h"]):
        proc = run_cli(*args)
        assert proc.returncode == 0 and "exit codes: 0" in proc.stdout


# -- the API for tool authors ----------------------------------------------------------------------
TOOL = '''
import argparse, sys
import safecache, safecache.cli

def open_cache():
    print("opened", file=sys.stderr)
    return safecache.Cache(app_name="mytool", max_size=10**6)

parser = argparse.ArgumentParser(prog="mytool")
parser.add_argument("--json", action="store_true", help="the tool's own --json")
sub = parser.add_subparsers(dest="command")
sub.add_parser("lint")
safecache.cli.add_commands(sub, cache=open_cache)
args = parser.parse_args()
code = safecache.cli.handle(args)
if code is not None:
    sys.exit(code)
print(f"linting (json={args.json})")
'''


@pytest.fixture
def tool(tmp_path: Path) -> Any:
    script = tmp_path / "mytool.py"
    script.write_text(TOOL)
    cache_dir = tmp_path / "mytool-cache"
    fill(cache_dir)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = cli_env({"MYTOOL_CACHE_DIR": str(cache_dir)})
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                              timeout=120, stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir())

    run.cache_dir = cache_dir  # type: ignore[attr-defined]
    return run


def test_tool_runs_its_own_commands_without_opening_the_cache(tool: Any) -> None:
    proc = tool("--json", "lint")
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "linting (json=True)", "")


def test_tool_cache_commands(tool: Any) -> None:
    proc = tool("cache", "dir")
    assert (proc.returncode, proc.stdout.strip()) == (0, str(tool.cache_dir))
    info = json.loads(tool("cache", "info", "--json").stdout)
    assert info["max_size"] == 10**6 and info["buckets"]["lint/v3"]["entries"] == 200
    proc = tool("cache", "prune", "--older-than", "soon")
    assert proc.returncode == 2 and "mytool cache prune: error: argument --older-than" in proc.stderr
    proc = tool("cache", "clean", "wheels", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["removed_entries"] == 10
    corrupt_one(tool.cache_dir)
    proc = tool("cache", "verify")
    assert proc.returncode == 1 and "run `mytool cache verify --repair`" in proc.stdout


def test_tool_cache_help_and_no_command(tool: Any) -> None:
    proc = tool("cache", "--help")
    assert proc.returncode == 0 and "usage: mytool cache" in proc.stdout
    for name in safecache.cli.COMMANDS:
        assert name in proc.stdout
    assert "--app-name" not in tool("cache", "info", "--help").stdout
    proc = tool("cache")
    assert proc.returncode == 2 and "usage: mytool cache" in proc.stderr


def test_tool_doctor_names_the_tools_command(tool: Any) -> None:
    objects = tool.cache_dir / "buckets" / "lint" / "v3"
    leftover = objects / "00" / "left.1-1.tmp"
    leftover.write_bytes(b"")
    then = time.time() - 7200
    os.utime(leftover, (then, then))
    data = json.loads(tool("cache", "doctor", "--json").stdout)
    stale = next(f for f in data["findings"] if f["name"] == "stale-temp")
    assert "`mytool cache prune`" in stale["remedy"]
    assert "MYTOOL_CACHE_DIR" in data["source"]


def test_run_returns_exit_codes_and_never_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cache"
    fill(root)
    cache = safecache.Cache(root)
    assert safecache.cli.run(["info", "--json"], cache=cache, prog="mytool cache") == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 211
    assert safecache.cli.run(["prune", "--max-size", "lots"], cache=cache, prog="mytool cache") == 2
    assert "mytool cache prune: error" in capsys.readouterr().err
    assert safecache.cli.run(["--help"], cache=cache, prog="mytool cache") == 0
    assert "usage: mytool cache" in capsys.readouterr().out
    assert safecache.cli.run([], cache=cache) == 2
    corrupt_one(root)
    assert safecache.cli.run(["verify"], cache=cache) == 1
    assert safecache.cli.run(["verify", "--repair"], cache=cache) == 1  # found and repaired: still 1
    assert safecache.cli.run(["verify"], cache=cache) == 0
    capsys.readouterr()
    assert safecache.cli.run(["clean", "--json"], cache=lambda: cache) == 0
    assert json.loads(capsys.readouterr().out)["removed_entries"] == 210


def test_run_with_cache_dir_keeps_the_tools_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tools_cache = safecache.Cache(tmp_path / "default", max_size=12345)
    other = tmp_path / "other"
    assert safecache.cli.run(["info", "--json", "--cache-dir", str(other)], cache=tools_cache) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["path"], data["max_size"]) == (str(other), 12345)


def test_add_commands_to_a_parser_directly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def open_cache() -> safecache.Cache:
        calls.append(1)
        return safecache.Cache(tmp_path / "c")

    parser = argparse.ArgumentParser(prog="tool-cache")
    returned = safecache.cli.add_commands(parser, cache=open_cache, commands=("dir", "info"))
    assert returned is parser
    args = parser.parse_args(["dir"])
    assert calls == []  # parsing opens nothing
    assert safecache.cli.handle(args) == 0 and calls == [1]
    assert capsys.readouterr().out.strip() == str(tmp_path / "c")
    with pytest.raises(SystemExit):
        parser.parse_args(["clean"])  # not offered
    assert safecache.cli.handle(argparse.Namespace(command="lint")) is None


def test_add_commands_rejects_what_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="unknown commands"):
        safecache.cli.add_commands(argparse.ArgumentParser(), cache=safecache.Cache(enabled=False), commands=("nuke",))
    with pytest.raises(TypeError):
        safecache.cli.add_commands(object(), cache=safecache.Cache(enabled=False))  # type: ignore[arg-type]


def test_exit_code_rules(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """0 done; 1 skipped, partial, or problems left."""
    fill(tmp_path / "c", n=1)
    cache = safecache.Cache(tmp_path / "c")

    def fake(**fields: Any) -> Any:
        def operation(*args: Any, **kwargs: Any) -> maintenance.Report:
            report = maintenance.Report()
            for name, value in fields.items():
                setattr(report, name, value)
            return report

        return operation

    cases = [
        ({}, 0),
        ({"removed_entries": 3}, 0),
        ({"skipped_reason": "another process is trimming"}, 1),
        ({"kept_in_use": 2}, 1),
        ({"problems": [{"bucket": "b/v0", "path": "x", "kind": "entry", "reason": "unreadable", "repaired": False}]}, 1),
    ]
    for fields, expected in cases:
        monkeypatch.setattr(maintenance, "prune", fake(**fields))
        monkeypatch.setattr(maintenance, "clean", fake(**fields))
        assert safecache.cli.run(["prune"], cache=cache) == expected, fields
        assert safecache.cli.run(["clean", "--yes"], cache=cache) == expected, fields
    repaired = [{"bucket": "b/v0", "path": "x", "kind": "entry", "reason": "bad-checksum", "repaired": True}]
    monkeypatch.setattr(maintenance, "verify", fake(problems=repaired))
    assert safecache.cli.run(["verify", "--repair"], cache=cache) == 1  # as fsck: something was found
    monkeypatch.setattr(maintenance, "verify", fake())
    assert safecache.cli.run(["verify", "--repair"], cache=cache) == 0
    monkeypatch.setattr(maintenance, "verify", fake(skipped_reason="the cache is read-only: ..."))
    assert safecache.cli.run(["verify", "--repair"], cache=cache) == 0  # checked, nothing found
    capsys.readouterr()


def test_click_command(tmp_path: Path) -> None:
    click = pytest.importorskip("click")
    from click.testing import CliRunner

    root = tmp_path / "cache"
    fill(root)

    @click.group()
    def main() -> None:
        """mytool"""

    main.add_command(safecache.cli.click_command(cache=lambda: safecache.Cache(root)))
    runner = CliRunner()
    result = runner.invoke(main, ["cache", "info", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["entries"] == 211
    result = runner.invoke(main, ["cache", "prune", "--older-than", "x"])
    assert result.exit_code == 2
    result = runner.invoke(main, ["cache", "--help"])
    assert result.exit_code == 0 and "main cache" in result.output


# -- what a new user hit --------------------------------------------------------------------------
def test_a_stray_file_in_a_bucket_says_what_it_is_and_what_to_do(root: Path) -> None:
    stray = root / "buckets" / "lint" / "v3" / "00" / "notes.txt"
    stray.parent.mkdir(exist_ok=True)
    stray.write_text("mine")
    proc = run_cli("verify", "--repair", "--cache-dir", str(root))
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if "notes.txt" in line)
    assert "unexpected file" in line and "not made by safecache" in line and "remove it by hand" in line
    assert "1 left (each line above says why, and what to do)" in proc.stdout
    problem = run_json("verify", "--cache-dir", str(root), expect=1)["problems"][0]
    assert problem["repaired"] is False and "remove it by hand" in problem["remedy"] and stray.exists()
    stray.unlink()  # what it said to do
    assert run_cli("verify", "--repair", "--cache-dir", str(root)).returncode == 0


def test_dir_info_and_verify_on_a_disabled_root_say_why(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the cache another owner")
    os.chown(root, 65534, 65534)  # another user's cache: not used (docs/security.md)
    why = "is owned by nobody"
    proc = run_cli("dir", "--cache-dir", str(root))
    assert (proc.returncode, proc.stdout.strip()) == (0, str(root)) and why in proc.stderr
    assert why in run_json("dir", "--cache-dir", str(root))["reason"]
    proc = run_cli("info", "--cache-dir", str(root))
    assert proc.returncode == 0 and f"cache:      {root} (disabled)" in proc.stdout and f"why:        '{root}' {why}" in proc.stdout
    assert why in run_json("info", "--cache-dir", str(root))["reason"]
    proc = run_cli("verify", "--cache-dir", str(root))
    assert proc.returncode == 1 and "skipped: the cache is disabled: " in proc.stdout and why in proc.stdout
    proc = run_cli("verify", env={"SAFECACHE_DISABLE": "1"})
    assert proc.returncode == 1 and "SAFECACHE_DISABLE" in proc.stdout
    assert "SAFECACHE_DISABLE" in run_cli("info", env={"SAFECACHE_DISABLE": "1"}).stdout


def test_clean_or_prune_of_a_bucket_that_does_not_exist_says_so(root: Path) -> None:
    proc = run_cli("clean", "lnt", "--cache-dir", str(root))
    assert proc.returncode == 0 and "no bucket lnt in this cache (its buckets: lint/v2, lint/v3, wheels/v0)" in proc.stdout
    data = run_json("prune", "--bucket", "lint/v9", "wheels", "--cache-dir", str(root))
    assert data["not_found"] == ["lint/v9"]
    assert run_json("clean", "wheels", "--cache-dir", str(root))["not_found"] == []


def test_last_trim_is_never_until_a_trim_ran(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    fill(root, n=2)  # the first close starts the trim interval: not a trim
    assert (root / "stats" / "trim").exists()
    assert "last trim:  never" in run_cli("info", "--cache-dir", str(root)).stdout
    assert run_json("info", "--cache-dir", str(root))["last_trim"] is None
    maintenance.trim(safecache.Cache(root, auto_trim=False))
    assert re.search(r"^last trim:  \d+ s ago$", run_cli("info", "--cache-dir", str(root)).stdout, re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--older-than", "-1d"], "invalid duration '-1d': a duration cannot be negative"),
        (["prune", "--older-than=-2h"], "invalid duration '-2h': a duration cannot be negative"),
        (["prune", "--max-size", "-5M"], "invalid size '-5M': a size cannot be negative"),
        (["clean", "--timeout", "-1"], "invalid timeout '-1': a timeout cannot be negative"),
    ],
)
def test_negative_durations_sizes_and_timeouts_are_refused_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli(*args, "--cache-dir", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["--json", "info"], "safecache info --json"),
        (["--cache-dir", "/tmp/x", "prune", "--ci"], "safecache prune --ci --cache-dir /tmp/x"),
    ],
)
def test_options_before_the_command_are_a_usage_error_that_shows_the_fix(args: list[str], suggestion: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2 and f"options go after the command: {suggestion}" in proc.stderr


def test_an_empty_cache_dir_is_a_usage_error(tmp_path: Path) -> None:
    """``--cache-dir "$UNSET"`` must not mean the current directory."""
    proc = subprocess.run([sys.executable, "-m", "safecache", "info", "--cache-dir", ""], capture_output=True,
                          text=True, env=cli_env(None), cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 2 and "argument --cache-dir: the path is empty" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
    assert safecache.cli.run(["dir", "--cache-dir="], cache=safecache.Cache(tmp_path / "c")) == 2


@pytest.mark.parametrize("command", ["info", "prune", "clean", "verify"])
def test_malformed_counter_files_never_print_a_traceback(root: Path, command: str) -> None:
    for n, text in enumerate(['{"format": 1, "buckets": {"lint/v3": {"hits": 1e400}}}', "[" * 100_000,
                              '{"format": 1, "buckets": {"lint/v3": {"hits": "many"}}}', '{"format": 1}']):
        (root / "stats" / f"{n:x}").write_text(text)
    (root / "stats" / "baseline").write_text('{"format": 1, "buckets": {"lint/v3": {"size": 3}}}')
    (root / "stats" / "trim").write_text("nan\n")
    proc = run_cli(command, "--cache-dir", str(root))
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
