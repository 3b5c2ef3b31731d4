"""Every Python example in the README and docs/ runs verbatim, with the cache
healthy, read-only and disabled (a doc example that crashes when caching is
off teaches users to crash when caching is off).

The ``python`` blocks of one page run in order in one namespace, as a reader
would type them, in a fresh working directory with ``SAFECACHE_DIR`` pointing
at a fresh root.  A block that must not run (output, a sketch) uses another
fence language (``pycon``, ``text``).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)

# Run in a child process: examples may install emulators, start threads,
# or leave caches open; the child's exit flushes them like a real tool's.
_RUNNER = textwrap.dedent(
    """
    import os, sys, warnings
    state = sys.argv[1]
    if state == "read-only":
        # Inject the fault rather than chmod (root ignores modes): the root's
        # file system reports itself read-only.
        import safecache._location as location
        location._read_only_fs = lambda path: True
    warnings.simplefilter("ignore")  # a CacheWarning is expected when degraded
    namespace = {"__name__": "__doc_example__"}
    for i, block in enumerate(sys.stdin.read().split("\\0")):
        exec(compile(block, f"<example {i + 1}>", "exec"), namespace)
    """
)


def _examples() -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        blocks = _BLOCK.findall(page.read_text(encoding="utf-8"))
        if blocks:
            out.append((str(page.relative_to(REPO)), blocks))
    return out


EXAMPLES = _examples()


def test_the_docs_have_examples_to_check() -> None:
    assert any(page == "README.md" for page, _ in EXAMPLES)


@pytest.mark.parametrize("state", ["healthy", "read-only", "disabled"])
@pytest.mark.parametrize("page, blocks", EXAMPLES, ids=[page for page, _ in EXAMPLES])
def test_doc_examples_run_verbatim(page: str, blocks: list[str], state: str, tmp_path: pathlib.Path) -> None:
    env = dict(os.environ)
    env["SAFECACHE_DIR"] = str(tmp_path / "cache")
    env.pop("SAFECACHE_DISABLE", None)
    if state == "disabled":
        env["SAFECACHE_DISABLE"] = "1"
    if state == "read-only":
        (tmp_path / "cache").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, state],
        input="\0".join(blocks),
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, f"{page} ({state}):\n{proc.stderr[-3000:]}"
