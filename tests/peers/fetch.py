"""Fetch a peer library's released source distribution, for running the
peer's own tests against an adapter (nothing of the peer is committed here).

    python tests/peers/fetch.py hishel==2.0.0 [more==1.2 ...]   # CI: fill the cache first

Where archives are kept: ``$SAFECACHE_PEERS_DIR`` if set (CI prepares it),
else ``safecache-peers`` in the system's temp directory.  An archive already
there is used as is; otherwise ``pip download --no-deps --no-binary :all:``
gets it, and if pip cannot (building the sdist's metadata fails), the archive
itself is downloaded from the package index's JSON API.

From a test::

    from peers import fetch
    root = fetch.unpacked("hishel", "2.0.0", tmp_path)   # None: not available
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

INDEX_JSON = "https://pypi.org/pypi/{name}/{version}/json"
#: Seconds allowed for one download.
TIMEOUT = 300


def cache_dir() -> Path:
    path = Path(os.environ.get("SAFECACHE_PEERS_DIR") or Path(tempfile.gettempdir()) / "safecache-peers")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _find(directory: Path, name: str, version: str) -> Path | None:
    stem = _normal(f"{name}-{version}")  # hishel-2.0.0 -> hishel_2_0_0
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name.endswith((".tar.gz", ".zip")) and _normal(path.name).startswith(stem + "_"):
            return path
    return None


def _pip_download(name: str, version: str, dest: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"{name}=={version}",
         "-d", str(dest)],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def _index_download(name: str, version: str, dest: Path) -> None:
    with urllib.request.urlopen(INDEX_JSON.format(name=name, version=version), timeout=60) as response:
        release = json.load(response)
    for file in release.get("urls", []):
        if file.get("packagetype") == "sdist":
            target = dest / file["filename"]
            partial = target.with_name(target.name + ".part")
            with urllib.request.urlopen(file["url"], timeout=TIMEOUT) as response, open(partial, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            partial.replace(target)
            return


def sdist(name: str, version: str) -> Path | None:
    """The sdist archive of ``name==version``, downloaded if needed; None
    when it cannot be had (no network, no such release)."""
    directory = cache_dir()
    found = _find(directory, name, version)
    if found is None:
        try:
            _pip_download(name, version, directory)
        except (OSError, subprocess.SubprocessError):
            pass
        found = _find(directory, name, version)
    if found is None:
        try:
            _index_download(name, version, directory)
        except (OSError, ValueError):
            return None
        found = _find(directory, name, version)
    return found


def unpacked(name: str, version: str, into: Path) -> Path | None:
    """Unpack the sdist of ``name==version`` under ``into``; return its top
    directory (with the peer's ``tests/``), or None when it cannot be had."""
    archive = sdist(name, version)
    if archive is None:
        return None
    into.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:
            if hasattr(tarfile, "data_filter"):
                t.extractall(into, filter="data")
            else:  # Python < 3.12 without the backport
                t.extractall(into)
    tops = [p for p in into.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 else None


def main(argv: list[str]) -> int:
    missing = 0
    for spec in argv:
        name, _, version = spec.partition("==")
        path = sdist(name, version)
        print(f"{spec}: {path or 'NOT AVAILABLE'}")
        missing += path is None
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
